"""Where each segment of a video stands, read from the Dagster instance: the one place the CLI
(``status``, ``retry``, ``render``), the assembly sensor and the retry schedule get it from. The
decisions taken on it (what to run, what a video waits on, whether it is up to date) are
``pipeline.orchestration.planner``'s.

A segment's asset is ``materialized`` when its latest materialization is newer than the video's
latest ``video_spec`` materialization, ``stale`` when it is older, ``in_progress`` while a run for
the segment is queued or running, ``failed`` when the latest run for it failed, else ``missing``.
Video-level assets (``music``, ``stitched_video``, ``final_video``) follow the same rule with the
latest run of the job that makes them.

Phantom materializations: a (video, segment) partition that is a phantom of its video is recorded
as a runless materialization whose metadata says ``phantom: true`` (``pipeline.orchestration.phantoms``).
When the video is re-planned with more beats, that segment becomes real; a phantom record is then
no output at all, so it counts as *missing* here (``is_phantom``, ``latest_real_storage_ids``),
although Dagster, which cannot unmaterialize a partition, shows it materialized and stale until
its run (requested at once by the fan-out sensor or the CLI) starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import segment_partition_key
from pipeline.manifests import ChunkVideosManifest, VideoPlan
from pipeline.orchestration.planner import RunSummary
from pipeline.orchestration.tags import ASSEMBLY_STATE_TAG, RETRY_TAG, VIDEO_TAG
from pipeline.submissions import SPEC_TAG
from pipeline.text_objects import TextObjects

SEGMENT_ASSETS = ("narration", "beats", "storyboard_images", "chunk_videos")
"""The per-segment assets, upstream first (``narration`` feeds ``beats``)."""
VIDEO_LEVEL_JOBS = {"music": "render_music", "stitched_video": "assemble_video", "soundtrack": "assemble_video",
                    "final_video": "assemble_video"}
"""Which job materializes each video-level asset (its latest run decides in_progress / failed)."""
IN_PROGRESS = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING}
PHANTOM_KEY = "phantom"
"""Materialization metadata key: ``True`` on the runless record of a phantom (video, segment)."""


def is_phantom(metadata: Mapping[str, object] | None) -> bool:
    """Whether materialization ``metadata`` (raw values or Dagster ``MetadataValue``s) marks a
    phantom segment: ``phantom`` is true (``True``, or the text "true" in any case)."""
    value = (metadata or {}).get(PHANTOM_KEY)
    value = getattr(value, "value", value)
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


@dataclass
class SegmentStatus:
    """One real segment: state per asset, the latest run for it, and its chunk cost (USD)."""

    segment: str
    states: dict[str, str]
    latest_run_id: str | None = None
    latest_run_status: str | None = None
    chunk_videos_storage_id: int | None = None
    cost_usd: float = 0.0
    narration_storage_id: int | None = None

    @property
    def done(self) -> bool:
        """The segment's clip and its narration are materialized for the current spec."""
        return self.states["chunk_videos"] == "materialized" and self.states.get("narration", "materialized") == \
            "materialized"

    @property
    def state(self) -> str:
        """The segment's overall state: its least advanced asset's."""
        for s in ("in_progress", "failed", "stale", "missing"):
            if s in self.states.values():
                return s
        return "materialized"


@dataclass
class VideoStatus:
    """A video's plan, the storage id of its latest spec materialization, every real segment, the
    state of each video-level asset (``video_assets``) and their latest storage ids."""

    video_id: str
    plan: VideoPlan | None
    spec_storage_id: int | None
    segments: list[SegmentStatus] = field(default_factory=list)
    video_assets: dict[str, str] = field(default_factory=dict)
    music_storage_id: int | None = None
    final_storage_id: int | None = None
    latest_runs: dict[str, str] = field(default_factory=dict)
    """Video-level asset -> id of the latest run of the job that makes it (when there is one)."""

    @property
    def failed_or_missing(self) -> list[str]:
        return [s.segment for s in self.segments if s.state in ("failed", "missing", "stale")]

    @property
    def ready_to_assemble(self) -> bool:
        return bool(self.segments) and all(s.done for s in self.segments) and \
            self.video_assets.get("music") == "materialized"

    @property
    def assembly_state(self) -> int | None:
        """The storage id of the newest input of ``assemble_video`` (every real segment's
        ``chunk_videos`` and ``narration``, and the ``music``): one number per state worth
        assembling, None while not ``ready_to_assemble``."""
        if not self.ready_to_assemble:
            return None
        return max([max(s.chunk_videos_storage_id or 0, s.narration_storage_id or 0) for s in self.segments]
                   + [self.music_storage_id or 0])


def latest_real_storage_ids(instance: dg.DagsterInstance, asset: str, partitions: set[str]) -> dict[str, int]:
    """``{partition: storage id}`` of the latest materialization of ``asset`` in each of
    ``partitions`` that has one and is not a phantom record (``is_phantom``): a partition whose
    latest record is a phantom is left out, i.e. missing. One storage query, plus one fetch of
    the latest records when any partition has one."""
    latest = dict(instance.event_log_storage.get_latest_storage_id_by_partition(
        dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION, partitions))
    if not latest:
        return latest
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), storage_ids=list(latest.values())),
        limit=len(latest)).records
    phantom = {r.storage_id for r in records
               if r.asset_materialization is not None and is_phantom(r.asset_materialization.metadata)}
    return {key: sid for key, sid in latest.items() if sid not in phantom}


def _state(storage_id: int | None, spec_id: int) -> str:
    if storage_id is None:
        return "missing"
    return "materialized" if storage_id > spec_id else "stale"


def _with_run(states: dict[str, str], run: dg.DagsterRun | None) -> dict[str, str]:
    """``states`` with every not-materialized asset marked in_progress / failed after ``run``'s status."""
    if run is None or all(v == "materialized" for v in states.values()):
        return states
    if run.status in IN_PROGRESS:
        return {a: ("in_progress" if v != "materialized" else v) for a, v in states.items()}
    if run.status == dg.DagsterRunStatus.FAILURE:
        return {a: ("failed" if v != "materialized" else v) for a, v in states.items()}
    return states


def video_status(instance: dg.DagsterInstance, manifests_dir: "str | Path | TextObjects",
                 video_id: str) -> VideoStatus:
    """The status of ``video_id`` (see module doc). ``plan`` is None until video_spec materialized.
    Reads the instance (a few queries; a cluster's Postgres storage as well) and the manifests of
    the video's real segments from ``manifests_dir`` (``PipelineResource.manifests_dir``: S3 when
    configured); no other file, so any machine with the instance and the store can ask."""
    spec_ids = latest_real_storage_ids(instance, "video_spec", {video_id})
    plan = read_manifest(manifests_dir, "video_spec", video_id)
    status = VideoStatus(video_id, plan if isinstance(plan, VideoPlan) else None, spec_ids.get(video_id))
    if status.plan is None or status.spec_storage_id is None:
        return status
    spec_id = status.spec_storage_id
    keys = {b.segment: str(segment_partition_key(video_id, b.index)) for b in status.plan.beats}
    latest = {asset: latest_real_storage_ids(instance, asset, set(keys.values())) for asset in SEGMENT_ASSETS}
    latest_run: dict[str, dg.DagsterRun] = {}
    for record in instance.get_run_records(dg.RunsFilter(tags={"dagster/partition/video": video_id}), limit=500):
        seg = record.dagster_run.tags.get("dagster/partition/segment")  # newest first
        if seg is not None and seg not in latest_run:
            latest_run[seg] = record.dagster_run
    for seg, key in keys.items():
        run = latest_run.get(seg)
        states = _with_run({asset: _state(latest[asset].get(key), spec_id) for asset in SEGMENT_ASSETS}, run)
        cv = read_manifest(manifests_dir, "chunk_videos", key)
        status.segments.append(SegmentStatus(
            segment=seg, states=states, latest_run_id=run.run_id if run else None,
            latest_run_status=run.status.value if run else None,
            chunk_videos_storage_id=latest["chunk_videos"].get(key),
            narration_storage_id=latest["narration"].get(key),
            cost_usd=(cv.cost_usd + cv.storyboard.cost_usd) if isinstance(cv, ChunkVideosManifest) else 0.0))
    job_runs: dict[str, dg.DagsterRun] = {}
    for record in instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": video_id}), limit=200):
        job_runs.setdefault(record.dagster_run.job_name, record.dagster_run)  # newest first
    for asset, job in VIDEO_LEVEL_JOBS.items():
        storage_id = latest_real_storage_ids(instance, asset, {video_id}).get(video_id)
        run = job_runs.get(job)
        status.video_assets[asset] = _with_run({asset: _state(storage_id, spec_id)}, run)[asset]
        if run is not None:
            status.latest_runs[asset] = run.run_id
        if asset == "music":
            status.music_storage_id = storage_id
        elif asset == "final_video":
            status.final_storage_id = storage_id
    return status


DAEMON_HEARTBEAT_MAX_AGE_S = 60.0
"""A run-queue daemon whose last heartbeat is older than this (seconds) is taken to be down."""
WAITING = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED}


def run_queue_alive(instance: dg.DagsterInstance, max_age_s: float = DAEMON_HEARTBEAT_MAX_AGE_S) -> bool:
    """Whether a daemon dequeues runs of ``instance``: its ``QUEUED_RUN_COORDINATOR`` heartbeat is
    at most ``max_age_s`` seconds old. Without one, a QUEUED run never starts."""
    beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp <= max_age_s


def run_summary(run: dg.DagsterRun) -> RunSummary:
    """The planner's view of a run: id, job, status name, and whether it is in progress / succeeded."""
    return RunSummary(run_id=run.run_id, job=run.job_name, status=run.status.value,
                      in_progress=run.status in IN_PROGRESS, succeeded=run.status == dg.DagsterRunStatus.SUCCESS,
                      tags=dict(run.tags))


def assembly_runs(instance: dg.DagsterInstance, video_id: str, state: int | None) -> list[RunSummary]:
    """Every ``assemble_video`` run of ``video_id`` tagged with assembly ``state``
    (``pipeline/assembly_state``; the sensor's and the CLI's), newest first; [] for state None."""
    if state is None:
        return []
    runs = instance.get_runs(dg.RunsFilter(job_name="assemble_video",
                                           tags={VIDEO_TAG: video_id, ASSEMBLY_STATE_TAG: str(state)}))
    return [run_summary(r) for r in runs]


def scheduled_retry_attempts(instance: dg.DagsterInstance, video_id: str, spec_tag: str) -> dict[str, int]:
    """``{segment: runs}``: how many ``pipeline/retry=scheduled`` runs each segment of ``video_id``
    had for spec version ``spec_tag`` (``pipeline/spec``)."""
    counts: dict[str, int] = {}
    for record in instance.get_run_records(dg.RunsFilter(tags={
            "dagster/partition/video": video_id, RETRY_TAG: "scheduled", SPEC_TAG: spec_tag})):
        seg = record.dagster_run.tags.get("dagster/partition/segment")
        if seg is not None:
            counts[seg] = counts.get(seg, 0) + 1
    return counts
