"""The retry schedule: re-request failed segments, a bounded number of times per spec version
(``pipeline.orchestration.planner.retry_runs``)."""

from __future__ import annotations

import dagster as dg

from pipeline.defs.jobs import render_segment_job
from pipeline.defs.partitions import videos
from pipeline.defs.resources import PipelineResource
from pipeline.defs.sensors import run_request
from pipeline.orchestration.planner import MAX_SCHEDULED_RETRIES, PlannedRun, retry_runs, video_tags
from pipeline.orchestration.status import scheduled_retry_attempts, video_status


def failed_segment_runs(instance: dg.DagsterInstance, manifests_dir, video_ids: list[str],
                        max_attempts: int = MAX_SCHEDULED_RETRIES) -> tuple[list[PlannedRun], list[str]]:
    """The planned retries of every failed real segment of ``video_ids`` (``planner.retry_runs``
    over their status and their scheduled attempts so far), and the segments ("video/segment")
    that gave up after ``max_attempts``."""
    statuses = [video_status(instance, manifests_dir, video_id) for video_id in video_ids]
    attempts = {s.video_id: scheduled_retry_attempts(instance, s.video_id, video_tags(s.plan)["pipeline/spec"])
                for s in statuses if s.plan is not None and any(seg.state == "failed" for seg in s.segments)}
    return retry_runs(statuses, attempts, max_attempts=max_attempts)


@dg.schedule(job=render_segment_job, cron_schedule="*/10 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING)
def retry_failed_segments(context: dg.ScheduleEvaluationContext, pipeline: PipelineResource):
    """Every 10 minutes: re-request each failed real segment, at most 3 times per spec version,
    tagged ``pipeline/retry=scheduled`` and ``pipeline/retry_attempt=N`` (and ``video``,
    ``pipeline/spec``, ``pipeline/provider``) so retries stand out in the UI. The assembly sensor
    stitches the video once its segments are done."""
    video_ids = context.instance.get_dynamic_partitions(videos.name)
    runs, exhausted = failed_segment_runs(context.instance, pipeline.manifests_dir, video_ids)
    if exhausted:
        context.log.warning(f"gave up retrying {', '.join(exhausted)} after {MAX_SCHEDULED_RETRIES} attempts; "
                            "fix the cause, then backfill those partitions or run `pipeline retry VIDEO_ID`")
    if not runs:
        return dg.SkipReason("no failed segments to retry")
    return [run_request(run) for run in runs]


all_schedules = [retry_failed_segments]
