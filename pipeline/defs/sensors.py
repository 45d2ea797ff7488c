"""Sensors that make the pipeline run itself (DESIGN.md "Orchestration"). What to run, in which
order, with which tags and run keys is ``pipeline.orchestration.planner``'s; these wrap its
``PlannedRun``s in ``dg.RunRequest``s (``run_request``).

- ``spec_inbox_sensor``: spec files dropped into the inbox (a folder, or an S3 prefix) are validated
  and registered; a new or changed spec adds its ``videos`` partition and requests ``video_spec``
  (``planner.plan_run``), unless ``pipeline render`` registered it and renders it itself.
- ``segment_fanout_sensor``: each new ``video_spec`` materialization adds the ``segments`` keys its
  plan needs and requests one ``render_segment`` run per real segment, plus ``render_music``, all at
  once, longest beats first (``planner.fanout_runs``); none for a plan ``pipeline render`` made (it
  renders it itself). It records the phantom partitions every plan makes (``phantoms``), so a
  finished video shows complete and "Missing" means a real segment.
- ``assembly_sensor``: once every real segment has ``chunk_videos`` and ``narration`` (and the video has ``music``)
  newer than its spec, requests ``assemble_video`` for that video, once per such state, unless that
  state is being or was assembled by another run (the CLI's). Logs what each video waits on.

All three keep a cursor and are idempotent across ticks; none ever requests a phantom segment.

**Handoffs come first** (``pipeline.orchestration.handoff``): a plan run that ends queues its
segment and music runs, and the segment or music run that makes its video ready queues the
assembly, at once, under these sensors' names and run keys. The fan-out and assembly sensors are
the backstop: they look at a stage only once the runs making it have ended (the cursor stays
before a record whose run is in progress), so they do not race a handoff; a request a handoff
already queued is skipped by Dagster's run-key check; the run coordinator cancels a duplicate
that still slips through ("one run per request").
"""

from __future__ import annotations

import json

import dagster as dg

from pipeline.defs.io_manager import read_manifest
from pipeline.defs.jobs import assemble_video_job, plan_video_job, render_music_job, render_segment_job
from pipeline.defs.partitions import partition_key, segments, split_key, videos
from pipeline.defs.resources import PipelineResource
from pipeline.inbox import scan_inbox
from pipeline.manifests import VideoPlan
from pipeline.orchestration.phantoms import phantoms_after_planning, planned_videos
from pipeline.orchestration.render_lock import render_lock_holder
from pipeline.orchestration.planner import LAUNCHED_BY_TAG, PlannedRun, Waiting, assembly_run, fanout_runs, plan_run
from pipeline.orchestration.status import IN_PROGRESS, VideoStatus, assembly_runs, video_status
from pipeline.printable import printable
from pipeline.submissions import list_submissions, render_claim

IN_PROGRESS_VALUES = frozenset(s.value for s in IN_PROGRESS)

TICK_S = 1
"""Minimum seconds between two evaluations of a sensor. The sensor daemon loops every 5 s
(``dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME``, not configurable), so 1 s means "every loop".
With 5 a sensor whose previous tick began a little under 5 s earlier was skipped to the next loop:
7-9 s between ticks measured instead of 5 (BENCHMARKS.md section 6); each tick is cheap (a
directory listing, one or two event-log queries)."""


def _cursor(context) -> dict:
    return json.loads(context.cursor) if context.cursor else {}


def run_request(run: PlannedRun) -> dg.RunRequest:
    """The ``dg.RunRequest`` of a planned run (job, partition key, run key, tags)."""
    return dg.RunRequest(job_name=run.job, partition_key=partition_key(run.video_id, run.segment),
                         run_key=run.run_key, tags=run.tags)


@dg.sensor(job=plan_video_job, minimum_interval_seconds=TICK_S, default_status=dg.DefaultSensorStatus.RUNNING)
def spec_inbox_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    """Validate spec files dropped into the inbox (``PipelineResource.inbox``: ``<data>/inbox``, or
    ``s3://<bucket>/<prefix>/inbox/`` with S3, unless configured): valid ones are registered (in
    ``PipelineResource.specs``) and moved to ``processed/``, invalid ones to ``rejected/`` with a
    ``.error.txt``.
    Every registered spec whose version was not requested yet gets its ``videos`` partition and a
    ``video_spec`` run; an identical re-drop starts nothing, a changed spec re-plans the video.
    A registration ``pipeline render`` made is that process's: while a ``pipeline`` process holds
    the video's render lock it is not requested (looked at again next tick), and a version that is
    already the video's latest plan is not planned again (recorded as requested). A registration a
    ``pipeline render`` on another machine made (a cluster's shared registry) is left to it for
    ``submissions.RENDER_CLAIM_S`` seconds (``render_claim``), then planned here if it is not.
    Never raises because of a file: any entry that cannot be read, validated or registered is
    rejected alone (``scan_inbox``), and the valid specs beside it are still requested."""
    scan = scan_inbox(pipeline.specs, pipeline.inbox, defaults=pipeline.provider_defaults())
    for path, error in scan.rejected:  # error: already escaped by scan_inbox
        context.log.warning(f"rejected {printable(path.name)}: {error}")
    for problem in scan.errors:
        context.log.error(problem)
    requested: dict[str, str] = _cursor(context)
    runs, new_partitions = [], []
    existing = set(context.instance.get_dynamic_partitions(videos.name))
    pending = [sub for sub in list_submissions(pipeline.specs) if requested.get(sub.video_id) != sub.spec_sha256]
    planned = planned_videos(context.instance, [s.video_id for s in pending if s.video_id in existing]) if pending else {}
    for sub in pending:
        if (holder := render_lock_holder(pipeline.workspace, sub.video_id)) is not None:
            context.log.info(f"{sub.video_id}: `pipeline` ({printable(holder)}) is rendering it; not requested")
            continue
        shape = planned.get(sub.video_id)
        if shape is not None and shape.spec_sha256 == sub.spec_sha256:
            context.log.info(f"{sub.video_id}: version {sub.spec_sha256[:12]} is its latest plan already "
                             "(e.g. by `pipeline render`); not requested")
            requested[sub.video_id] = sub.spec_sha256
            continue
        if (claim := render_claim(sub)) is not None:
            context.log.info(f"{sub.video_id}: registered by `pipeline render` on another machine ({printable(claim)}) "
                             "a moment ago, which plans it; looked at again next tick")
            continue
        if sub.video_id not in existing:
            new_partitions.append(sub.video_id)
        runs.append(run_request(plan_run(sub)))  # tags: sub.run_tags(): video, pipeline/spec, pipeline/provider
        requested[sub.video_id] = sub.spec_sha256
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[videos.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(requested, sort_keys=True),
    )


def _runs(instance: dg.DagsterInstance, run_ids: set[str]) -> dict[str, dg.DagsterRun]:
    """``{run_id: run}`` of ``run_ids`` (one query)."""
    if not run_ids:
        return {}
    return {r.run_id: r for r in instance.get_runs(dg.RunsFilter(run_ids=sorted(run_ids)))}


@dg.sensor(jobs=[render_segment_job, render_music_job], minimum_interval_seconds=TICK_S,
           default_status=dg.DefaultSensorStatus.RUNNING)
def segment_fanout_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    """For each new ``video_spec`` materialization: add the segment keys its plan needs and request
    one ``render_segment`` run per real segment plus one ``render_music`` run (run keys carry the
    materialization's storage id, so a re-planned video fans out again and a tick never twice).
    A plan made by ``pipeline render`` (run tag ``pipeline/launched_by=cli``) is rendered by that
    process: no runs are requested for it. Every plan read, whoever made it, gets its phantoms
    recorded in the same result (``phantoms.phantoms_after_planning``: runless materializations of
    the video's phantom segments, and of the other planned videos' phantoms among its keys).
    A materialization whose plan run is still in progress is left for a later tick (the cursor
    stays before it): that run makes the video's characters next and then hands off itself."""
    after = int(context.cursor or 0)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("video_spec"), after_storage_id=after), limit=100,
        ascending=True).records
    existing = set(context.instance.get_dynamic_partitions(segments.name))
    makers = _runs(context.instance, {r.run_id for r in records if r.run_id})
    runs, new_keys, planned = [], [], []
    for record in records:
        video_id = record.partition_key
        maker = makers.get(record.run_id)
        if maker is not None and maker.status in IN_PROGRESS:
            context.log.info(f"{video_id}: its plan run {record.run_id[:8]} is still running (its characters come "
                             "next; the run queues the segment runs itself when it ends); looked at again next tick")
            break  # the cursor stays before it
        after = max(after, record.storage_id)
        plan = read_manifest(pipeline.manifests_dir, "video_spec", video_id)
        if not isinstance(plan, VideoPlan):
            context.log.warning(f"video_spec[{video_id}] materialized but its manifest is unreadable; skipped")
            continue
        new_keys += [seg for seg in plan.segment_keys if seg not in existing and seg not in new_keys]
        planned.append(video_id)
        if maker is not None and maker.tags.get(LAUNCHED_BY_TAG) == "cli":
            context.log.info(f"{video_id}: planned by `pipeline render` (run {record.run_id[:8]}), which renders "
                             "it; no runs requested")
            continue
        runs += [run_request(run) for run in fanout_runs(plan, record.storage_id)]
    found = phantoms_after_planning(context.instance, planned, existing | set(new_keys)) if planned else []
    if found:
        segs = sorted({f"{p.video_id}/{p.segment}" for p in found})
        context.log.info(f"recording {len(segs)} phantom segments ({len(found)} runless materializations): "
                         + ", ".join(segs))
    return dg.SensorResult(
        run_requests=runs,
        asset_events=[p.materialization() for p in found],
        dynamic_partitions_requests=[segments.build_add_request(sorted(new_keys))] if new_keys else [],
        cursor=str(after),
    )


@dg.sensor(job=assemble_video_job, minimum_interval_seconds=TICK_S, default_status=dg.DefaultSensorStatus.RUNNING)
def assembly_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    """Request ``assemble_video`` (stitched_video + final_video) for a video once every real segment
    has ``chunk_videos`` newer than its spec and the video has fresh ``music`` (``planner.assembly_run``).
    The run key is the newest input's storage id: one assembly per state, and a backfilled segment
    assembles again. A state that another run (e.g. ``pipeline retry``) is assembling or assembled
    is not requested. A video with a segment or music run still in progress is looked at again
    next tick (the cursor stays before its records): the run that ends its stage hands off the
    assembly itself. Each candidate video's decision is logged: what it waits on, or the request."""
    start = after = int(context.cursor or 0)
    first_seen: dict[str, int] = {}  # video -> storage id of its first new input record
    for asset in ("chunk_videos", "narration", "music"):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=start), limit=1000,
            ascending=True).records
        for record in records:
            key = record.partition_key or ""
            video_id = split_key(key)[0] if "|" in key else key
            first_seen[video_id] = min(first_seen.get(video_id, record.storage_id), record.storage_id)
            after = max(after, record.storage_id)
    runs, held = [], []
    for video_id in sorted(first_seen):
        status = video_status(context.instance, pipeline.manifests_dir, video_id)
        busy = _busy(context.instance, status)
        if busy:
            context.log.info(f"{video_id}: {', '.join(busy)} still running (the run that ends its stage queues the "
                             "assembly itself); looked at again next tick")
            held.append(first_seen[video_id] - 1)  # the cursor stays before its records
            continue
        planned = assembly_run(status, assembly_runs(context.instance, video_id, status.assembly_state))
        if isinstance(planned, Waiting):
            context.log.info(f"{video_id}: not assembled now: {planned}")
            continue
        context.log.info(f"{video_id}: requesting assemble_video (run key {planned.run_key})")
        runs.append(run_request(planned))
    return dg.SensorResult(run_requests=runs, cursor=str(min([after, *held])))


def _busy(instance: dg.DagsterInstance, status: VideoStatus) -> list[str]:
    """What of ``status``'s video is still being made by a run in progress: "segment 002", "music"."""
    busy = [f"segment {s.segment}" for s in status.segments if s.latest_run_status in IN_PROGRESS_VALUES]
    music_run = status.latest_runs.get("music")
    if music_run and (run := instance.get_run_by_id(music_run)) is not None and run.status in IN_PROGRESS:
        busy.append("music")
    return busy


all_sensors = [spec_inbox_sensor, segment_fanout_sensor, assembly_sensor]
