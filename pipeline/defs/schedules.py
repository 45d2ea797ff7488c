"""The retry schedule: re-request failed segments, a bounded number of times per spec version."""

from __future__ import annotations

import dagster as dg

from pipeline.defs.jobs import render_segment_job
from pipeline.defs.partitions import segment_partition_key, videos
from pipeline.defs.resources import PipelineResource
from pipeline.defs.sensors import segment_run_tags
from pipeline.orchestration.status import video_status

MAX_SCHEDULED_RETRIES = 3
"""Scheduled re-requests per segment and spec version; after that a person decides (backfill/CLI)."""

RETRY_TAG = "pipeline/retry"
ATTEMPT_TAG = "pipeline/retry_attempt"


def failed_segment_requests(instance: dg.DagsterInstance, manifests_dir, video_ids: list[str],
                            max_attempts: int = MAX_SCHEDULED_RETRIES) -> tuple[list[dg.RunRequest], list[str]]:
    """Run requests for every failed real segment of ``video_ids`` that has been retried by the
    schedule fewer than ``max_attempts`` times for its current spec version, and the list of
    segments ("video/segment") that gave up."""
    requests, exhausted = [], []
    for video_id in video_ids:
        status = video_status(instance, manifests_dir, video_id)
        if status.plan is None:
            continue
        tags = segment_run_tags(status.plan)
        for seg in status.segments:
            if seg.state != "failed":
                continue
            previous = instance.get_run_records(dg.RunsFilter(tags={
                "dagster/partition/video": video_id, "dagster/partition/segment": seg.segment,
                RETRY_TAG: "scheduled", "pipeline/spec": tags["pipeline/spec"]}))
            if len(previous) >= max_attempts:
                exhausted.append(f"{video_id}/{seg.segment}")
                continue
            attempt = len(previous) + 1
            requests.append(dg.RunRequest(
                partition_key=segment_partition_key(video_id, int(seg.segment)),
                run_key=f"{video_id}:{seg.segment}:retry:{tags['pipeline/spec']}:{attempt}",
                tags={**tags, RETRY_TAG: "scheduled", ATTEMPT_TAG: str(attempt)}))
    return requests, exhausted


@dg.schedule(job=render_segment_job, cron_schedule="*/10 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING)
def retry_failed_segments(context: dg.ScheduleEvaluationContext, pipeline: PipelineResource):
    """Every 10 minutes: re-request each failed real segment, at most 3 times per spec version,
    tagged ``pipeline/retry=scheduled`` and ``pipeline/retry_attempt=N`` so retries stand out in the
    UI. The assembly sensor stitches the video once its segments are done."""
    video_ids = context.instance.get_dynamic_partitions(videos.name)
    requests, exhausted = failed_segment_requests(context.instance, pipeline.manifests_dir, video_ids)
    if exhausted:
        context.log.warning(f"gave up retrying {', '.join(exhausted)} after {MAX_SCHEDULED_RETRIES} attempts; "
                            "fix the cause, then backfill those partitions or run `pipeline retry VIDEO_ID`")
    if not requests:
        return dg.SkipReason("no failed segments to retry")
    return requests


all_schedules = [retry_failed_segments]
