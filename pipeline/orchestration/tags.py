"""The run tags and job names the planner, the run coordinator and the CLI agree on. Nothing
but names (and the one rule that reads a video id out of a partition key), so the run
coordinator, which the webserver and the daemon load with the instance, imports nothing else."""

from __future__ import annotations

VIDEO_TAG = "video"
"""Run tag naming the video: every run of a video has it (``planner.video_tags``; the run
coordinator adds it from Dagster's partition tags to runs launched without it). The per-video run
limit (dagster.yaml ``tag_concurrency_limits``) keys on it."""
ASSEMBLY_STATE_TAG = "pipeline/assembly_state"
"""Run tag of ``assemble_video`` runs: the assembly state (storage id of the newest input) assembled."""
RETRY_TAG = "pipeline/retry"
"""``scheduled`` (the retry schedule) or ``cli`` (``pipeline retry``)."""
ATTEMPT_TAG = "pipeline/retry_attempt"
"""The scheduled retry's number (1, 2, ...) for its segment and spec version."""
LAUNCHED_BY_TAG = "pipeline/launched_by"
"""``cli`` on runs the ``pipeline`` command executes in-process."""

PLAN_JOB, SEGMENT_JOB, MUSIC_JOB, ASSEMBLE_JOB = "plan_video", "render_segment", "render_music", "assemble_video"


def video_of_partition(partition_key: str) -> str:
    """The video id in a partition key of this pipeline: ``segment|video`` or a video id."""
    return partition_key.rsplit("|", 1)[-1]
