"""Video specs: the pydantic model, loading from YAML/JSON, and beat fitting.

A spec describes one video: its id, target length, style, music and either explicit ``beats``
or a free-text ``brief`` that a planner splits into beats (see ``examples/``). Nothing here
imports Dagster.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

VIDEO_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MIN_BEAT_S = 5.0
"""Minimum beat length in seconds; it fixes the maximum beat count (``max_beats``)."""

MAX_DURATION_S = 3600.0
"""Longest video a spec may ask for, in seconds (720 beats at the 5 s minimum)."""

AspectRatio = Literal["16:9", "9:16", "1:1"]

DRAFT_RESOLUTION: dict[str, tuple[int, int]] = {
    "16:9": (854, 480),
    "9:16": (480, 854),
    "1:1": (480, 480),
}
"""Draft (480p-class) resolution per aspect ratio, (width, height) in pixels; both even for yuv420p."""

NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class SpecError(ValueError):
    """A spec is invalid. ``str(error)`` names the file and every offending field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid spec:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MusicSpec(_Strict):
    """Background music: a text prompt and a tempo in beats per minute (20-300)."""

    prompt: NonEmptyStr
    bpm: Annotated[int, Field(ge=20, le=300)]


class BeatSpec(_Strict):
    """One scene: what is shown (``prompt``), for how long (seconds), and optional camera ``motion``."""

    prompt: NonEmptyStr
    duration_s: Annotated[float, Field(gt=0, le=600)]
    motion: NonEmptyStr | None = None


class VideoSpec(_Strict):
    """A whole video as a user writes it. Exactly one of ``beats`` and ``brief`` is given."""

    video_id: Annotated[str, StringConstraints(pattern=VIDEO_ID_PATTERN)]
    title: NonEmptyStr
    duration_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S)]
    aspect_ratio: AspectRatio
    style: NonEmptyStr
    music: MusicSpec
    max_cost_usd: Annotated[float, Field(ge=0)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**31)] | None = None
    beats: Annotated[list[BeatSpec], Field(min_length=1)] | None = None
    brief: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _beats_xor_brief(self) -> "VideoSpec":
        if (self.beats is None) == (self.brief is None):
            raise ValueError("give exactly one of 'beats' (a list of scenes) or 'brief' (free text to plan)")
        return self

    @property
    def max_beats(self) -> int:
        """ceil(duration_s / 5): at most one beat per 5 s of video."""
        return max_beats(self.duration_s)

    @property
    def resolution(self) -> tuple[int, int]:
        """Draft (width, height) in pixels for the aspect ratio."""
        return DRAFT_RESOLUTION[self.aspect_ratio]

    def fingerprint(self) -> str:
        """sha256 of the spec's canonical JSON: equal for specs that render the same video."""
        return sha256_json(self.model_dump(mode="json"))


def max_beats(duration_s: float) -> int:
    """Maximum beat count for a video of ``duration_s`` seconds: ceil(duration_s / MIN_BEAT_S)."""
    return max(1, math.ceil(duration_s / MIN_BEAT_S - 1e-9))


def sha256_json(value: Any) -> str:
    """sha256 hex digest of ``value`` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "beats/brief"


def parse_spec(data: Any, source: str = "<spec>") -> VideoSpec:
    """Validate an already-parsed spec mapping. Raises SpecError naming ``source`` and each field."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"expected a mapping of spec fields at the top level, got {type(data).__name__}"])
    try:
        return VideoSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _format_loc(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (not part of the spec format; check the spelling)"
            elif err["type"] == "string_pattern_mismatch" and loc == "video_id":
                msg = (f"{err['input']!r} is not a valid video_id: use 1-63 lowercase letters, digits and '-', "
                       "starting with a letter or digit")
            problems.append(f"{loc}: {msg}")
        raise SpecError(source, problems) from None


def load_spec_text(text: str, source: str = "<spec>") -> VideoSpec:
    """Parse YAML or JSON text (JSON is YAML) into a VideoSpec. Raises SpecError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(source, [f"not valid YAML/JSON{where}: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        raise SpecError(source, ["the file is empty"])
    return parse_spec(data, source)


def load_spec(path: str | Path) -> VideoSpec:
    """Load a spec file (``.yaml``, ``.yml`` or ``.json``). Raises SpecError, or FileNotFoundError."""
    path = Path(path)
    return load_spec_text(path.read_text(encoding="utf-8"), str(path))


class Truncation(BaseModel):
    """Beats dropped because the spec asked for more than ``max_beats``."""

    original_count: int
    truncated_count: int
    dropped_prompts: list[str]


def fit_beats(beats: list[BeatSpec], duration_s: float) -> tuple[list[BeatSpec], Truncation | None]:
    """Keep at most ``max_beats(duration_s)`` beats, dropping extras from the end.

    Returns the kept beats and a Truncation record (None when nothing was dropped).
    """
    limit = max_beats(duration_s)
    if len(beats) <= limit:
        return list(beats), None
    kept = list(beats[:limit])
    return kept, Truncation(
        original_count=len(beats),
        truncated_count=limit,
        dropped_prompts=[b.prompt for b in beats[limit:]],
    )
