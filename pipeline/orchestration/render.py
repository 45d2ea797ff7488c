"""Render one video end to end without the daemon: the runs the sensors would launch (planned by
``pipeline.orchestration.planner``: the same requests, order and tags), executed in-process by a
pool of worker processes and recorded in the Dagster instance, so the UI shows them afterwards.

Worker processes, not threads: Dagster reconfigures Python logging at the start of every run, and
two runs starting at once in one process deadlock on the logging locks. Workers are forks of the
process's warm fork server (``forkserver``), never of the render itself, which has threads (rich's
refresh, lease renewals, a test runner's) whose locks a fork would copy held. Each worker takes the
render's environment and working directory, builds the render's definitions once from their
``DefinitionsRecipe`` and opens the render's instance (``instance_home``). The fork server starts
in the background while the video is planned (``render_video``).

Order: ``plan_video`` (and its phantoms recorded: ``phantoms``), then every real segment's
``render_segment`` run and ``render_music`` in parallel (``planner.fanout_runs``: longest beat chains
first), then ``assemble_video`` (``assemble``: once per state, under the video's assembly lock, which the
daemon's run coordinator takes too; if the daemon's ``assembly_sensor`` was first, it waits for that run).

Concurrency and crashes: renders and retries of one video are serialized by a file lock
(``<data>/locks/<video_id>.lock``), so a second render of the same spec waits and then finds it up
to date; different videos render at once. Every run carries ``pipeline/owner`` (the executing
process, ``instance.OWNER_TAG``) and ``pipeline/launched_by=cli``. Workers, and their ffmpeg
processes, die with the parent (``PR_SET_PDEATHSIG``): killing ``pipeline render`` stops all of it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg

from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import add_partitions, partition_key, segment_partition_key, videos
from pipeline.defs.resources import PipelineResource
from pipeline.manifests import ChunkVideosManifest, FinalManifest, VideoPlan
from pipeline.definitions import DefinitionsRecipe, definitions_recipe
from pipeline.orchestration import forkserver
from pipeline.orchestration.coordinator import assembly_lock
from pipeline.orchestration.instance import fail_dead_runs, instance_home, open_instance, owner_tags
from pipeline.orchestration.phantoms import ensure_plan_partitions
from pipeline.orchestration.render_lock import video_lock
from pipeline.orchestration.planner import (
    LAUNCHED_BY_TAG,
    RETRY_TAG,
    PlannedRun,
    Waiting,
    assembly_run,
    fanout_runs,
    plan_run,
    up_to_date,
    video_of_partition,
    video_tags,
)
from pipeline.orchestration.status import IN_PROGRESS, WAITING, assembly_runs, run_queue_alive, video_status
from pipeline.procs import ProcessIdentity, die_with_parent, exit_with
from pipeline.spec import VIDEO_ID_PATTERN, load_spec
from pipeline.submissions import Submission

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
    note: str | None = None
    """Set when another run did the work (e.g. the daemon's assembly of the same state)."""


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
    tagged with ``video`` (from the partition key, as the run coordinator tags queued runs),
    ``tags`` and ``pipeline/owner`` naming this process (``owner_tags``)."""
    job = defs.resolve_job_def(job_name)
    started = time.monotonic()
    tags = {**video_tags(video_of_partition(str(partition_key))), **(tags or {}), **owner_tags()}
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


WANT = {"render_segment": ("beats", "chunk_videos"), "plan_video": ("video_spec",), "assemble_video": ("final_video",)}
"""Outputs the render keeps from each job's run (for its report)."""


def execute_planned(defs: dg.Definitions, instance: dg.DagsterInstance, run: PlannedRun) -> RunOutcome:
    """``execute`` a planned run in this process, tagged ``pipeline/launched_by=cli`` too."""
    return execute(defs, instance, run.job, partition_key(run.video_id, run.segment), name=run.name,
                   tags={**run.tags, LAUNCHED_BY_TAG: "cli"}, want=WANT.get(run.job, ()))


_WORKER: dict[str, object] = {}
"""A pool worker's definitions and instance, set once by ``_worker_init``."""


def _worker_init(parent: str, env: dict[str, str], cwd: str, recipe: DefinitionsRecipe, home: str) -> None:
    """Initializer of a render's pool worker (a fork of the fork server, not of the render): exit
    the instant the render (``parent``, a ``ProcessIdentity``) ends, however it ends, and with the
    fork server; take the render's environment and working directory; build the render's
    definitions from ``recipe`` and open its instance at ``home``."""
    die_with_parent()
    exit_with(ProcessIdentity.parse(parent))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    _WORKER["defs"] = recipe.build()
    _WORKER["instance"] = open_instance(home)


def _worker_execute(run: PlannedRun) -> RunOutcome:
    """``execute_planned`` in a pool worker, with the definitions and instance of ``_worker_init``."""
    return execute_planned(_WORKER["defs"], _WORKER["instance"], run)


class _Launcher:
    """Launches this render's runs (in-process, or in the forked pool) and reports them."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance,
                 on_run: Callable[[str, RunOutcome | None], None] | None,
                 on_wait: Callable[[str], None] | None = None):
        self.defs, self.instance = defs, instance
        self.notify = on_run or (lambda name, outcome: None)
        self.on_wait = on_wait or log.warning
        forkserver.warm_up_in_background()  # 1.7 s of imports, overlapped with the planning run

    def run(self, planned: PlannedRun) -> RunOutcome:
        self.notify(planned.name, None)
        outcome = execute_planned(self.defs, self.instance, planned)
        self.notify(planned.name, outcome)
        return outcome

    def run_parallel(self, runs: list[PlannedRun], max_parallel: int) -> list[RunOutcome]:
        """``runs`` in their planned order, ``max_parallel`` at a time in forked worker processes."""
        if not runs:
            return []
        init = (str(ProcessIdentity.current()), dict(os.environ), os.getcwd(), definitions_recipe(self.defs),
                str(instance_home(self.instance)))
        forkserver.warm_up()
        # Workers are forks of the single-threaded fork server, never of this (multi-threaded)
        # process: see pipeline.orchestration.forkserver.
        with ProcessPoolExecutor(max_workers=max(1, min(max_parallel, len(runs))), mp_context=forkserver.context(),
                                 initializer=_worker_init, initargs=init) as pool:
            futures = {}
            for run in runs:
                self.notify(run.name, None)
                future = pool.submit(_worker_execute, run)
                future.add_done_callback(lambda f, n=run.name: self.notify(n, f.result()) if not f.exception() else None)
                futures[future] = run
            outcomes = []
            for future in as_completed(futures):
                try:
                    outcomes.append(future.result())
                except BrokenProcessPool as exc:  # a worker died (OOM, a signal): report, don't crash
                    run = futures[future]
                    outcome = RunOutcome(name=run.name, job=run.job, partition=run.partition_key, run_id="",
                                         success=False, seconds=0.0,
                                         error=f"the worker process died ({exc}); run `pipeline retry` to resume")
                    self.notify(run.name, outcome)
                    outcomes.append(outcome)
        if any(not o.run_id and not o.success for o in outcomes):
            fail_dead_runs(self.instance)  # the dead worker's run is not left STARTED
        return outcomes


ASSEMBLY_WAIT_S = 3600.0
"""How long the CLI waits for runs it depends on (another assembly of the state, inputs still running)."""


def _done_by_other(plan: VideoPlan, pipeline: PipelineResource, waiting: Waiting) -> RunOutcome:
    final = read_manifest(pipeline.manifests_dir, "final_video", plan.video_id)
    by = waiting.assembled_by
    return RunOutcome(name="assemble", job="assemble_video", partition=plan.video_id, run_id=by.run_id if by else "",
                      success=isinstance(final, FinalManifest), seconds=0.0, note=str(waiting),
                      error=None if isinstance(final, FinalManifest) else "final_video has no readable manifest",
                      outputs={"final_video": final} if isinstance(final, FinalManifest) else {})


def _await_runs(instance: dg.DagsterInstance, run_ids: tuple[str, ...], deadline: float) -> str:
    """Poll until none of ``run_ids`` is in progress ("done"), ``deadline`` (monotonic) passes
    ("timeout"), or every one left is QUEUED / NOT_STARTED with no daemon to start it ("stuck")."""
    while time.monotonic() < deadline:
        runs = [r for r in (instance.get_run_by_id(i) for i in run_ids) if r is not None and r.status in IN_PROGRESS]
        if not runs:
            return "done"
        if all(r.status in WAITING for r in runs) and not run_queue_alive(instance):
            return "stuck"
        time.sleep(0.5)
    return "timeout"


def _cancel_stuck_rivals(instance: dg.DagsterInstance, waiting: Waiting) -> bool:
    """Cancel the queued assembly of this state ``waiting`` names when no daemon runs the queue
    (it would never start, and this process assembles the state instead). True if it did."""
    rival = waiting.assembled_by
    run = instance.get_run_by_id(rival.run_id) if rival is not None and rival.in_progress else None
    if run is None or run.status not in WAITING or run_queue_alive(instance):
        return False
    instance.report_run_canceled(run, f"Canceled by `pipeline` (process {os.getpid()}): the Dagster daemon is not "
                                      "running, so this queued run would never start; the CLI assembles this state.")
    return True


def _failed(video_id: str, error: str) -> RunOutcome:
    return RunOutcome(name="assemble", job="assemble_video", partition=video_id, run_id="", success=False,
                      seconds=0.0, error=error)


def assemble(launcher: _Launcher, plan: VideoPlan, pipeline: PipelineResource, extra_tags: dict[str, str],
             wait_s: float = ASSEMBLY_WAIT_S) -> RunOutcome:
    """Assemble ``plan``'s video once for its current state (``planner.assembly_run``), under the
    video's assembly lock (``coordinator.assembly_lock``) held until the in-process run ends, so
    the daemon's run coordinator cannot queue a second assembly of the state meanwhile. When
    another run assembled the state, its result is reported (``RunOutcome.note``); when one is
    assembling it, or inputs are still running, waits for them (``launcher.on_wait`` is told) up
    to ``wait_s`` seconds. A queued assembly of the state that no daemon will start is canceled
    and done here. An input that failed or is missing (or queued with no daemon) is a failed
    outcome naming it."""
    video_id, deadline = plan.video_id, time.monotonic() + wait_s
    while True:
        with assembly_lock(launcher.instance, video_id):
            status = video_status(launcher.instance, pipeline.manifests_dir, video_id)
            decision = assembly_run(status, assembly_runs(launcher.instance, video_id, status.assembly_state),
                                    **extra_tags)
            if isinstance(decision, Waiting) and _cancel_stuck_rivals(launcher.instance, decision):
                continue
            if isinstance(decision, PlannedRun):
                return launcher.run(decision)
        if not decision.blocked and not decision.runs:  # assembled already: by another run, or up to date
            return _done_by_other(plan, pipeline, decision)
        if decision.blocked:
            return _failed(video_id, f"{video_id} cannot be assembled: waiting on {decision}")
        launcher.on_wait(f"{video_id}: waiting for {decision}")
        outcome = _await_runs(launcher.instance, decision.runs, deadline)
        if outcome == "stuck":
            return _failed(video_id, f"waiting for {decision}, but those runs are queued and the Dagster daemon is not "
                                     "running: start it (make dev), or terminate them in the UI and run this again")
        if outcome == "timeout":
            return _failed(video_id, f"gave up after {wait_s:g} s waiting for {decision}")


def _finish(launcher: _Launcher, plan: VideoPlan, runs: list[RunOutcome], started: float,
            extra_tags: dict[str, str]) -> RenderReport:
    """Assemble if every run so far succeeded; the report either way."""
    if any(not r.success for r in runs):
        return RenderReport(plan.video_id, plan, runs, None, time.monotonic() - started)
    pipeline: PipelineResource = launcher.defs.resources["pipeline"]
    assembled = assemble(launcher, plan, pipeline, extra_tags)
    if assembled.note or not assembled.run_id:  # not a run of ours: launcher.run did not report it
        launcher.notify(assembled.name, assembled)
    runs.append(assembled)
    return RenderReport(plan.video_id, plan, runs, assembled.outputs.get("final_video"), time.monotonic() - started)


def up_to_date_report(instance: dg.DagsterInstance, pipeline: PipelineResource, submission: Submission,
                      started: float) -> RenderReport | None:
    """A report from stored manifests if ``submission``'s video is up to date (``planner.up_to_date``:
    its plan is of this version, its final video newer than every real segment and the music, and
    the published video is there: ``PipelineResource.is_published``, the S3 object or the local
    file, so any machine can tell); else None."""
    video_id = submission.video_id
    status = video_status(instance, pipeline.manifests_dir, video_id)
    final = read_manifest(pipeline.manifests_dir, "final_video", video_id)
    if not up_to_date(status, final, submission, pipeline.is_published):
        return None
    sets = [read_manifest(pipeline.manifests_dir, "chunk_videos", str(segment_partition_key(video_id, b.index)))
            for b in status.plan.beats]
    return RenderReport(video_id, status.plan, [], final, time.monotonic() - started,
                        up_to_date=True, stored_chunk_sets=[c for c in sets if c is not None])


def render_video(spec_path: str | Path, *, defs: dg.Definitions, instance: dg.DagsterInstance,
                 provider: str | None = None, models: dict[str, str] | None = None, max_parallel: int = 2,
                 force: bool = False, on_run: Callable[[str, RunOutcome | None], None] | None = None,
                 on_plan: Callable[[VideoPlan], None] | None = None,
                 on_wait: Callable[[str], None] | None = None) -> RenderReport:
    """Register ``spec_path`` and materialize its whole graph. Raises SpecError for an invalid spec
    or model choice, ValueError for an unknown provider.

    Registration (``PipelineResource.submit_spec``): ``provider`` / ``models`` are explicit choices
    (``--provider``, ``--video-model`` ...); None leaves them to the spec and the deployment's
    defaults (``submissions.resolve_provider``). When the registered version was rendered before
    and its final video is up to date, nothing runs (``report.up_to_date``) unless ``force``; a
    forced rerun re-materializes everything from the cache. ``on_run(name, None)`` is called when
    a run starts and ``on_run(name, outcome)`` when it ends. Segment runs and the music run share
    ``max_parallel`` worker processes. A render of a video another process is rendering waits for
    it (``video_lock``; ``on_wait`` is told, and told of any run the assembly waits for).
    """
    started = time.monotonic()
    pipeline: PipelineResource = defs.resources["pipeline"]
    spec = load_spec(spec_path)
    with video_lock(pipeline.workspace, spec.video_id, on_wait):
        submission, changed = pipeline.submit_spec(spec, source=str(spec_path), provider=provider, models=models,
                                                   registered_by=str(ProcessIdentity.current()))
        add_partitions(instance, videos, [submission.video_id])
        if not changed and not force:
            report = up_to_date_report(instance, pipeline, submission, started)
            if report is not None:
                return report
        launcher = _Launcher(defs, instance, on_run, on_wait)
        planned = launcher.run(plan_run(submission))
        if not planned.success:
            return RenderReport(submission.video_id, None, [planned], None, time.monotonic() - started)
        plan: VideoPlan = planned.outputs["video_spec"]
        if on_plan:
            on_plan(plan)
        ensure_plan_partitions(instance, plan)  # segment keys, and the phantoms they make recorded
        runs = [planned, *launcher.run_parallel(fanout_runs(plan, "cli"), max_parallel)]
        return _finish(launcher, plan, runs, started, {})


def retry_video(video_id: str, *, defs: dg.Definitions, instance: dg.DagsterInstance, max_parallel: int = 2,
                on_run: Callable[[str, RunOutcome | None], None] | None = None,
                on_wait: Callable[[str], None] | None = None) -> RenderReport:
    """Re-materialize only the failed, missing or stale real segments of ``video_id`` (and its
    music if it failed or is missing), then assemble it once for its state (``assemble``: when the
    daemon assembles the same state, this waits for that run instead). Segments and music that
    another run is rendering are waited for, not rendered twice. Raises LookupError if the video
    was never planned."""
    started = time.monotonic()
    pipeline: PipelineResource = defs.resources["pipeline"]
    if not re.fullmatch(VIDEO_ID_PATTERN.strip("^$"), video_id):
        raise LookupError(f"{video_id!r} is not a video id (expected {VIDEO_ID_PATTERN})")
    with video_lock(pipeline.workspace, video_id, on_wait):
        status = video_status(instance, pipeline.manifests_dir, video_id)
        if status.plan is None:
            raise LookupError(f"video {video_id!r} has no materialized video_spec; render or submit its spec first")
        retry = {RETRY_TAG: "cli"}
        launcher = _Launcher(defs, instance, on_run, on_wait)
        redo_music = status.video_assets.get("music") in ("failed", "missing", "stale")
        runs = launcher.run_parallel(fanout_runs(status.plan, "cli", segments=status.failed_or_missing,
                                                 music=redo_music, **retry), max_parallel)
        return _finish(launcher, status.plan, runs, started, retry)
