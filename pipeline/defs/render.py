"""Render one video end to end without the daemon: the runs a sensor would launch, executed
in-process by a pool of worker processes, recorded in the Dagster instance so the UI shows them
afterwards.

Worker processes, not threads: Dagster reconfigures Python logging at the start of every run
(``logging.config.dictConfig``), and two runs starting at once in one process deadlock on the
logging locks. Workers are forked from the parent once it is single-threaded (after the planning run), so they start in milliseconds, and each builds its definitions once.

Order: ``plan_video`` (video_spec), then every real segment's ``render_segment`` run and the
``render_music`` run in parallel (longest beat chains first, so the makespan approaches the
longest chain), then ``assemble_video`` once every segment succeeded.
"""

from __future__ import annotations

import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg

from pipeline.defs.partitions import ensure_partitions, segment_partition_key, videos
from pipeline.defs.resources import PipelineResource
from pipeline.manifests import ChunkVideosManifest, FinalManifest, VideoPlan
from pipeline.submissions import submit_file

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

    @property
    def failed(self) -> list[RunOutcome]:
        return [r for r in self.runs if not r.success]

    @property
    def chunk_sets(self) -> list[ChunkVideosManifest]:
        """The chunk_videos manifests this render produced, in timeline order."""
        sets = [r.outputs["chunk_videos"] for r in self.runs if "chunk_videos" in r.outputs]
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
    """Run one asset job for one partition in-process. Never raises for a failed run."""
    job = defs.resolve_job_def(job_name)
    started = time.monotonic()
    result = job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False,
                                    run_config=QUIET_LOGS, tags=tags)
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
    import os

    instance = _WORKER_INSTANCE.get(os.getpid())
    if instance is None:
        instance = _WORKER_INSTANCE[os.getpid()] = dg.DagsterInstance.get()
    partition_key = dg.MultiPartitionKey(key) if isinstance(key, dict) else key
    return execute(_FORKED_DEFS[-1], instance, job_name, partition_key, name=name, tags=tags, want=want)


def render_video(spec_path: str | Path, *, defs: dg.Definitions, instance: dg.DagsterInstance,
                 provider: str = "local", max_parallel: int = 2,
                 on_run: Callable[[str, RunOutcome | None], None] | None = None,
                 on_plan: Callable[[VideoPlan], None] | None = None) -> RenderReport:
    """Submit ``spec_path`` and materialize its whole graph. Raises SpecError for an invalid spec.

    ``on_run(name, None)`` is called when a run starts and ``on_run(name, outcome)`` when it ends.
    Segment runs and the music run share ``max_parallel`` worker processes.
    """
    started = time.monotonic()
    pipeline: PipelineResource = defs.resources["pipeline"]
    submission, _ = submit_file(pipeline.workspace, spec_path, provider=provider)
    video_id = submission.video_id
    if not instance.has_dynamic_partition(videos.name, video_id):
        instance.add_dynamic_partitions(videos.name, [video_id])
    tags = {"video": video_id, "launched_by": "pipeline-cli"}
    notify = on_run or (lambda name, outcome: None)

    def launch(job: str, key, name: str, want: tuple[str, ...] = ()) -> RunOutcome:
        notify(name, None)
        outcome = execute(defs, instance, job, key, name=name, tags=tags, want=want)
        notify(name, outcome)
        return outcome

    def submit(pool: ProcessPoolExecutor, job: str, key, name: str, want: tuple[str, ...] = ()):
        notify(name, None)
        plain_key = dict(key.keys_by_dimension) if isinstance(key, dg.MultiPartitionKey) else key
        future = pool.submit(_worker_execute, job, plain_key, name, tags, want)
        future.add_done_callback(lambda f: notify(name, f.result()) if not f.exception() else None)
        return future

    planned = launch("plan_video", video_id, "video_spec", want=("video_spec",))
    runs = [planned]
    if not planned.success:
        return RenderReport(video_id, None, runs, None, time.monotonic() - started)
    plan: VideoPlan = planned.outputs["video_spec"]
    if on_plan:
        on_plan(plan)
    ensure_partitions(instance, plan)
    # Longest chains first: the makespan is bounded below by the longest beat.
    order = sorted(plan.beats, key=lambda b: -b.duration_s)
    workers = max(1, min(max_parallel, len(order) + 1))
    _FORKED_DEFS[:] = [defs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [submit(pool, "render_segment", segment_partition_key(video_id, b.index), f"segment {b.segment}",
                          ("beats", "chunk_videos")) for b in order]
        futures.insert(len(futures) // 2, submit(pool, "render_music", video_id, "music"))
        runs += [f.result() for f in as_completed(futures)]
    if any(not r.success for r in runs):
        return RenderReport(video_id, plan, runs, None, time.monotonic() - started)
    assembled = launch("assemble_video", video_id, "assemble", want=("final_video",))
    runs.append(assembled)
    return RenderReport(video_id, plan, runs, assembled.outputs.get("final_video"), time.monotonic() - started)
