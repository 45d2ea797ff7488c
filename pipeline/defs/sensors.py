"""Sensors that make the pipeline run itself (DESIGN.md "Orchestration").

- ``spec_inbox_sensor``: spec files dropped into the inbox are validated and registered; a new or
  changed spec adds its ``videos`` partition and requests ``video_spec``.
- ``segment_fanout_sensor``: each new ``video_spec`` materialization adds the ``segments`` keys its
  plan needs and requests one ``render_segment`` run per real segment, plus ``render_music``.
- ``assembly_sensor``: once every real segment has ``chunk_videos`` (and the video has ``music``)
  newer than its spec, requests ``assemble_video`` for that video, once per such state.

All three keep a JSON cursor and are idempotent across ticks; none ever requests a phantom segment.
"""

from __future__ import annotations

import json
import dagster as dg

from pipeline.defs.io_manager import read_manifest
from pipeline.defs.jobs import assemble_video_job, plan_video_job, render_music_job, render_segment_job
from pipeline.defs.partitions import segment_partition_key, segments, split_key, videos
from pipeline.defs.resources import PipelineResource
from pipeline.orchestration.status import video_status
from pipeline.inbox import scan_inbox
from pipeline.manifests import VideoPlan
from pipeline.printable import printable
from pipeline.submissions import list_submissions

TICK_S = 5


def _cursor(context) -> dict:
    return json.loads(context.cursor) if context.cursor else {}


def segment_run_tags(plan: VideoPlan) -> dict[str, str]:
    """Tags every segment run carries: the video and the spec version it renders."""
    return {"video": plan.video_id, "pipeline/spec": plan.spec_sha256[:12]}


@dg.sensor(job=plan_video_job, minimum_interval_seconds=TICK_S, default_status=dg.DefaultSensorStatus.RUNNING)
def spec_inbox_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    """Validate spec files dropped into the inbox (``<data>/inbox`` unless configured): valid ones
    are registered and moved to ``processed/``, invalid ones to ``rejected/`` with a ``.error.txt``.
    Every registered spec whose version was not requested yet gets its ``videos`` partition and a
    ``video_spec`` run; an identical re-drop starts nothing, a changed spec re-plans the video.
    Never raises because of a file: any entry that cannot be read, validated or registered is
    rejected alone (``scan_inbox``), and the valid specs beside it are still requested."""
    scan = scan_inbox(pipeline.workspace, pipeline.inbox_path, defaults=pipeline.provider_defaults())
    for path, error in scan.rejected:  # error: already escaped by scan_inbox
        context.log.warning(f"rejected {printable(path.name)}: {error}")
    for problem in scan.errors:
        context.log.error(problem)
    requested: dict[str, str] = _cursor(context)
    runs, new_partitions = [], []
    existing = set(context.instance.get_dynamic_partitions(videos.name))
    for sub in list_submissions(pipeline.workspace):
        if requested.get(sub.video_id) == sub.spec_sha256:
            continue
        if sub.video_id not in existing:
            new_partitions.append(sub.video_id)
        runs.append(dg.RunRequest(partition_key=sub.video_id, run_key=f"{sub.video_id}:{sub.spec_sha256[:16]}",
                                  tags=sub.run_tags()))  # video, pipeline/spec, pipeline/provider
        requested[sub.video_id] = sub.spec_sha256
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[videos.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(requested, sort_keys=True),
    )


@dg.sensor(jobs=[render_segment_job, render_music_job], minimum_interval_seconds=TICK_S,
           default_status=dg.DefaultSensorStatus.RUNNING)
def segment_fanout_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    """For each new ``video_spec`` materialization: add the segment keys its plan needs and request
    one ``render_segment`` run per real segment plus one ``render_music`` run (run keys carry the
    materialization's storage id, so a re-planned video fans out again and a tick never twice)."""
    after = int(context.cursor or 0)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("video_spec"), after_storage_id=after), limit=100,
        ascending=True).records
    existing = set(context.instance.get_dynamic_partitions(segments.name))
    runs, new_keys = [], []
    for record in records:
        after = max(after, record.storage_id)
        video_id = record.partition_key
        plan = read_manifest(pipeline.manifests_dir, "video_spec", video_id)
        if not isinstance(plan, VideoPlan):
            context.log.warning(f"video_spec[{video_id}] materialized but its manifest is unreadable; skipped")
            continue
        for seg in plan.segment_keys:
            if seg not in existing and seg not in new_keys:
                new_keys.append(seg)
        tags = segment_run_tags(plan)
        for beat in sorted(plan.beats, key=lambda b: -b.duration_s):  # longest chains first
            runs.append(dg.RunRequest(job_name=render_segment_job.name,
                                      partition_key=segment_partition_key(video_id, beat.index),
                                      run_key=f"{video_id}:{beat.segment}:{record.storage_id}", tags=tags))
        runs.append(dg.RunRequest(job_name=render_music_job.name, partition_key=video_id,
                                  run_key=f"{video_id}:music:{record.storage_id}", tags=tags))
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[segments.build_add_request(sorted(new_keys))] if new_keys else [],
        cursor=str(after),
    )


@dg.sensor(job=assemble_video_job, minimum_interval_seconds=TICK_S, default_status=dg.DefaultSensorStatus.RUNNING)
def assembly_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    """Request ``assemble_video`` (stitched_video + final_video) for a video once every real segment
    has ``chunk_videos`` newer than its spec and the video has fresh ``music``. The run key is the
    newest input's storage id: one assembly per state, and a backfilled segment assembles again."""
    start = after = int(context.cursor or 0)
    candidates: set[str] = set()
    for asset in ("chunk_videos", "music"):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=start), limit=1000,
            ascending=True).records
        for record in records:
            key = record.partition_key or ""
            candidates.add(split_key(key)[0] if "|" in key else key)
            after = max(after, record.storage_id)
    runs = []
    for video_id in sorted(candidates):
        status = video_status(context.instance, pipeline.manifests_dir, video_id)
        if not status.ready_to_assemble:
            continue
        newest = max(max(s.chunk_videos_storage_id or 0 for s in status.segments), status.music_storage_id or 0)
        runs.append(dg.RunRequest(partition_key=video_id, run_key=f"{video_id}:assemble:{newest}",
                                  tags={"video": video_id}))
    return dg.SensorResult(run_requests=runs, cursor=str(after))


all_sensors = [spec_inbox_sensor, segment_fanout_sensor, assembly_sensor]
