"""Video specs: the pydantic model, loading from YAML/JSON, and beat fitting.

The limits, field types, ``SpecError`` and the music/beat/narration sub-models are in
``pipeline.spec_fields``, and pydantic errors become problem lines in ``pipeline.spec_problems``;
this module re-exports the former, so ``from pipeline.spec import BeatSpec`` etc. keep working.

A spec describes one video: its id, target length, style, music and either explicit ``beats``
or a free-text ``brief`` that a planner splits into beats (see ``examples/``). Nothing here
imports Dagster.

Input rules (every violation is a SpecError naming the file and the field, user text escaped):

- the file: a regular file inside its own folder (links followed only there), at most 1 MB,
  UTF-8 (``pipeline.spec_file``); YAML or JSON read with YAML 1.2 core scalars, at most 64
  levels deep and 100,000 values after alias expansion, no duplicate or non-text keys, no
  unsafe tags (``pipeline.spec_yaml``);
- numbers are numbers: never booleans, strings, NaN or infinity; ``bpm`` and ``seed`` are whole
  numbers; a beat (and the video) lasts at least ``SHORTEST_BEAT_S`` (0.1 s, one frame at any
  supported frame rate) and a beat at most 600 s;
- text is capped: title 200, style 500, prompt 2,000, motion 500, music prompt 1,000 and brief
  20,000 characters; at most 1,000 beats in the file (before truncation to ``max_beats``);
- ``provider`` is ``local`` or ``replicate``; ``models`` (per-kind Replicate model overrides:
  ``image``, ``video``, ``music``) names registry models of that kind (``pipeline.models``) and
  is refused beside ``provider: local``;
- ``characters`` (1-10 names -> description and optional reference image) and a beat's optional
  ``characters`` list and ``seed``: ``pipeline.spec_characters`` (reference image files follow a
  spec file's safety rules and are carried in the spec once loaded).

Defaults (a minimal spec is ``video_id``, ``title``, ``duration_s`` and ``beats`` or ``brief``):
``aspect_ratio`` 16:9; no ``style`` (prompts carry no style text); no ``music`` (the soundtrack is
the narration alone, or silence: the video always has an audio track); no narration.
``applied_defaults`` lists the defaults a loaded spec relied on.

Narration (optional): a beat's ``narration`` text, or ``narration: from_brief`` (the planner's
beat sentences are spoken); ``narration: {voice, pause_s, from_brief, captions}`` chooses the voice
(a provider's voice name, checked when the video is planned), the pause after each beat's
narration and whether captions are a soft subtitle track or burned into the picture. A beat with
narration may say ``duration_s: auto``: it lasts its narration plus the pause, rounded up to a frame.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError, field_validator, model_validator

from pipeline.spec_characters import Characters, check_character_names, folder_of, ingest_raw
from pipeline.spec_fields import (  # noqa: F401 (re-exported: they were defined here)
    DEFAULT_ASPECT_RATIO,
    DEFAULT_PAUSE_S,
    DRAFT_RESOLUTION,
    MAX_BEAT_DURATION_S,
    MAX_BRIEF_CHARS,
    MAX_DURATION_S,
    MAX_MOTION_CHARS,
    MAX_MUSIC_PROMPT_CHARS,
    MAX_NARRATION_CHARS,
    MAX_PAUSE_S,
    MAX_PROBLEMS,
    MAX_PROMPT_CHARS,
    MAX_SPEC_BEATS,
    MAX_STYLE_CHARS,
    MAX_TITLE_CHARS,
    MAX_VOICE_CHARS,
    MIN_BEAT_S,
    SHORTEST_BEAT_S,
    VIDEO_ID_PATTERN,
    AspectRatio,
    BeatSeconds,
    BeatSpec,
    BriefText,
    CaptionMode,
    MotionText,
    MusicPromptText,
    MusicSpec,
    NarrationSpec,
    NarrationText,
    NonEmptyStr,
    PromptText,
    Seconds,
    Seed,
    SpecError,
    StyleText,
    TitleText,
    VoiceName,
    _Strict,
    _text,
)
from pipeline.spec_file import MAX_SPEC_BYTES, SpecInputError, decode_spec_text, read_spec_bytes
from pipeline.spec_problems import _problem, _untangle
from pipeline.spec_yaml import describe_value, load_yaml


PROVIDER_NAMES = ("local", "replicate")
"""The providers a spec may name (``pipeline.providers.PROVIDERS``; kept here so specs import no provider)."""

MODEL_KINDS = {"image": "image", "video": "video", "music": "audio"}
"""Spec ``models`` keys and the registry kind (``pipeline.models.Kind``) each must be."""

ProviderName = Literal["local", "replicate"]


def check_model_ref(ref: str, key: str) -> str:
    """``ref`` if it names a registry model (``pipeline.models.MODELS``) of the kind of spec key
    ``key`` (image, video, music); raises ValueError saying which models are known otherwise."""
    from pipeline.models import get_model  # models -> generation -> spec: imported when used

    get_model(ref, MODEL_KINDS[key])
    return ref


ModelRef = Annotated[str, Field(strict=True), StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ModelChoices(_Strict):
    """Per-kind Replicate model overrides, each a registry ref (``owner/name``, see
    ``pipeline/models.py``) of that kind: ``image`` (storyboards), ``video`` (image-to-video
    chunks; its chunk length drives the chunk plan), ``music``. Unset kinds use the deployment's
    defaults. Only the ``replicate`` provider has models to choose."""

    image: ModelRef | None = None
    video: ModelRef | None = None
    music: ModelRef | None = None

    @field_validator("image", "video", "music")
    @classmethod
    def _known(cls, ref: str | None, info) -> str | None:
        return None if ref is None else check_model_ref(ref, info.field_name)

    def chosen(self) -> dict[str, str]:
        """The kinds given, as ``{kind: ref}``."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class VideoSpec(_Strict):
    """A whole video as a user writes it. Exactly one of ``beats`` (1-1,000 scenes) and ``brief``
    (free text, at most 20,000 characters) is given. ``duration_s`` is 0.1-3600 seconds."""

    video_id: Annotated[str, Field(strict=True), StringConstraints(pattern=VIDEO_ID_PATTERN)]
    title: TitleText
    duration_s: Annotated[Seconds, Field(ge=SHORTEST_BEAT_S, le=MAX_DURATION_S)]
    aspect_ratio: AspectRatio = DEFAULT_ASPECT_RATIO
    style: StyleText | None = None
    """None: prompts carry no style text."""
    music: MusicSpec | None = None
    """None: no music (the soundtrack is the narration, or silence)."""
    max_cost_usd: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)] | None = None
    seed: Annotated[int, Field(strict=True, ge=0, lt=2**31)] | None = None
    beats: Annotated[list[BeatSpec], Field(strict=True, min_length=1, max_length=MAX_SPEC_BEATS)] | None = None
    brief: BriefText | None = None
    provider: ProviderName | None = None
    """The provider to render with; None: the deployment default (``pipeline submit --provider`` wins)."""
    models: ModelChoices | None = None
    """Per-kind Replicate model overrides (replicate only)."""
    # --- characters (issue 13) ---
    characters: Characters | None = None
    """Recurring characters ``{name: CharacterSpec}`` (``pipeline.spec_characters``)."""
    narration: NarrationSpec | Literal["from_brief"] | None = None
    """How beats are spoken (``NarrationSpec``); the text ``from_brief`` is ``{from_brief: true}``."""

    @model_validator(mode="after")
    def _beats_xor_brief(self) -> "VideoSpec":
        if (self.beats is None) == (self.brief is None):
            raise ValueError("give exactly one of 'beats' (a list of scenes) or 'brief' (free text to plan)")
        if self.narration_spec.from_brief and self.brief is None:
            raise ValueError("from_brief speaks the sentences the planner makes of a 'brief', and this "
                             "spec lists 'beats': give each beat a 'narration' instead")
        return self

    @model_validator(mode="after")
    def _known_characters(self) -> "VideoSpec":
        check_character_names(self.characters, [b.characters for b in self.beats or []])
        return self

    @property
    def narration_spec(self) -> NarrationSpec:
        """The narration settings, defaults filled in (``from_brief`` as text becomes ``from_brief: true``)."""
        if self.narration == "from_brief":
            return NarrationSpec(from_brief=True)
        return self.narration or NarrationSpec()

    @property
    def narrated(self) -> bool:
        """Whether any beat is spoken (a beat's ``narration``, or ``from_brief``)."""
        return self.narration_spec.from_brief or any(b.narration for b in self.beats or [])

    def applied_defaults(self) -> list[str]:
        """The defaults this spec relies on, one line each (what ``pipeline validate`` prints):
        ``aspect_ratio 16:9 (default)``, no style, no music, the narration's voice and pause."""
        given = self.model_fields_set
        out = []
        if "aspect_ratio" not in given:
            out.append(f"aspect_ratio {DEFAULT_ASPECT_RATIO} (default)")
        if self.style is None:
            out.append("style: none (default: prompts carry no style text)")
        if self.music is None:
            out.append("music: none (default: the soundtrack is " + ("the narration alone" if self.narrated
                                                                       else "silence") + ")")
        if self.narrated:
            n = self.narration_spec
            set_n = n.model_fields_set if isinstance(self.narration, NarrationSpec) else set()
            if "voice" not in set_n:
                out.append("narration.voice: the provider's default voice (default)")
            if "pause_s" not in set_n:
                out.append(f"narration.pause_s {DEFAULT_PAUSE_S:g} (default)")
            if "captions" not in set_n:
                out.append("narration.captions soft (default: a subtitle track, and .vtt/.srt files)")
        return out

    @field_validator("models")
    @classmethod
    def _models_need_replicate(cls, models: ModelChoices | None, info) -> ModelChoices | None:
        if info.data.get("provider") == "local" and models is not None and models.chosen():
            raise ValueError("model overrides apply to the replicate provider only, and this spec says "
                             "provider: local (remove 'models', or use provider: replicate)")
        return models

    @property
    def max_beats(self) -> int:
        """ceil(duration_s / 5): at most one beat per 5 s of video."""
        return max_beats(self.duration_s)

    @property
    def resolution(self) -> tuple[int, int]:
        """Draft (width, height) in pixels for the aspect ratio."""
        return DRAFT_RESOLUTION[self.aspect_ratio]

    def fingerprint(self) -> str:
        """sha256 of the spec's canonical JSON: equal for specs that render the same video. The
        optional ``provider``, ``models`` and the fields added later (``LATER_OPTIONAL_FIELDS``,
        ``LATER_OPTIONAL_BEAT_FIELDS``) count only when given, so a spec without them keeps the
        fingerprint it had before they existed."""
        unset = {name for name in ("provider", "models", *LATER_OPTIONAL_FIELDS) if getattr(self, name) is None}
        data = self.model_dump(mode="json", exclude=unset)
        for beat in data.get("beats") or []:
            for name in LATER_OPTIONAL_BEAT_FIELDS:
                if beat.get(name) is None:
                    beat.pop(name, None)
        return sha256_json(data)


LATER_OPTIONAL_FIELDS = ("characters", "narration")
"""Optional spec fields added after specs were registered: they count in ``fingerprint`` only when given."""
LATER_OPTIONAL_BEAT_FIELDS = ("seed", "characters", "narration")
"""Optional beat fields added later: in ``fingerprint`` only when given (old specs keep their version)."""


def max_beats(duration_s: float) -> int:
    """Maximum beat count for a video of ``duration_s`` seconds: ceil(duration_s / MIN_BEAT_S)."""
    return max(1, math.ceil(duration_s / MIN_BEAT_S - 1e-9))


def sha256_json(value: Any) -> str:
    """sha256 hex digest of ``value`` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()

def parse_spec(data: Any, source: str = "<spec>") -> VideoSpec:
    """Validate an already-parsed spec mapping. Raises SpecError naming ``source`` and each field."""
    if not isinstance(data, dict):
        got = "text" if isinstance(data, str) else describe_value(data)  # never echo a whole file's text
        raise SpecError(source, [f"expected a mapping of spec fields at the top level, got {got}"])
    try:
        return VideoSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, [_problem(err) for err in _untangle(exc.errors())]) from None


def load_spec_text(text: str, source: str = "<spec>", *, folder: str | os.PathLike | None = None) -> VideoSpec:
    """Parse YAML or JSON text (JSON is YAML; YAML 1.2 core scalars, see ``pipeline.spec_yaml``)
    into a VideoSpec. ``folder``: the spec file's folder; character reference image paths are read
    from it and carried in the spec (``pipeline.spec_characters.ingest_raw``); None leaves them as
    paths. Raises SpecError naming ``source``, the line and the field."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(source, [f"the spec is {len(text):,} characters, more than the {MAX_SPEC_BYTES:,} allowed"])
    try:
        data = load_yaml(text)
    except SpecInputError as exc:
        raise SpecError(source, [str(exc)]) from None
    if data is None:
        raise SpecError(source, ["the file is empty"])
    problems: list[str] = []
    if folder is not None and isinstance(data, dict):
        data, problems = ingest_raw(data, folder)
    try:
        spec = parse_spec(data, source)
    except SpecError as exc:
        raise SpecError(source, problems + exc.problems) from None
    if problems:
        raise SpecError(source, problems)
    return spec


def load_spec_bytes(data: bytes, source: str = "<spec>", *, folder: str | os.PathLike | None = None) -> VideoSpec:
    """Decode (UTF-8, optional BOM) and parse a spec file's bytes (``folder``: see
    ``load_spec_text``). Raises SpecError."""
    try:
        text = decode_spec_text(data)
    except SpecInputError as exc:
        raise SpecError(source, [f"the file {exc}"]) from None
    return load_spec_text(text, source, folder=folder)


def read_spec_file(path: str | os.PathLike) -> bytes:
    """The bytes of a spec file, read safely (``pipeline.spec_file.read_spec_bytes``: a regular
    file inside its own folder, at most 1 MB). Raises SpecError naming the file and the problem."""
    try:
        return read_spec_bytes(path)
    except SpecInputError as exc:
        raise SpecError(os.fspath(path), [f"the file {exc}"]) from None


def load_spec(path: str | Path) -> VideoSpec:
    """Load a spec file (``.yaml``, ``.yml`` or ``.json``). Character reference images named by
    path are read from the file's folder and carried in the spec. Raises SpecError for every
    problem, the file's own included (missing, unreadable, not a regular file, too large, not UTF-8)."""
    return load_spec_bytes(read_spec_file(path), os.fspath(path), folder=folder_of(path))


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
