"""Render one video end to end without the daemon: the runs a sensor would launch, executed
in-process by a pool of worker processes, recorded in the Dagster instance so the UI shows them
afterwards.

Worker processes, not threads: Dagster reconfigures Python logging at the start of every run
(``logging.config.dictConfig``), and two runs starting at once in one process deadlock on the
logging locks. Workers are forked from the parent once it is single-threaded (after the planning run), so they start in milliseconds, and each builds its definitions once.

Order: ``plan_video`` (video_spec), then every real segment's ``render_segment`` run and the
``render_music`` run in parallel (longest beat chains first, so the makespan approaches the
longest chain), then ``assemble_video`` once every segment succeeded.

Concurrency and crashes: renders and retries of one video are serialized by a file lock
(``<data>/locks/<video_id>.lock``), so a second render of the same spec waits and then finds it up
to date; different videos render at once. Every run carries ``pipeline/owner`` (the executing
process, ``pipeline.orchestration.instance.OWNER_TAG``). Workers die with the parent (``PR_SET_PDEATHSIG``),
and so do their ffmpeg processes, so killing ``pipeline render`` stops all of its work at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import dagster as dg

from pipeline.orchestration.instance import fail_dead_runs, open_instance, owner_tags
from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import add_partitions, ensure_partitions, segment_partition_key, videos
from pipeline.defs.resources import PipelineResource
from pipeline.orchestration.status import video_status
from pipeline.manifests import ChunkVideosManifest, FinalManifest, PlannedBeat, VideoPlan
from pipeline.procs import ProcessIdentity, die_with_parent, file_lock
from pipeline.spec import VIDEO_ID_PATTERN, load_spec
from pipeline.store import Workspace
from pipeline.submissions import submit_spec

log = logging.getLogger(__name__)

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass
class RunOutcome:
    """One launched run: what it was for, whether it succeeded, its error, wall seconds."""

    name: str
    job: str
    partition: str
    run_id: str
    success: bool
    seconds: float
    error: str | None = None
    outputs: dict = field(default_factory=dict)


@dataclass
class RenderReport:
    """Everything ``render_video`` did: the plan, each run, the final manifest (None on failure)."""

    video_id: str
    plan: VideoPlan | None
    runs: list[RunOutcome]
    final: FinalManifest | None
    seconds: float
    up_to_date: bool = False
    """Nothing ran: the final video was already materialized from this exact spec."""
    stored_chunk_sets: list[ChunkVideosManifest] = field(default_factory=list)

    @property
    def failed(self) -> list[RunOutcome]:
        return [r for r in self.runs if not r.success]

    @property
    def chunk_sets(self) -> list[ChunkVideosManifest]:
        """The chunk_videos manifests this render produced, in timeline order."""
        sets = [r.outputs["chunk_videos"] for r in self.runs if "chunk_videos" in r.outputs] or self.stored_chunk_sets
        return sorted(sets, key=lambda cv: cv.index)


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            # A dg.Failure carries its description in the message; unwrap user-code errors to their cause.
            while err.cause is not None and "Error occurred while executing" in err.message:
                err = err.cause
            messages.append(f"{event.step_key}: {err.message.strip()}")
    return "\n".join(messages) or "run failed (see the Dagster UI for the event log)"


def execute(defs: dg.Definitions, instance: dg.DagsterInstance, job_name: str, partition_key, *,
            name: str, tags: dict[str, str] | None = None, want: tuple[str, ...] = ()) -> RunOutcome:
    """Run one asset job for one partition in-process. Never raises for a failed run. The run is
    tagged with ``tags`` plus ``pipeline/owner`` naming this process (``owner_tags``)."""
    job = defs.resolve_job_def(job_name)
    started = time.monotonic()
    result = job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False,
                                    run_config=QUIET_LOGS, tags={**(tags or {}), **owner_tags()})
    outputs = {}
    if result.success:
        for node in want:
            try:
                outputs[node] = result.output_for_node(node)
            except dg.DagsterInvariantViolationError:
                pass
    return RunOutcome(name=name, job=job_name, partition=str(partition_key), run_id=result.run_id,
                      success=result.success, seconds=time.monotonic() - started,
                      error=None if result.success else _failure_message(result), outputs=outputs)


_FORKED_DEFS: list[dg.Definitions] = []
"""The parent's definitions, set just before the pool forks, so workers run the very same ones."""
_WORKER_INSTANCE: dict[int, dg.DagsterInstance] = {}


def _worker_execute(job_name: str, key: str | dict, name: str, tags: dict[str, str],
                    want: tuple[str, ...]) -> RunOutcome:
    """``execute`` in a forked pool worker, with its own instance (opened once per process)."""
    instance = _WORKER_INSTANCE.get(os.getpid())
    if instance is None:
        instance = _WORKER_INSTANCE[os.getpid()] = open_instance()
    partition_key = dg.MultiPartitionKey(key) if isinstance(key, dict) else key
    return execute(_FORKED_DEFS[-1], instance, job_name, partition_key, name=name, tags=tags, want=want)


class _Launcher:
    """Launches this render's runs (in-process, or in the forked pool) and reports them."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, tags: dict[str, str],
                 on_run: Callable[[str, RunOutcome | None], None] | None):
        self.defs, self.instance, self.tags = defs, instance, tags
        self.notify = on_run or (lambda name, outcome: None)

    def run(self, job: str, key, name: str, want: tuple[str, ...] = ()) -> RunOutcome:
        self.notify(name, None)
        outcome = execute(self.defs, self.instance, job, key, name=name, tags=self.tags, want=want)
        self.notify(name, outcome)
        return outcome

    def run_parallel(self, plan: VideoPlan, segments: list[PlannedBeat], music: bool, max_parallel: int) -> list[RunOutcome]:
        """Segment runs (longest chains first: the makespan is bounded below by the longest
        beat) and the music run, ``max_parallel`` at a time in forked worker processes."""
        order = sorted(segments, key=lambda b: -b.duration_s)
        jobs = [("render_segment", dict(segment_partition_key(plan.video_id, b.index).keys_by_dimension),
                 f"segment {b.segment}", ("beats", "chunk_videos")) for b in order]
        if music:
            jobs.insert(len(jobs) // 2, ("render_music", plan.video_id, "music", ()))
        if not jobs:
            return []
        _FORKED_DEFS[:] = [self.defs]
        context = multiprocessing.get_context("fork")
        # Workers are forked by this (the calling) thread, which outlives them, so PR_SET_PDEATHSIG
        # kills them exactly when this process dies, however it dies (SIGKILL included).
        with ProcessPoolExecutor(max_workers=max(1, min(max_parallel, len(jobs))), mp_context=context,
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {}
            for job, key, name, want in jobs:
                self.notify(name, None)
                future = pool.submit(_worker_execute, job, key, name, self.tags, want)
                future.add_done_callback(lambda f, n=name: self.notify(n, f.result()) if not f.exception() else None)
                futures[future] = (job, key, name)
            outcomes = []
            for future in as_completed(futures):
                try:
                    outcomes.append(future.result())
                except BrokenProcessPool as exc:  # a worker died (OOM, a signal): report, don't crash
                    job, key, name = futures[future]
                    outcome = RunOutcome(name=name, job=job, partition=str(key), run_id="", success=False, seconds=0.0,
                                         error=f"the worker process died ({exc}); run `pipeline retry` to resume")
                    self.notify(name, outcome)
                    outcomes.append(outcome)
        if any(not o.run_id and not o.success for o in outcomes):
            fail_dead_runs(self.instance)  # the dead worker's run is not left STARTED
        return outcomes


def _finish(launcher: _Launcher, plan: VideoPlan, runs: list[RunOutcome], started: float) -> RenderReport:
    """Assemble if every run so far succeeded; the report either way."""
    if any(not r.success for r in runs):
        return RenderReport(plan.video_id, plan, runs, None, time.monotonic() - started)
    assembled = launcher.run("assemble_video", plan.video_id, "assemble", want=("final_video",))
    runs.append(assembled)
    return RenderReport(plan.video_id, plan, runs, assembled.outputs.get("final_video"), time.monotonic() - started)


def up_to_date_report(instance: dg.DagsterInstance, pipeline: PipelineResource, video_id: str,
                      started: float) -> RenderReport | None:
    """A report from stored manifests if ``video_id``'s final video is materialized after its spec
    and after every real segment and its music, and the file is there; else None."""
    status = video_status(instance, pipeline.manifests_dir, video_id)
    final = read_manifest(pipeline.manifests_dir, "final_video", video_id)
    if status.plan is None or not status.ready_to_assemble or not isinstance(final, FinalManifest):
        return None
    inputs = [s.chunk_videos_storage_id or 0 for s in status.segments] + [status.music_storage_id or 0]
    if (status.final_storage_id or 0) <= max(inputs) or not Path(final.path).exists():
        return None
    sets = [read_manifest(pipeline.manifests_dir, "chunk_videos", str(segment_partition_key(video_id, b.index)))
            for b in status.plan.beats]
    return RenderReport(video_id, status.plan, [], final, time.monotonic() - started,
                        up_to_date=True, stored_chunk_sets=[c for c in sets if c is not None])


@contextmanager
def video_lock(workspace: Workspace, video_id: str,
               on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the render lock of ``video_id`` (``<data>/locks/<video_id>.lock``, flock) for the
    block: one CLI render or retry of a video at a time on this machine. If another live process
    holds it, ``on_wait(message)`` is called first (default: a log warning) and this one waits.
    The lock is released when the holder exits or is killed (its forked workers die with it)."""
    path = workspace.root / "locks" / f"{video_id}.lock"
    try:
        holder = ProcessIdentity.parse(path.read_text().strip())
    except OSError:
        holder = None
    me = ProcessIdentity.current()
    if holder is not None and holder != me and holder.is_alive():
        (on_wait or log.warning)(f"waiting for another render of {video_id} (process {holder.pid}) to finish")
    with file_lock(path):
        path.write_text(str(me))
        yield


def render_video(spec_path: str | Path, *, defs: dg.Definitions, instance: dg.DagsterInstance,
                 provider: str = "local", max_parallel: int = 2, force: bool = False,
                 on_run: Callable[[str, RunOutcome | None], None] | None = None,
                 on_plan: Callable[[VideoPlan], None] | None = None,
                 on_wait: Callable[[str], None] | None = None) -> RenderReport:
    """Submit ``spec_path`` and materialize its whole graph. Raises SpecError for an invalid spec.

    When the same spec was rendered before and its final video is up to date, nothing runs
    (``report.up_to_date``) unless ``force``; a forced rerun re-materializes everything from the
    cache. ``on_run(name, None)`` is called when a run starts and ``on_run(name, outcome)`` when it
    ends. Segment runs and the music run share ``max_parallel`` worker processes. A render of a
    video another process is rendering waits for it (``video_lock``; ``on_wait`` is told).
    """
    started = time.monotonic()
    pipeline: PipelineResource = defs.resources["pipeline"]
    spec = load_spec(spec_path)
    with video_lock(pipeline.workspace, spec.video_id, on_wait):
        return _render_locked(spec, str(spec_path), defs=defs, instance=instance, provider=provider,
                              max_parallel=max_parallel, force=force, on_run=on_run, on_plan=on_plan,
                              started=started)


def _render_locked(spec, source: str, *, defs: dg.Definitions, instance: dg.DagsterInstance, provider: str,
                   max_parallel: int, force: bool, on_run, on_plan, started: float) -> RenderReport:
    pipeline: PipelineResource = defs.resources["pipeline"]
    submission, changed = submit_spec(pipeline.workspace, spec, source=source, provider=provider)
    video_id = submission.video_id
    add_partitions(instance, videos, [video_id])
    if not changed and not force:
        report = up_to_date_report(instance, pipeline, video_id, started)
        if report is not None:
            return report
    launcher = _Launcher(defs, instance, {"video": video_id, "launched_by": "pipeline-cli"}, on_run)
    planned = launcher.run("plan_video", video_id, "video_spec", want=("video_spec",))
    runs = [planned]
    if not planned.success:
        return RenderReport(video_id, None, runs, None, time.monotonic() - started)
    plan: VideoPlan = planned.outputs["video_spec"]
    if on_plan:
        on_plan(plan)
    ensure_partitions(instance, plan)
    runs += launcher.run_parallel(plan, plan.beats, True, max_parallel)
    return _finish(launcher, plan, runs, started)


def retry_video(video_id: str, *, defs: dg.Definitions, instance: dg.DagsterInstance, max_parallel: int = 2,
                on_run: Callable[[str, RunOutcome | None], None] | None = None) -> RenderReport:
    """Re-materialize only the failed, missing or stale real segments of ``video_id`` (and its
    music if needed), then reassemble. Raises LookupError if the video was never planned."""
    started = time.monotonic()
    pipeline: PipelineResource = defs.resources["pipeline"]
    if not re.fullmatch(VIDEO_ID_PATTERN.strip("^$"), video_id):
        raise LookupError(f"{video_id!r} is not a video id (expected {VIDEO_ID_PATTERN})")
    with video_lock(pipeline.workspace, video_id):
        return _retry_locked(video_id, defs=defs, instance=instance, max_parallel=max_parallel, on_run=on_run,
                             started=started)


def _retry_locked(video_id: str, *, defs: dg.Definitions, instance: dg.DagsterInstance, max_parallel: int,
                  on_run, started: float) -> RenderReport:
    pipeline: PipelineResource = defs.resources["pipeline"]
    status = video_status(instance, pipeline.manifests_dir, video_id)
    if status.plan is None:
        raise LookupError(f"video {video_id!r} has no materialized video_spec; render or submit its spec first")
    redo = set(status.failed_or_missing)
    launcher = _Launcher(defs, instance, {"video": video_id, "launched_by": "pipeline-cli", "pipeline/retry": "cli"},
                         on_run)
    runs = launcher.run_parallel(status.plan, [b for b in status.plan.beats if b.segment in redo],
                                 status.video_assets.get("music") != "materialized", max_parallel)
    return _finish(launcher, status.plan, runs, started)
