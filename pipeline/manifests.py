"""Manifests: the small JSON records that cross asset boundaries instead of media bytes.

Every manifest is a pydantic model with a ``kind`` tag, so the IO manager can store any of them
as JSON and load it back without knowing the asset (``load_manifest``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

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
    are pixels, duration_s seconds, fps frames per second (None where not applicable); cost_usd is
    what this materialization paid (0 on a cache hit).
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


class PlannedBeat(_Manifest):
    """A beat placed on the timeline: index, prompt, motion, duration and start (seconds)."""

    index: int
    prompt: str
    motion: str | None = None
    duration_s: float
    start_s: float

    @property
    def segment(self) -> str:
        return segment_key(self.index)


class VideoPlan(_Manifest):
    """Output of ``video_spec``: the validated spec with beats fitted, timed and ready to render."""

    kind: Literal["video_plan"] = "video_plan"
    video_id: str
    title: str
    target_duration_s: float
    duration_s: float
    aspect_ratio: str
    width: int
    height: int
    fps: int
    style: str
    music: MusicSpec
    seed: int
    max_cost_usd: float | None = None
    provider: str
    beats: list[PlannedBeat]
    truncation: Truncation | None = None
    planned_by: str
    planning_cost_usd: float = 0.0
    """What planning a ``brief`` into beats cost (USD); 0 for explicit beats or a cached plan."""
    spec_sha256: str
    source: str

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


class ChunkManifest(_Manifest):
    """One rendered chunk: its plan, the video, and the last frame the next chunk starts from."""

    plan: ChunkPlan
    video: MediaManifest
    start_image_sha256: str
    last_frame: MediaManifest


class ChunkVideosManifest(_Manifest):
    """Output of ``chunk_videos``: a beat's chunks in timeline order."""

    kind: Literal["chunk_videos"] = "chunk_videos"
    video_id: str
    index: int
    fingerprint: str
    duration_s: float
    storyboard: MediaManifest
    chunks: list[ChunkManifest]

    @property
    def cost_usd(self) -> float:
        return sum(c.video.cost_usd for c in self.chunks)


class StitchedManifest(_Manifest):
    """Output of ``stitched_video``: all beats concatenated, each trimmed to its duration."""

    kind: Literal["stitched"] = "stitched"
    video_id: str
    method: Literal["stream_copy", "reencode"]
    segments: list[str]
    video: MediaManifest
    costs: list["CostLine"]


class MusicManifest(_Manifest):
    """Output of ``music``: a track at least as long as the video."""

    kind: Literal["music"] = "music"
    video_id: str
    audio: MediaManifest


class CostLine(_Manifest):
    """One row of a video's cost table (USD)."""

    stage: str
    segment: str | None
    item: str
    provider: str
    model: str
    units: float
    unit: str
    cost_usd: float
    cache_hit: bool


class FinalManifest(_Manifest):
    """Output of ``final_video``: stitched video muxed with loudness-normalized music."""

    kind: Literal["final"] = "final"
    video_id: str
    video: MediaManifest
    path: str
    beats: int
    chunks: int
    cost_usd: float
    costs: list[CostLine]


StitchedManifest.model_rebuild()

AnyManifest = Annotated[
    Union[VideoPlan, BeatManifest, StoryboardManifest, ChunkVideosManifest, StitchedManifest, MusicManifest,
          FinalManifest, MediaManifest],
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[AnyManifest] = TypeAdapter(AnyManifest)


def dump_manifest(manifest: BaseModel) -> str:
    """Serialize a manifest to JSON text."""
    return manifest.model_dump_json(indent=2)


def load_manifest(text: str | bytes) -> BaseModel:
    """Parse JSON text written by ``dump_manifest`` back into its manifest class."""
    return _ADAPTER.validate_json(text)
