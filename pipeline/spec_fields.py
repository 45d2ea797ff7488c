"""The spec's limits, field types and sub-models: ``SpecError``, the text and number fields with
their caps, and the music, beat and narration parts of a spec (``MusicSpec``, ``BeatSpec``,
``NarrationSpec``).

Lengths in characters, times in seconds, sizes in pixels. ``pipeline.spec`` builds ``VideoSpec``
from these and re-exports them, so ``from pipeline.spec import BeatSpec`` etc. keep working; the
input rules are listed there. Nothing here imports Dagster.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from pipeline.printable import printable
from pipeline.spec_characters import BeatCharacters

VIDEO_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MIN_BEAT_S = 5.0
"""Minimum beat length in seconds; it fixes the maximum beat count (``max_beats``)."""

SHORTEST_BEAT_S = 0.1
"""Shortest beat (and video) a spec may ask for, in seconds. A spec cannot know the provider's frame
rate, so this is one frame at 10 fps, below every supported rate (local 24 fps, Wan 16 fps): a beat
always keeps at least one frame and never pays for a chunk that then vanishes."""

MAX_DURATION_S = 3600.0
"""Longest video a spec may ask for, in seconds (720 beats at the 5 s minimum)."""

MAX_BEAT_DURATION_S = 600.0
"""Longest single beat, in seconds."""

MAX_SPEC_BEATS = 1000
"""Most beats a spec file may list (before truncation to ``max_beats``, at most 720)."""

MAX_TITLE_CHARS = 200
MAX_STYLE_CHARS = 500
MAX_PROMPT_CHARS = 2000
"""Longest beat prompt in characters (also the longest prompt the planner may make from a brief)."""
MAX_MOTION_CHARS = 500
MAX_MUSIC_PROMPT_CHARS = 1000
MAX_BRIEF_CHARS = 20_000
MAX_NARRATION_CHARS = 2000
"""Longest narration of one beat, in characters (about two minutes of speech)."""
MAX_VOICE_CHARS = 64
MAX_PAUSE_S = 5.0
"""Longest pause after a beat's narration, in seconds."""
DEFAULT_PAUSE_S = 0.4
"""The pause after each beat's narration when the spec gives none, in seconds."""
DEFAULT_ASPECT_RATIO = "16:9"
MAX_PROBLEMS = 50
"""Most problems a SpecError lists; the rest are counted."""

AspectRatio = Literal["16:9", "9:16", "1:1"]

DRAFT_RESOLUTION: dict[str, tuple[int, int]] = {
    "16:9": (854, 480),
    "9:16": (480, 854),
    "1:1": (480, 480),
}
"""Draft (480p-class) resolution per aspect ratio, (width, height) in pixels; both even for yuv420p."""


def _text(max_chars: int) -> Any:
    """Non-empty text (surrounding whitespace stripped) of at most ``max_chars`` characters; no
    coercion: a number, boolean or list is an error, not text."""
    return Annotated[str, Field(strict=True),
                     StringConstraints(strip_whitespace=True, min_length=1, max_length=max_chars)]


NonEmptyStr = _text(MAX_BRIEF_CHARS)
TitleText, StyleText, PromptText = _text(MAX_TITLE_CHARS), _text(MAX_STYLE_CHARS), _text(MAX_PROMPT_CHARS)
MotionText, MusicPromptText, BriefText = _text(MAX_MOTION_CHARS), _text(MAX_MUSIC_PROMPT_CHARS), _text(MAX_BRIEF_CHARS)
NarrationText = _text(MAX_NARRATION_CHARS)
VoiceName = Annotated[str, Field(strict=True), StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
"""A voice's name: a piper voice package ("joe"), a model file in the deployment's voices folder
("en_GB-alan-medium"), or a Replicate model's voice ("af_bella"); never a path."""
Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A finite number of seconds: an int or float; never a boolean, a string, NaN or infinity."""


class SpecError(ValueError):
    """A spec is invalid. ``str(error)`` names the file and every offending field, one per line.

    ``source``: the file (or registry entry) as given. ``problems``: one line each,
    ``"<field path>: <what is wrong>"`` or a file-level problem; control characters escaped, at
    most MAX_PROBLEMS of them (then one line counting the rest).
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        shown = [printable(p, limit=1000) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        self.problems = shown
        super().__init__(f"{printable(source, limit=500)}: invalid spec:\n" + "\n".join(f"  - {p}" for p in shown))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MusicSpec(_Strict):
    """Background music: a text prompt (at most 1,000 characters) and a tempo, a whole number of
    beats per minute (20-300)."""

    prompt: MusicPromptText
    bpm: Annotated[int, Field(strict=True, ge=20, le=300)]


Seed = Annotated[int, Field(strict=True, ge=0, lt=2**31)]
"""A generation seed: a whole number 0 .. 2**31 - 1."""


BeatSeconds = Annotated[Seconds, Field(ge=SHORTEST_BEAT_S, le=MAX_BEAT_DURATION_S)]


class BeatSpec(_Strict):
    """One scene: what is shown (``prompt``, at most 2,000 characters), for how long (seconds,
    0.1-600, or ``"auto"`` for a narrated beat: its narration plus the pause), optional camera
    ``motion`` (at most 500 characters) and optional ``narration`` (spoken text, at most 2,000
    characters).

    Characters and re-rolls (optional; ``pipeline.spec_characters``): ``characters``, the exact
    list of the spec's characters this beat shows (without it: those named in the prompt);
    ``seed``, this beat's own seed (default: derived from the video's seed and the index), so
    one beat can be re-rolled alone: a new seed changes only this beat's cache keys."""

    prompt: PromptText
    duration_s: BeatSeconds | Literal["auto"]
    motion: MotionText | None = None
    # --- characters and per-beat seed (issue 13) ---
    seed: Seed | None = None
    characters: BeatCharacters | None = None
    narration: NarrationText | None = None

    @model_validator(mode="after")
    def _auto_needs_narration(self) -> "BeatSpec":
        if self.duration_s == "auto" and self.narration is None:
            raise ValueError("duration_s: auto needs the beat's narration (its length is the narration's, "
                             "plus the pause); give a number of seconds or a narration")
        return self

    @property
    def auto(self) -> bool:
        """True when the beat's length is derived from its narration."""
        return self.duration_s == "auto"


CaptionMode = Literal["soft", "burned", "none"]


class NarrationSpec(_Strict):
    """How beats are spoken. ``voice``: a voice name (None: the provider's default; which names
    a provider accepts: ``pipeline validate``). ``from_brief``: speak the planner's beat
    sentences (a ``brief`` only). ``pause_s``: silence after each beat's narration (0-5 s).
    ``captions``: "soft" (a subtitle track in the MP4, and .vtt/.srt files beside it; the
    default), "burned" (also drawn into the picture: the video is re-encoded once) or "none"
    (files only, no track)."""

    voice: VoiceName | None = None
    from_brief: Annotated[bool, Field(strict=True)] = False
    pause_s: Annotated[Seconds, Field(ge=0, le=MAX_PAUSE_S)] = DEFAULT_PAUSE_S
    captions: CaptionMode = "soft"
