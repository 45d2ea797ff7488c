"""Where each segment of a video stands, read from the Dagster instance: the one place the CLI
(``status``, ``retry``), the assembly sensor and the retry schedule get it from.

A segment's asset is ``materialized`` when its latest materialization is newer than the video's
latest ``video_spec`` materialization, ``stale`` when it is older, ``in_progress`` while a run for
the segment is queued or running, ``failed`` when the latest run for it failed, else ``missing``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import segment_partition_key
from pipeline.manifests import ChunkVideosManifest, VideoPlan

SEGMENT_ASSETS = ("beats", "storyboard_images", "chunk_videos")
IN_PROGRESS = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING}


@dataclass
class SegmentStatus:
    """One real segment: state per asset, the latest run for it, and its chunk cost (USD)."""

    segment: str
    states: dict[str, str]
    latest_run_id: str | None = None
    latest_run_status: str | None = None
    chunk_videos_storage_id: int | None = None
    cost_usd: float = 0.0

    @property
    def done(self) -> bool:
        return self.states["chunk_videos"] == "materialized"

    @property
    def state(self) -> str:
        """The segment's overall state: its least advanced asset's."""
        for s in ("in_progress", "failed", "stale", "missing"):
            if s in self.states.values():
                return s
        return "materialized"


@dataclass
class VideoStatus:
    """A video's plan, the storage id of its latest spec materialization, and every segment."""

    video_id: str
    plan: VideoPlan | None
    spec_storage_id: int | None
    segments: list[SegmentStatus] = field(default_factory=list)
    video_assets: dict[str, str] = field(default_factory=dict)
    music_storage_id: int | None = None
    final_storage_id: int | None = None

    @property
    def failed_or_missing(self) -> list[str]:
        return [s.segment for s in self.segments if s.state in ("failed", "missing", "stale")]

    @property
    def ready_to_assemble(self) -> bool:
        return bool(self.segments) and all(s.done for s in self.segments) and \
            self.video_assets.get("music") == "materialized"


def _latest_storage_ids(instance: dg.DagsterInstance, asset: str, partitions: set[str]) -> dict[str, int]:
    return dict(instance.event_log_storage.get_latest_storage_id_by_partition(
        dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION, partitions))


def _state(storage_id: int | None, spec_id: int) -> str:
    if storage_id is None:
        return "missing"
    return "materialized" if storage_id > spec_id else "stale"


def video_status(instance: dg.DagsterInstance, manifests_dir: str | Path, video_id: str) -> VideoStatus:
    """The status of ``video_id`` (see module doc). ``plan`` is None until video_spec materialized."""
    spec_ids = _latest_storage_ids(instance, "video_spec", {video_id})
    plan = read_manifest(manifests_dir, "video_spec", video_id)
    status = VideoStatus(video_id, plan if isinstance(plan, VideoPlan) else None, spec_ids.get(video_id))
    if status.plan is None or status.spec_storage_id is None:
        return status
    spec_id = status.spec_storage_id
    keys = {b.segment: str(segment_partition_key(video_id, b.index)) for b in status.plan.beats}
    latest = {asset: _latest_storage_ids(instance, asset, set(keys.values())) for asset in SEGMENT_ASSETS}
    runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition/video": video_id}), limit=500)
    latest_run: dict[str, dg.DagsterRun] = {}
    for record in runs:  # newest first
        seg = record.dagster_run.tags.get("dagster/partition/segment")
        if seg is not None and seg not in latest_run:
            latest_run[seg] = record.dagster_run
    for seg, key in keys.items():
        states = {asset: _state(latest[asset].get(key), spec_id) for asset in SEGMENT_ASSETS}
        run = latest_run.get(seg)
        if run is not None and any(v != "materialized" for v in states.values()):
            if run.status in IN_PROGRESS:
                states = {a: ("in_progress" if v != "materialized" else v) for a, v in states.items()}
            elif run.status == dg.DagsterRunStatus.FAILURE:
                states = {a: ("failed" if v != "materialized" else v) for a, v in states.items()}
        cv = read_manifest(manifests_dir, "chunk_videos", key)
        status.segments.append(SegmentStatus(
            segment=seg, states=states, latest_run_id=run.run_id if run else None,
            latest_run_status=run.status.value if run else None,
            chunk_videos_storage_id=latest["chunk_videos"].get(key),
            cost_usd=(cv.cost_usd + cv.storyboard.cost_usd) if isinstance(cv, ChunkVideosManifest) else 0.0))
    for asset in ("music", "stitched_video", "final_video"):
        storage_id = _latest_storage_ids(instance, asset, {video_id}).get(video_id)
        status.video_assets[asset] = _state(storage_id, spec_id)
        if asset == "music":
            status.music_storage_id = storage_id
        elif asset == "final_video":
            status.final_storage_id = storage_id
    return status
