"""Manifests: the small JSON records that cross asset boundaries instead of media bytes.

Every manifest is a pydantic model with a ``kind`` tag, so the IO manager can store any of them
as JSON and load it back without knowing the asset (``load_manifest``). The records they build
on (``MediaManifest``, ``CostLine``, ``segment_key``) are in ``pipeline.manifests_base``, the audio
manifests (music, narration, soundtrack) in ``pipeline.manifests_audio``; this module re-exports
them, and ``AnyManifest`` lists every manifest. Nothing here imports Dagster.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, model_validator

from pipeline.manifests_audio import (  # noqa: F401 (re-exported: they were defined here)
    Cue,
    MusicManifest,
    NarrationManifest,
    SoundtrackManifest,
)
from pipeline.manifests_base import (  # noqa: F401 (re-exported: they were defined here)
    CostLine,
    MediaManifest,
    _Manifest,
    default_from_cost,
    segment_key,
    utc_now,
)
from pipeline.spec import MusicSpec, Truncation


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
        return default_from_cost(data, "paid_usd")


StitchedManifest.model_rebuild()
VideoPlan.model_rebuild()

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
