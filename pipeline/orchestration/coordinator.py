"""``VideoRunCoordinator``: Dagster's run queue, plus the two rules every run of a video must keep,
however it was launched (a sensor, the retry schedule, the UI's Materialize / Launch run, a
backfill, a run retry). Configured as the instance's ``run_coordinator`` in dagster.yaml.

1. **Every run of a video carries the ``video`` tag.** Dagster tags partitioned runs itself, but
   not uniformly: a per-segment run gets ``dagster/partition/video``, a video-level run only
   ``dagster/partition``. ``submit_run`` adds ``video`` (``video_for_tags``) to any run that lacks
   it, before the run is queued, so ``RunsFilter(tags={"video": V})`` finds every run of V and the
   per-video limit (``tag_concurrency_limits`` on ``video``) counts them all. The CLI's in-process
   runs do not pass a coordinator; the planner tags them (``planner.video_tags``).
2. **One assembly per state.** An ``assemble_video`` run tagged ``pipeline/assembly_state`` whose
   video and state already have a run in progress or succeeded (the CLI's, or one queued a moment
   earlier) is canceled instead of queued, with a message naming that run. The check runs under
   ``assembly_lock`` (a file lock in the instance's root directory), which the CLI holds from its
   own check until its in-process assembly ends: on one machine, a state is assembled once.
   Between machines (Postgres storage), runs queued through coordinators are still checked
   against each other's records, without the lock.
3. **One queued run per sensor request.** A run with a sensor's name and run key
   (``dagster/sensor_name``, ``dagster/run_key``) is queued once: if another run with the same two
   tags is already queued, running or done (a handoff, ``pipeline.orchestration.handoff``, that
   raced the sensor's tick), it is canceled with a message naming that run; a run submitted twice
   (the sensor found the handoff's run before it was queued, and submitted it itself) is queued
   once. Re-executions (``dagster/parent_run_id``) are not checked. The check runs under a per-video
   file lock beside the assembly lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster import QueuedRunCoordinator, SubmitRunContext

from pipeline.orchestration.tags import ASSEMBLE_JOB, ASSEMBLY_STATE_TAG, VIDEO_TAG, video_of_partition
from pipeline.procs import file_lock

from dagster._core.storage.tags import PARENT_RUN_ID_TAG, RUN_KEY_TAG, SENSOR_NAME_TAG

PARTITION_TAG = "dagster/partition"
VIDEO_DIMENSION_TAG = "dagster/partition/video"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
LOCK_DIR = ".pipeline-locks"
"""Directory (in the instance's root directory) of the assembly locks."""
ACTIVE = {dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.SUCCESS}
"""Statuses of a run that has assembled, or may still assemble, its state (not failed or canceled)."""


def video_for_tags(tags: Mapping[str, str]) -> str | None:
    """The video a run belongs to, from its tags: ``video`` itself, else Dagster's partition tags
    (``dagster/partition/video`` of a per-segment run, ``dagster/partition`` of a video-level run,
    or a single-partition range of a ranged backfill run). None for a run of no single video."""
    if tags.get(VIDEO_TAG):
        return tags[VIDEO_TAG]
    if tags.get(VIDEO_DIMENSION_TAG):
        return tags[VIDEO_DIMENSION_TAG]
    if tags.get(PARTITION_TAG):
        return video_of_partition(tags[PARTITION_TAG])
    start, end = (tags.get(t) for t in RANGE_TAGS)
    if start and end and video_of_partition(start) == video_of_partition(end):
        return video_of_partition(start)
    return None


@contextmanager
def assembly_lock(instance: dg.DagsterInstance, video_id: str) -> Iterator[None]:
    """Hold the assembly lock of ``video_id`` (``<instance root>/.pipeline-locks/assembly-<video>.lock``,
    flock) for the block. Released when the holder exits or is killed."""
    with file_lock(Path(instance.root_directory) / LOCK_DIR / f"assembly-{video_id}.lock"):
        yield


@contextmanager
def request_lock(instance: dg.DagsterInstance, video_id: str) -> Iterator[None]:
    """Hold the sensor-request lock of ``video_id`` (``<instance root>/.pipeline-locks/requests-<video>.lock``)."""
    with file_lock(Path(instance.root_directory) / LOCK_DIR / f"requests-{video_id}.lock"):
        yield


def request_rivals(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[dg.DagsterRun]:
    """Other runs with ``run``'s sensor name and run key that were queued, are running or succeeded,
    oldest first; [] for a run without both tags or a re-execution (rule 3 of the module doc)."""
    key, sensor = run.tags.get(RUN_KEY_TAG), run.tags.get(SENSOR_NAME_TAG)
    if not key or not sensor or run.tags.get(PARENT_RUN_ID_TAG):
        return []
    runs = instance.get_runs(dg.RunsFilter(statuses=list(ACTIVE - {dg.DagsterRunStatus.NOT_STARTED}),
                                           tags={RUN_KEY_TAG: key, SENSOR_NAME_TAG: sensor}))
    return [r for r in reversed(runs) if r.run_id != run.run_id and not r.tags.get(PARENT_RUN_ID_TAG)]


def assembly_rivals(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[dg.DagsterRun]:
    """Other ``assemble_video`` runs of ``run``'s video and assembly state that are in progress or
    succeeded (``ACTIVE``), oldest first; [] for a run without ``pipeline/assembly_state``."""
    state, video = run.tags.get(ASSEMBLY_STATE_TAG), run.tags.get(VIDEO_TAG)
    if run.job_name != ASSEMBLE_JOB or not state or not video:
        return []
    runs = instance.get_runs(dg.RunsFilter(job_name=ASSEMBLE_JOB, statuses=list(ACTIVE),
                                           tags={VIDEO_TAG: video, ASSEMBLY_STATE_TAG: state}))
    return [r for r in reversed(runs) if r.run_id != run.run_id]


class VideoRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` (same configuration: ``dequeue_interval_seconds``, ...; limits in
    ``concurrency.runs``) that tags every run with its ``video``, cancels duplicate assemblies and
    queues one run per sensor request (module doc). Never raises for a run it cannot attribute to a video: such a run is queued as is."""

    def submit_run(self, context: SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        video = video_for_tags(run.tags)
        if video and run.tags.get(VIDEO_TAG) != video:
            self._instance.add_run_tags(run.run_id, {VIDEO_TAG: video})
            run = self._instance.get_run_by_id(run.run_id) or run.with_tags({**run.tags, VIDEO_TAG: video})
        if video and run.tags.get(RUN_KEY_TAG) and run.tags.get(SENSOR_NAME_TAG):
            with request_lock(self._instance, video):
                current = self._instance.get_run_by_id(run.run_id) or run
                if current.status != dg.DagsterRunStatus.NOT_STARTED:
                    return current  # queued already, by whoever submitted it first
                rivals = request_rivals(self._instance, current)
                if rivals:
                    return self._cancel(current, rivals[0], "is this sensor request already (run key "
                                        f"{current.tags[RUN_KEY_TAG]}); one run per request.")
                return self._submit(current, context)
        return self._submit(run, context)

    def _submit(self, run: dg.DagsterRun, context: SubmitRunContext) -> dg.DagsterRun:
        video = run.tags.get(VIDEO_TAG)
        if run.job_name == ASSEMBLE_JOB and run.tags.get(ASSEMBLY_STATE_TAG) and video:
            with assembly_lock(self._instance, video):
                rivals = assembly_rivals(self._instance, run)
                if rivals:
                    return self._cancel(run, rivals[0], f"already assembles video {video} in state "
                                        f"{run.tags[ASSEMBLY_STATE_TAG]} (the same inputs); one assembly per state.")
                return super().submit_run(SubmitRunContext(run, context.workspace))
        return super().submit_run(SubmitRunContext(run, context.workspace))

    def _cancel(self, run: dg.DagsterRun, rival: dg.DagsterRun, why: str) -> dg.DagsterRun:
        """Cancel ``run`` instead of queueing it, naming ``rival`` and ``why``."""
        self._instance.report_run_canceled(run, f"Not queued: run {rival.run_id} ({rival.status.value}) {why}")
        return self._instance.get_run_by_id(run.run_id) or run
