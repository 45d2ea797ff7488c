"""Video specs: the pydantic model, loading from YAML/JSON, and beat fitting.

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
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator,
                      model_validator)

from pipeline.printable import clip, printable, quoted
from pipeline.spec_characters import (MAX_CHARACTERS, MAX_NAME_CHARS, BeatCharacters, Characters,
                                      check_character_names, folder_of, ingest_raw)
from pipeline.spec_file import MAX_SPEC_BYTES, SpecInputError, decode_spec_text, read_spec_bytes
from pipeline.spec_yaml import describe_value, load_yaml

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


def _format_loc(loc: tuple[Any, ...]) -> str:
    """``("beats", 2, "duration_s")`` -> ``beats[2].duration_s``; user-written keys clipped and escaped."""
    out = ""
    for part in loc:
        name = clip(part, 40) if part != "" else '""'
        out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out


_EXPECTED = {
    "float_type": "should be a number", "int_type": "should be a whole number",
    "int_from_float": "should be a whole number", "string_type": "should be text", "list_type": "should be a list",
    "dict_type": "should be a mapping of fields", "model_type": "should be a mapping of fields",
    "model_attributes_type": "should be a mapping of fields", "finite_number": "should be a finite number",
}


def _problem(err: dict) -> str:
    """One ``"<field path>: <what is wrong>, got <value>"`` line for a pydantic error."""
    loc, kind, value = _format_loc(err["loc"]), err["type"], err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if not loc and kind == "value_error" and re.match(r"(characters|beats\[\d+\])[.:\[]", msg):
        return msg  # a spec-level check that names its own field (pipeline.spec_characters)
    loc = loc or (("narration" if msg.startswith("from_brief") else "beats/brief") if kind == "value_error"
                  else "(top level)")
    if kind == "union_shape":
        return f"{loc}: {msg}"
    if kind == "string_pattern_mismatch" and loc.startswith("characters.") and loc.endswith(".[key]"):
        return (f"{loc.removesuffix('.[key]')}: {quoted(value, 80)} is not a valid character name: start with a "
                f"letter, then letters, digits, spaces, '-', '_' or apostrophes (at most {MAX_NAME_CHARS})")
    if kind in ("too_long", "too_short") and loc == "characters":
        return (f"characters: a spec describes 1-{MAX_CHARACTERS} characters, got "
                f"{len(value) if isinstance(value, dict) else describe_value(value)}")
    if kind == "extra_forbidden":
        msg = "unknown field (not part of the spec format; check the spelling)"
    elif kind == "missing":
        msg = "missing (this field is required)"
    elif kind == "string_pattern_mismatch" and loc == "video_id":
        msg = (f"{quoted(value, 80)} is not a valid video_id: use 1-63 lowercase "
               "letters, digits and '-', starting with a letter or digit")
    elif kind == "string_pattern_mismatch" and loc.endswith("voice"):
        msg = (f"{quoted(value, 80)} is not a voice name: use 1-64 letters, digits, '_', '.' and '-' (a name, "
               "never a path; `pipeline validate` lists the voices)")
    elif kind == "string_unicode":
        msg = "is not valid Unicode text (it holds an unpaired surrogate, e.g. from a \\ud800 escape)"
    elif kind == "string_too_long" and isinstance(value, str):
        msg = f"{msg} (got {len(value.strip()):,})"
    elif kind == "too_long" and loc == "beats" and isinstance(value, list):
        msg = (f"a spec may list at most {MAX_SPEC_BEATS:,} beats, this one has {len(value):,} (a video keeps at "
               f"most one beat per {MIN_BEAT_S:g} s; extra beats are dropped)")
    elif kind == "greater_than_equal" and loc.endswith("duration_s"):
        msg = (f"{msg} ({SHORTEST_BEAT_S:g} s is one frame at the lowest supported frame rate), "
               f"got {describe_value(value)}")
    elif kind in _EXPECTED:
        msg = f"{_EXPECTED[kind]}, got {describe_value(value)}"
    elif kind == "literal_error":
        msg = f"{msg}, got {describe_value(value)}"
    return f"{loc}: {msg}"


_UNION_WORDS = {"duration_s": "a number of seconds or 'auto'",
                "narration": "'from_brief' or a mapping of narration fields (voice, pause_s, from_brief, captions)"}
"""What a field that takes either of two shapes should be (``_untangle``)."""


def _untangle(errors: list[dict]) -> list[dict]:
    """Pydantic reports a value that fits neither member of a union (``duration_s``: seconds or
    "auto"; ``narration``: a mapping or "from_brief") once per member, with the member's tag in the
    location. Keep one error per field: the member's own errors (tag removed) when the value has that
    member's shape (a number; a mapping), else one "should be <either>" error."""
    out: list[dict] = []
    literal_inputs = {}
    for err in errors:
        loc = err["loc"]
        for i, part in enumerate(loc):
            if isinstance(part, str) and part.startswith("literal["):
                literal_inputs[tuple(loc[:i])] = err.get("input")
    for err in errors:
        loc = err["loc"]
        tag = next((i for i, p in enumerate(loc) if isinstance(p, str) and i > 0 and loc[i - 1] in _UNION_WORDS
                    and (p.startswith("literal[") or p in ("constrained-float", "NarrationSpec"))), None)
        if tag is None:
            out.append(err)
            continue
        field_loc, value = tuple(loc[:tag]), literal_inputs.get(tuple(loc[:tag]), err.get("input"))
        fits_member = isinstance(value, dict) if loc[tag - 1] == "narration" else (
            isinstance(value, (int, float)) and not isinstance(value, bool))
        if fits_member:
            if not loc[tag].startswith("literal["):
                out.append({**err, "loc": field_loc + tuple(loc[tag + 1:])})
        elif loc[tag].startswith("literal["):
            out.append({"loc": field_loc, "type": "union_shape", "input": value,
                        "msg": f"should be {_UNION_WORDS[loc[tag - 1]]}, got {describe_value(value)}"})
    return out


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
