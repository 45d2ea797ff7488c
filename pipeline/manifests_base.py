"""The records every manifest builds on: the base model (unknown fields refused), one stored
medium and how it was made (``MediaManifest``), one row of a cost table (``CostLine``), segment
keys and UTC timestamps.

Money in USD, times in seconds, sizes in pixels. ``pipeline.manifests`` re-exports all of them,
so ``from pipeline.manifests import MediaManifest`` etc. keep working. Nothing here imports Dagster.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
        return default_from_cost(data, "price_usd")


def default_from_cost(data: Any, name: str) -> Any:
    """Raw manifest ``data`` (a dict, before validation) with field ``name`` set to its ``cost_usd``
    (USD; 0.0 without one) when a manifest written before ``name`` existed lacks it; anything else as is."""
    if isinstance(data, dict) and name not in data:
        return {**data, name: data.get("cost_usd", 0.0)}
    return data


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
