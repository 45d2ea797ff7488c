"""Manifests: the small JSON records that cross asset boundaries instead of media bytes.

Every manifest is a pydantic model with a ``kind`` tag, so the IO manager can store any of them
as JSON and load it back without knowing the asset (``load_manifest``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from pipeline.spec import MusicSpec, Truncation


def utc_now() -> str:
    """Current UTC time as an ISO 8601 string (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def segment_key(index: int) -> str:
    """Segment partition key of beat ``index``: zero-padded to three digits ("000", "001", ...)."""
    return f"{index:03d}"


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MediaManifest(_Manifest):
    """One stored medium and how it was made.

    ``uri`` points into the media store; ``sha256``/``bytes`` identify the exact file; width/height
    are pixels, duration_s seconds, fps frames per second (None where not applicable).

    Money (USD), see ``pipeline.costs``:

    - ``cost_usd``: what *this materialization's* call paid (0 on a cache hit, and 0 when the call
      adopted a prediction someone else paid for).
    - ``price_usd``: what generating this medium cost whoever paid for it; kept on cache hits.
    - ``paid_by``: the video_id whose call paid for it; None when it was free (or for manifests
      written before this field). On a cache hit it still names the payer, so a video can tell an
      output it paid for in an earlier attempt from one it reused from another video.

    Manifests written before ``price_usd`` existed load with ``price_usd = cost_usd``.
    """

    kind: Literal["media"] = "media"
    media_type: Literal["image", "video", "audio"]
    uri: str
    sha256: str
    bytes: int
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    fps: float | None = None
    provider: str
    model: str
    prediction_id: str | None = None
    seed: int | None = None
    prompt: str | None = None
    cost_usd: float = 0.0
    cache_hit: bool = False
    cache_key: str | None = None
    created_at: str = Field(default_factory=utc_now)
    extra: dict[str, Any] = Field(default_factory=dict)
    """Step-specific facts (e.g. the stitch method, the measured loudness)."""
    price_usd: float = 0.0
    paid_by: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _price_of_old_manifests(cls, data: Any) -> Any:
        if isinstance(data, dict) and "price_usd" not in data:
            data = {**data, "price_usd": data.get("cost_usd", 0.0)}
        return data


class PlannedBeat(_Manifest):
    """A beat placed on the timeline: index, prompt, motion, duration and start (seconds), and the
    text spoken over it (``narration``, None: silent). ``duration_from``: "spec" (the spec's
    number, or the planner's), "narration" (``duration_s: auto``: the narration plus the pause,
    rounded up to a frame) or "planner+narration" (a planned beat lengthened to fit its narration)."""

    index: int
    prompt: str
    motion: str | None = None
    duration_s: float
    start_s: float
    seed: int | None = None
    """The beat's own seed from the spec (None: derived from the video's seed and the index)."""
    characters: list[str] = Field(default_factory=list)
    """The spec's characters this beat names (``pipeline.spec_characters.beat_characters``)."""
    narration: str | None = None
    duration_from: Literal["spec", "narration", "planner+narration"] = "spec"

    @property
    def segment(self) -> str:
        return segment_key(self.index)


class NarrationPlan(_Manifest):
    """How a video's beats are spoken: the ``provider``'s text-to-speech ``model`` with ``voice``,
    ``pause_s`` seconds of silence after each beat's narration, and ``captions`` ("soft": a subtitle
    track; "burned": drawn into the picture too; "none": subtitle files only)."""

    provider: str
    model: str
    voice: str
    pause_s: float
    captions: Literal["soft", "burned", "none"] = "soft"
    from_brief: bool = False


class VideoPlan(_Manifest):
    """Output of ``video_spec``: the validated spec with beats fitted, timed and ready to render.
    ``style`` None: prompts carry no style text; ``music`` None: no music; ``narration`` None: no
    beat is spoken."""

    kind: Literal["video_plan"] = "video_plan"
    video_id: str
    title: str
    target_duration_s: float
    duration_s: float
    aspect_ratio: str
    width: int
    height: int
    fps: int
    style: str | None = None
    music: MusicSpec | None = None
    seed: int
    max_cost_usd: float | None = None
    provider: str
    models: dict[str, str] = Field(default_factory=dict)
    """The replicate models ``{kind: registry ref}`` (image, video, music) the video renders with,
    from its registered submission; empty for local (and plans made before models were recorded)."""
    beats: list[PlannedBeat]
    truncation: Truncation | None = None
    planned_by: str
    planning_cost_usd: float = 0.0
    """What planning a ``brief`` into beats cost (USD); 0 for explicit beats or a cached plan."""
    spec_sha256: str
    source: str
    characters: dict[str, "PlannedCharacter"] = Field(default_factory=dict)
    """The spec's characters by name, in the spec's order (empty when it has none)."""
    narration: NarrationPlan | None = None

    @property
    def segment_keys(self) -> list[str]:
        return [b.segment for b in self.beats]

    def beat_for_segment(self, segment: str) -> PlannedBeat | None:
        """The real beat behind a segment key, or None for a phantom segment."""
        try:
            index = int(segment)
        except ValueError:
            return None
        return self.beats[index] if 0 <= index < len(self.beats) else None


class PlannedCharacter(_Manifest):
    """A character as the plan carries it: its ``description`` and, when the spec gave a reference
    image, that image's ``reference_sha256`` and ``reference_file`` (the image's bytes stay in the
    registered spec; the ``characters`` asset ingests them into the media store)."""

    description: str
    reference_sha256: str | None = None
    reference_file: str | None = None


class CharacterReference(_Manifest):
    """One character's reference image (``characters`` asset): ``image`` in the media store, and
    ``source``: "generated" (from the description with the image model) or "user" (the spec's
    reference image, ingested as it is). ``image.cache_key`` is what storyboards record."""

    name: str
    description: str
    source: Literal["generated", "user"]
    image: MediaManifest


class CharactersManifest(_Manifest):
    """Output of ``characters``: one reference image per character of the video, by name (spec
    order). ``spec_sha256``: the plan version it was made for."""

    kind: Literal["characters"] = "characters"
    video_id: str
    spec_sha256: str
    references: dict[str, CharacterReference] = Field(default_factory=dict)


class ChunkPlan(_Manifest):
    """One generated chunk of a beat: chunk 0 is the reference image chunk, the rest continuous.

    ``generate_s`` is the length asked of the model, ``keep_s`` what the stitch keeps (seconds).
    """

    index: int
    chunk_type: Literal["reference_image", "continuous"]
    generate_s: float
    keep_s: float


class BeatManifest(_Manifest):
    """Output of ``beats``: everything needed to render one beat, and its fingerprint."""

    kind: Literal["beat"] = "beat"
    video_id: str
    index: int
    start_s: float
    duration_s: float
    image_prompt: str
    motion_prompt: str
    motion: str | None
    seed: int
    width: int
    height: int
    fps: int
    provider: str
    video_model: str
    chunks: list[ChunkPlan]
    fingerprint: str
    """sha256 of every parameter that shapes this beat's media; stitch checks it against the plan."""
    max_cost_usd: float | None = None
    """The video's budget (USD) from the spec; paid providers refuse calls past it. Not in the fingerprint."""
    characters: dict[str, str] = Field(default_factory=dict)
    """The characters this beat names: ``{name: cache key of its reference image}`` (in the fingerprint
    when not empty); its storyboard is generated from those references."""

    @property
    def segment(self) -> str:
        return segment_key(self.index)


class StoryboardManifest(_Manifest):
    """Output of ``storyboard_images``: exactly one storyboard image for one beat."""

    kind: Literal["storyboard"] = "storyboard"
    video_id: str
    index: int
    fingerprint: str
    image: MediaManifest
    references: dict[str, MediaManifest] = Field(default_factory=dict)
    """The character references the image was generated from, by name (their sha256 are the
    request's ``character:<name>`` inputs, so in its cache key)."""


class ChunkManifest(_Manifest):
    """One rendered chunk: its plan, the video, and the last frame the next chunk starts from.

    ``conformed``: the frames of ``video`` the beat keeps, conformed to the plan (fps, size, the
    pipeline's H.264 settings; ``pipeline.media.conform``), or None for a chunk the beat keeps no
    frame of and in manifests written before conforming existed. Its ``extra`` holds ``frames``
    (kept) and ``method`` ("stream_copy" when the chunk already matched the plan, else "reencode").
    """

    plan: ChunkPlan
    video: MediaManifest
    start_image_sha256: str
    last_frame: MediaManifest
    conformed: MediaManifest | None = None
    drift: dict[str, float] | None = None
    """Colour/brightness drift from the beat's first frame (chunk 0's first frame) to this chunk's
    last frame (``pipeline.drift.Drift``: ``delta_e``, ``delta_l``, ``delta_a``, ``delta_b`` in CIELAB
    units, ``luma_delta`` and ``rgb_mean_delta``/``rgb_std_delta`` in 8-bit code values); None in
    manifests written before drift was measured."""


class ChunkVideosManifest(_Manifest):
    """Output of ``chunk_videos``: a beat's chunks in timeline order, and the segment's clip.

    ``clip``: the beat's exact frames (``pipeline.media.beat_frames`` at the beat's start) joined
    from the chunks' ``conformed`` pieces by stream copy; ``stitched_video`` joins clips by stream
    copy. Its ``extra`` holds ``frames``, ``fps``, ``width``, ``height`` and ``method``. None when the
    chunks do not cover the beat (the stitch reports the gap) and in manifests written before clips
    existed (the stitch then uses the chunks themselves).
    """

    kind: Literal["chunk_videos"] = "chunk_videos"
    video_id: str
    index: int
    fingerprint: str
    duration_s: float
    storyboard: MediaManifest
    chunks: list[ChunkManifest]
    clip: MediaManifest | None = None
    drift: dict[str, float] | None = None
    """The beat's drift: its first frame to its last chunk's last frame (the last chunk's ``drift``)."""

    @property
    def cost_usd(self) -> float:
        """What this materialization's chunk calls paid (USD; cache hits count 0). A video's real
        spend is in ``pipeline.costs.video_costs``."""
        return sum(c.video.cost_usd for c in self.chunks)


class StitchedManifest(_Manifest):
    """Output of ``stitched_video``: all beats concatenated, each trimmed to its duration.

    ``method``: "stream_copy" (the segments' clips, or chunks that already matched the plan, joined
    as they are) or "reencode" (the fallback for chunks that do not match: old manifests without
    clips). ``clips``: how many segments were joined from their clip (None in older manifests).
    """

    kind: Literal["stitched"] = "stitched"
    video_id: str
    method: Literal["stream_copy", "reencode"]
    segments: list[str]
    video: MediaManifest
    costs: list["CostLine"]
    clips: int | None = None


class MusicManifest(_Manifest):
    """Output of ``music``: the generated track (at least as long as the video) and the final
    video's audio made from it.

    ``track``: ``audio`` finished for the plan (``pipeline.media.finish_music``: the video's
    duration, faded out, loudness-normalized, AAC at 48 kHz), which ``final_video`` muxes by stream
    copy. Its ``extra`` holds ``duration_s``, ``fade_out_s`` and ``loudness`` (loudnorm's pass 1
    measurement). None in manifests written before finishing moved here: ``final_video`` then
    finishes the music while muxing (``pipeline.media.mux_final``).
    """

    kind: Literal["music"] = "music"
    video_id: str
    audio: MediaManifest
    track: MediaManifest | None = None


class Cue(_Manifest):
    """One subtitle cue: ``text`` shown from ``start_s`` to ``end_s`` (seconds; relative to a
    narration clip's start in ``NarrationManifest``, to the video's start in ``SoundtrackManifest``)."""

    start_s: float
    end_s: float
    text: str


class NarrationManifest(_Manifest):
    """Output of ``narration``: one beat's spoken text as a clip. ``clip`` None: the beat is silent.
    ``cues``: its sentences with their times in the clip (``timing``: "synthesis", each sentence
    voiced on its own and measured; "silences", found at the pauses of one clip; "characters",
    spread by length). The clip plays from the beat's start; ``pause_s`` of silence follow it."""

    kind: Literal["narration"] = "narration"
    video_id: str
    index: int
    text: str | None
    start_s: float
    duration_s: float
    pause_s: float = 0.0
    clip: MediaManifest | None = None
    cues: list[Cue] = Field(default_factory=list)
    timing: str | None = None

    @property
    def segment(self) -> str:
        return segment_key(self.index)


class SoundtrackManifest(_Manifest):
    """Output of ``soundtrack``: the final video's audio, and the subtitle cues on the video's clock.

    ``method``: "music" (the music's finished track, as it is), "mix" (music ducked under the
    narration by sidechain compression, then loudness-normalized once), "narration" (the narration
    alone, loudness-normalized) or "silence". ``track`` is AAC at 48 kHz as long as the video, muxed
    by stream copy; None only when the music manifest predates finished tracks (``final_video`` then
    finishes the music itself). ``costs``: the narration clips' cost lines."""

    kind: Literal["soundtrack"] = "soundtrack"
    video_id: str
    method: Literal["music", "mix", "narration", "silence"]
    track: MediaManifest | None = None
    cues: list[Cue] = Field(default_factory=list)
    captions: Literal["soft", "burned", "none"] = "soft"
    costs: list["CostLine"] = Field(default_factory=list)


class CostLine(_Manifest):
    """One row of a video's cost table (``pipeline.costs``). Money in USD.

    - ``paid_usd``: what this video's own calls paid for the line (in this run or an earlier
      attempt); ``reused_usd``: the price of an output this video used without paying for it
      (paid by ``paid_by``, another video, or the same video for an output used twice).
      For a paid provider, ``paid_usd + reused_usd`` is the line's price; both are 0 when free.
    - ``paid_by``: the payer's video_id (None when free or unknown).
    - ``source``: "manifest" for a medium the video's manifests use (storyboard image, chunk,
      music, the brief plan), "ledger" for a prediction the video paid for that no manifest uses
      (a failed or unusable prediction, an earlier spec version's calls).
    - ``units``/``unit``: usage (1 image, video/audio seconds); None for ledger lines.

    Lines written before ``paid_usd`` existed load their ``cost_usd`` as ``paid_usd``; the
    ``cost_usd`` property reads ``paid_usd``.
    """

    stage: str
    segment: str | None
    item: str
    provider: str
    model: str
    units: float | None = None
    unit: str | None = None
    paid_usd: float = 0.0
    reused_usd: float = 0.0
    paid_by: str | None = None
    cache_hit: bool | None = None
    prediction_id: str | None = None
    cache_key: str | None = None
    source: Literal["manifest", "ledger"] = "manifest"
    note: str = ""

    @model_validator(mode="before")
    @classmethod
    def _old_cost_usd(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cost_usd" in data:
            data = dict(data)
            cost = data.pop("cost_usd")
            data.setdefault("paid_usd", cost or 0.0)
        return data

    @property
    def cost_usd(self) -> float:
        """What this video paid for the line (USD): ``paid_usd``."""
        return self.paid_usd


class FinalManifest(_Manifest):
    """Output of ``final_video``: stitched video muxed with loudness-normalized music.

    ``mux_method``: "stream_copy" when the music manifest's finished track was muxed as it is,
    "reencode" when the music was finished (loudnorm, AAC) during the mux; None in manifests
    written before it was recorded.

    ``costs``: the cost table's lines (``pipeline.costs``) as of the mux. ``paid_usd``: what this
    video's calls paid (USD), across every attempt, reconciled with the ledger (it equals the
    ledger's spend for the video when a ledger exists); ``cost_usd`` is the same number, kept for
    readers of older manifests. ``reused_usd``: the price of outputs it used but others paid for.
    Older manifests load with ``paid_usd = cost_usd`` and ``reused_usd = 0``.

    Where the video was published (``pipeline.publish``): ``published_uri`` is
    ``s3://<bucket>/<prefix>/videos/<video_id>.mp4`` with the S3 store, else the ``file://`` URI of
    ``<data>/videos/<video_id>.mp4``; None in manifests written before it was recorded. ``path`` is
    the local published file without S3, and the same ``s3://`` URI with it (there is no local
    published copy then).
    """

    kind: Literal["final"] = "final"
    video_id: str
    video: MediaManifest
    path: str
    beats: int
    chunks: int
    cost_usd: float
    costs: list[CostLine]
    paid_usd: float = 0.0
    reused_usd: float = 0.0
    mux_method: Literal["stream_copy", "reencode"] | None = None
    published_uri: str | None = None
    subtitles: dict[str, Any] | None = None
    """The narration's subtitles: ``vtt`` and ``srt`` (published paths), ``cues`` (count),
    ``track`` ("mov_text" or None) and ``captions`` ("soft", "burned", "none"); None without narration."""

    @model_validator(mode="before")
    @classmethod
    def _paid_of_old_manifests(cls, data: Any) -> Any:
        if isinstance(data, dict) and "paid_usd" not in data:
            data = {**data, "paid_usd": data.get("cost_usd", 0.0)}
        return data


StitchedManifest.model_rebuild()
VideoPlan.model_rebuild()
SoundtrackManifest.model_rebuild()

AnyManifest = Annotated[
    Union[VideoPlan, BeatManifest, StoryboardManifest, ChunkVideosManifest, StitchedManifest, MusicManifest,
          FinalManifest, MediaManifest, CharactersManifest, NarrationManifest, SoundtrackManifest],
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[AnyManifest] = TypeAdapter(AnyManifest)


def dump_manifest(manifest: BaseModel) -> str:
    """Serialize a manifest to JSON text."""
    return manifest.model_dump_json(indent=2)


def money(usd: float) -> str:
    """USD as text: 4 decimals, 6 when 4 would round it ("0.0500", "0.000051")."""
    return f"{usd:.4f}" if abs(round(usd, 4) - usd) < 1e-12 else f"{usd:.6f}"


def load_manifest(text: str | bytes) -> BaseModel:
    """Parse JSON text written by ``dump_manifest`` back into its manifest class."""
    return _ADAPTER.validate_json(text)
