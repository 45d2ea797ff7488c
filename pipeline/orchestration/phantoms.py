"""Phantom segments, recorded (DESIGN.md "Asset graph and partitions").

Dagster's multi-partitions are a full cross product, so a video of 3 beats still *has* the
partitions (video, 003), (video, 004) ... of ``beats``, ``storyboard_images`` and ``chunk_videos``
when another video has more beats. Such a *phantom* partition has nothing to render. Left alone it
shows as "Missing" forever (the partitions view, a grey segment asset in the lineage graph, the
``render_segment`` job's missing count), and "materialize missing" launches runs that do nothing.
So every phantom (asset, video, segment) gets one runless ``AssetMaterialization`` (``Phantom``):

- metadata ``phantom: true``, ``reason`` ("video X has 3 beats (segments 000-002); segment 004 is
  not part of it") and the plan's ``spec_sha256``; the multi-partition tags
  ``dagster/partition/video`` and ``dagster/partition/segment``, as Dagster tags a run's event;
- **no data version** (``dagster/data_version``). Dagster decides whether ``stitched_video[v]`` is
  stale by comparing the data version of each upstream ``chunk_videos[(v, s)]`` materialized after
  its provenance cursor with the one before: None and None is "unchanged", so a phantom recorded
  after v was assembled (a longer video added segment keys) does not make v's video stale;
- reported in asset order (beats, storyboard_images, chunk_videos): a phantom is never older than
  its upstream phantom, so Dagster does not call it stale either.

Who records them, proportional to what changed: the fan-out sensor for every ``video_spec``
materialization it reads (``SensorResult(asset_events=...)``), and ``pipeline render`` after
planning (``ensure_plan_partitions``). For a (re-)planned video: its phantoms over every segment
key; for every other planned video: its phantoms among the keys the new plan uses (the keys that
may be new to it). A phantom whose latest materialization is already the phantom record of the
same plan (``spec_sha256``) is not reported again (two bulk queries per asset, ``unrecorded``).
Videos not planned yet (no ``video_spec`` materialization) have no phantoms.

Re-plans. Fewer beats: the dropped segments are phantoms now and get their records. More beats:
the segments that became real keep their phantom record as latest materialization, and nothing
is reported for them. Dagster cannot mark a partition missing again (``wipe_asset_partitions``
raises NotImplementedError on the OSS SQL event log storages; a runless failure would say
"Failed" of a segment that did not fail), so until it renders Dagster shows it materialized and
STALE ("video_spec has a new materialization", like every other segment of the re-planned
video), and then "materializing" from the moment its run is queued: the fan-out sensor requests
it in the tick that sees the re-plan, as the CLI does at once. Everything the project decides on
treats a phantom record of a real segment as missing (``status.is_phantom``,
``latest_real_storage_ids``: ``pipeline status`` / ``retry``, the assembly sensor, the retry
schedule), and fan-in refuses to stitch without it (``stages.check_fan_in``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dagster as dg

from pipeline.defs.partitions import ensure_partitions, segments as segments_def, videos as videos_def
from pipeline.manifests import VideoPlan, segment_key
from pipeline.orchestration.status import PHANTOM_KEY, SEGMENT_ASSETS, is_phantom

PHANTOM_ASSETS = SEGMENT_ASSETS
"""The per-segment assets, upstream first: the order phantoms of one partition are reported in."""
REASON_KEY, SPEC_KEY = "reason", "spec_sha256"
DIMENSION_TAG = "dagster/partition/"
"""Prefix of the multi-partition tags Dagster puts on a run's materialization of a (video, segment)."""


@dataclass(frozen=True)
class PlanShape:
    """What phantoms need of a video's plan: its id, number of beats and version (spec_sha256).
    Real segments are "000" .. segment_key(beats - 1); every other segment key is a phantom."""

    video_id: str
    beats: int
    spec_sha256: str

    @classmethod
    def of(cls, plan: VideoPlan) -> "PlanShape":
        return cls(plan.video_id, len(plan.beats), plan.spec_sha256)

    def is_real(self, segment: str) -> bool:
        """Whether ``segment`` stands for a beat of this plan (``VideoPlan.beat_for_segment``'s rule)."""
        try:
            return 0 <= int(segment) < self.beats
        except ValueError:
            return False

    @property
    def real_segments(self) -> list[str]:
        return [segment_key(i) for i in range(self.beats)]

    def reason(self, segment: str) -> str:
        """Why ``segment`` is a phantom of this video, for people (and the UI)."""
        span = "segment 000" if self.beats == 1 else f"segments 000-{segment_key(self.beats - 1)}"
        beats = "1 beat" if self.beats == 1 else f"{self.beats} beats"
        return f"video {self.video_id} has {beats} ({span}); segment {segment} is not part of it"


@dataclass(frozen=True)
class Phantom:
    """One phantom partition of one per-segment asset, and the plan that makes it one."""

    asset: str
    video_id: str
    segment: str
    reason: str
    spec_sha256: str

    @property
    def partition_key(self) -> str:
        """Dagster's text form of the (video, segment) key: ``segment|video`` (dimensions sorted)."""
        return f"{self.segment}|{self.video_id}"

    def materialization(self) -> dg.AssetMaterialization:
        """The runless materialization recording this phantom (module doc: no data version)."""
        return dg.AssetMaterialization(
            asset_key=self.asset,
            partition=dg.MultiPartitionKey({"video": self.video_id, "segment": self.segment}),
            description=f"Phantom segment: nothing to render. {self.reason}.",
            metadata={PHANTOM_KEY: True, REASON_KEY: self.reason, SPEC_KEY: self.spec_sha256},
            tags={f"{DIMENSION_TAG}video": self.video_id, f"{DIMENSION_TAG}segment": self.segment})


def wanted_phantoms(changed: Iterable[PlanShape], planned: Iterable[PlanShape],
                    segment_keys: Iterable[str]) -> dict[tuple[str, str], PlanShape]:
    """``{(video_id, segment): plan}`` of the phantoms to make sure of when the ``changed`` plans
    were (re-)planned: each changed video's phantoms among all ``segment_keys``, and each other
    ``planned`` video's phantoms among the real segments of the changed plans (keys that may be
    new to it). Pure; the caller checks what is recorded already (``unrecorded``)."""
    changed = {shape.video_id: shape for shape in changed}
    keys = sorted(set(segment_keys))
    wanted = {(s.video_id, seg): s for s in changed.values() for seg in keys if not s.is_real(seg)}
    used = sorted({seg for s in changed.values() for seg in s.real_segments})
    for shape in planned:
        if shape.video_id not in changed:
            wanted.update({(shape.video_id, seg): shape for seg in used if not shape.is_real(seg)})
    return wanted


def _latest_records(instance: dg.DagsterInstance, asset: str, partitions: set[str]) -> dict[str, dg.EventLogRecord]:
    """``{partition: record}`` of the latest materialization of ``asset`` in each of ``partitions``
    that has one: one storage query, and one fetch when any has one."""
    if not partitions:
        return {}
    latest = dict(instance.event_log_storage.get_latest_storage_id_by_partition(
        dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION, partitions))
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), storage_ids=list(latest.values())),
        limit=len(latest)).records
    by_id = {r.storage_id: r for r in records}
    return {key: by_id[sid] for key, sid in latest.items() if sid in by_id}


def _recorded(record: dg.EventLogRecord | None, shape: PlanShape) -> bool:
    """Whether ``record`` is the phantom record of ``shape``'s plan version."""
    event = record.asset_materialization if record is not None else None
    if event is None or not is_phantom(event.metadata):
        return False
    spec = event.metadata.get(SPEC_KEY)
    return getattr(spec, "value", spec) == shape.spec_sha256


def unrecorded(instance: dg.DagsterInstance, wanted: Mapping[tuple[str, str], PlanShape]) -> list[Phantom]:
    """The phantoms in ``wanted`` (``wanted_phantoms``) whose latest materialization is not already
    the phantom record of the same plan version, every asset's, in report order: all ``beats``,
    then ``storyboard_images``, then ``chunk_videos``; within an asset by video and segment.
    Two storage queries per asset."""
    if not wanted:
        return []
    keys = {f"{seg}|{video}": (video, seg) for video, seg in wanted}
    found = []
    for asset in PHANTOM_ASSETS:
        latest = _latest_records(instance, asset, set(keys))
        for key, (video, seg) in sorted(keys.items(), key=lambda kv: kv[1]):
            shape = wanted[(video, seg)]
            if not _recorded(latest.get(key), shape):
                found.append(Phantom(asset, video, seg, shape.reason(seg), shape.spec_sha256))
    return found


def planned_videos(instance: dg.DagsterInstance, video_ids: Iterable[str] | None = None) -> dict[str, PlanShape]:
    """``{video_id: PlanShape}`` of every video (of ``video_ids``; default: every ``videos`` key)
    whose latest ``video_spec`` materialization says how many beats the plan has and its version
    (metadata ``beats`` and ``spec_sha256``). Videos never planned are left out. Two queries."""
    ids = set(instance.get_dynamic_partitions(videos_def.name) if video_ids is None else video_ids)
    shapes = {}
    for video_id, record in _latest_records(instance, "video_spec", ids).items():
        event = record.asset_materialization
        if event is None or is_phantom(event.metadata):
            continue
        beats, spec = (getattr(v, "value", v) for v in (event.metadata.get("beats"), event.metadata.get(SPEC_KEY)))
        if isinstance(beats, int) and isinstance(spec, str):
            shapes[video_id] = PlanShape(video_id, beats, spec)
    return shapes


def phantoms_after_planning(instance: dg.DagsterInstance, changed: Iterable[PlanShape | str],
                            segment_keys: Iterable[str] | None = None,
                            planned: Mapping[str, PlanShape] | None = None) -> list[Phantom]:
    """The phantoms not recorded yet once the ``changed`` plans (shapes, or video ids looked up in
    ``planned``) were (re-)planned and their segment keys exist: ``wanted_phantoms`` over
    ``segment_keys`` (default: every ``segments`` key now) and every video in ``planned``
    (default: ``planned_videos``), less what is recorded (``unrecorded``). A changed video id
    that is not planned has no phantoms."""
    planned = planned_videos(instance) if planned is None else planned
    shapes = [c if isinstance(c, PlanShape) else planned.get(c) for c in changed]
    shapes = [s for s in shapes if s is not None]
    if not shapes:
        return []
    keys = instance.get_dynamic_partitions(segments_def.name) if segment_keys is None else segment_keys
    return unrecorded(instance, wanted_phantoms(shapes, planned.values(), keys))


def record_phantoms(instance: dg.DagsterInstance, phantoms: Iterable[Phantom]) -> int:
    """Report each phantom's runless materialization to ``instance``, in order. Returns how many."""
    count = 0
    for phantom in phantoms:
        instance.report_runless_asset_event(phantom.materialization())
        count += 1
    return count


def ensure_plan_partitions(instance: dg.DagsterInstance, plan: VideoPlan) -> list[Phantom]:
    """The CLI's step after planning: add the video's key and the segment keys ``plan`` needs
    (``partitions.ensure_partitions``), then record the phantoms this makes or leaves unrecorded
    (``phantoms_after_planning``). Returns the phantoms recorded."""
    ensure_partitions(instance, plan)
    phantoms = phantoms_after_planning(instance, [PlanShape.of(plan)])
    record_phantoms(instance, phantoms)
    return phantoms
