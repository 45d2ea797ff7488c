"""``ForkServerRunLauncher``: a Dagster run launcher for one-machine deployments that starts every
run in a process forked from a warm fork server, instead of a fresh Python interpreter.

Why. Dagster's ``DefaultRunLauncher`` asks the code server to *spawn* a new interpreter per run,
which imports Dagster, pandas, av, boto3/dagster_aws, ... again: about 2.7 s of CPU per run, 9 runs
per video, on a 2-core machine. Here the daemon keeps one single-threaded fork server (Python's
``multiprocessing`` "forkserver" start method) that has imported those third-party modules once
(``set_forkserver_preload``); a run starts as a fork of it in milliseconds. The project's own
``pipeline`` modules are *not* preloaded: each run imports ``pipeline.definitions`` afresh, so an
edited asset is picked up by the next run, as with the default launcher.

What a run worker does: it leaves the daemon's session (``setsid``: a Ctrl-C or a SIGTERM to the
daemon's process group does not reach it) and executes the run exactly as ``dagster api
execute_run`` does (``dagster._cli.api._execute_run_command_body``, private API pinned by
``pipeline_tests/test_run_launcher.py`` for dagster 1.13.27) with interrupts captured, so a
terminate request (SIGINT/SIGTERM) ends the run CANCELED. The worker is not tied to the daemon's
life: a daemon restart leaves running runs running, and their events and compute logs go to the
instance as usual.

Liveness. The launcher tags each run ``pipeline/owner`` = ``str(ProcessIdentity)`` of its worker
(host:pid:start, see ``pipeline.procs``); the ``pipeline`` CLI tags the runs it executes in-process
the same way. ``check_run_worker_health`` reads the tag, so Dagster's run monitoring daemon marks a
run FAILED once its worker (daemon-launched or CLI) is gone while the run is still STARTING or
STARTED.

Fallbacks: the "spawn" start method where "forkserver" is not available (or when configured);
and Dagster's own gRPC launch path for a code location whose Python is not the daemon's (a fork
server can only fork the interpreter it runs in).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import Array, Field
from dagster import _check as check
from dagster._core.errors import DagsterInvariantViolationError, DagsterLaunchFailedError
from dagster._core.events import EngineEventData
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

from pipeline.orchestration import forkserver
from pipeline.orchestration.forkserver import DEFAULT_PRELOAD_MODULES
from pipeline.procs import ProcessIdentity, _start_ticks

if TYPE_CHECKING:
    from typing_extensions import Self

OWNER_TAG = "pipeline/owner"
"""Run tag: ``str(ProcessIdentity)`` (host:pid:start) of the process executing the run."""

START_METHODS = ("forkserver", "spawn")


def _identity_of(pid: int) -> ProcessIdentity:
    """The identity of local process ``pid`` (start time 0 if it is already gone)."""
    return ProcessIdentity(socket.gethostname(), pid, _start_ticks(pid) or 0)


def _run_worker(serialized_instance_ref: str, run_id: str) -> None:
    """Entry point of a run worker (in the forked or spawned child): execute run ``run_id`` like
    ``dagster api execute_run`` does, then exit (1 if the run failed, 0 otherwise)."""
    try:
        os.setsid()  # leave the daemon's session and process group: survive its restart and Ctrl-C
    except OSError:
        pass
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance import DagsterInstance, InstanceRef
    from dagster._serdes import deserialize_value
    from dagster._utils.interrupts import capture_interrupts

    with capture_interrupts():
        ref = deserialize_value(serialized_instance_ref, InstanceRef)
        with DagsterInstance.from_ref(ref) as instance:
            code = _execute_run_command_body(run_id, instance, lambda _event: None,
                                             set_exit_code_on_failure=True)
    sys.exit(code)


def _forget_child(proc: multiprocessing.process.BaseProcess) -> None:
    """Drop ``proc`` from multiprocessing's registry of children, which its exit handler joins
    (non-daemonic) or terminates (daemonic) when the launching process exits: a run worker must do
    neither when the daemon stops."""
    children = getattr(multiprocessing.process, "_children", None)
    if isinstance(children, set):
        children.discard(proc)


class ForkServerRunLauncher(RunLauncher, ConfigurableClass):
    """Launch each run in a process forked from a warm fork server (see the module docstring).

    Config (dagster.yaml ``run_launcher.config``), all optional:

    - ``start_method``: ``forkserver`` (default) or ``spawn`` (a fresh interpreter per run, still
      without the code server hop). ``forkserver`` falls back to ``spawn`` where the platform has
      no fork server.
    - ``preload_modules``: the modules the fork server imports once (default
      ``DEFAULT_PRELOAD_MODULES``); ``extra_preload_modules``: more, added to those.
    - ``terminate_timeout_seconds``: after a terminate request interrupts a worker, how long it
      may take to stop before it is killed (SIGKILL) and the run marked CANCELED (default 30).

    Raises ``DagsterLaunchFailedError`` from ``launch_run`` when the run has no code origin, or
    when the worker cannot be started.
    """

    def __init__(self, inst_data: ConfigurableClassData | None = None, *, start_method: str = "forkserver",
                 preload_modules: Sequence[str] | None = None, extra_preload_modules: Sequence[str] = (),
                 terminate_timeout_seconds: float = 30.0):
        self._inst_data = inst_data
        check.invariant(start_method in START_METHODS,
                        f"start_method must be one of {', '.join(START_METHODS)}, not {start_method!r}")
        if start_method == "forkserver" and not forkserver.available():
            start_method = "spawn"
        self.start_method = start_method
        base = DEFAULT_PRELOAD_MODULES if preload_modules is None else tuple(preload_modules)
        self.preload_modules = tuple(dict.fromkeys([*base, *extra_preload_modules]))
        self.terminate_timeout_seconds = float(terminate_timeout_seconds)
        self._lock = threading.Lock()
        self._workers: dict[str, tuple[multiprocessing.process.BaseProcess, ProcessIdentity]] = {}
        self._exit_codes: dict[str, int] = {}
        self._grpc_launcher: DefaultRunLauncher | None = None
        super().__init__()

    # --- ConfigurableClass -------------------------------------------------------------------

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "start_method": Field(str, is_required=False, default_value="forkserver",
                                  description="forkserver (default) or spawn."),
            "preload_modules": Field(Array(str), is_required=False,
                                     description="Modules the fork server imports once (replaces the default list)."),
            "extra_preload_modules": Field(Array(str), is_required=False, default_value=[],
                                           description="Modules added to the preload list."),
            "terminate_timeout_seconds": Field(float, is_required=False, default_value=30.0,
                                               description="Seconds an interrupted worker may take to stop "
                                                           "before it is killed."),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(inst_data=inst_data, **config_value)

    # --- launching ---------------------------------------------------------------------------

    def _context(self):
        return multiprocessing.get_context(self.start_method)

    def warm_up(self) -> float:
        """Start this process's fork server (``forkserver.warm_up`` with ``preload_modules``) if
        not done yet. Returns the seconds it took (0.0 when already warm or with spawn). Raises
        DagsterLaunchFailedError if it cannot start."""
        if self.start_method != "forkserver":
            return 0.0
        try:
            return forkserver.warm_up(self.preload_modules)
        except RuntimeError as exc:
            raise DagsterLaunchFailedError(str(exc)) from exc

    def fork_server_pid(self) -> int | None:
        """The pid of this process's fork server, if it runs (for diagnostics and tests)."""
        return forkserver.server_pid()

    def _same_interpreter(self, executable_path: str | None) -> bool:
        if not executable_path:
            return True
        return Path(executable_path).absolute().parent == Path(sys.executable).absolute().parent

    def launch_run(self, context: LaunchRunContext) -> None:
        """Start a worker for ``context.dagster_run`` (status STARTING), tag the run with the
        worker's identity and record an engine event. Raises DagsterLaunchFailedError if the run
        has no code origin or the worker cannot be started."""
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise DagsterLaunchFailedError(f"run {run.run_id} has no code origin; ForkServerRunLauncher cannot "
                                           "execute it")
        if not self._same_interpreter(origin.executable_path):
            self._instance.report_engine_event(
                f"The code location runs in {origin.executable_path}, not the daemon's Python "
                f"({sys.executable}): launching through its code server instead of the fork server.",
                run, cls=self.__class__)
            self._grpc().launch_run(context)
            return
        warm = self.warm_up()
        self._prune()
        started = time.monotonic()
        proc = self._context().Process(
            target=_run_worker, args=(serialize_value(self._instance.get_ref()), run.run_id),
            name=f"dagster-run-{run.run_id[:8]}", daemon=False)
        try:
            proc.start()
        except Exception as exc:  # noqa: BLE001 - surface as a launch failure, with the cause
            raise DagsterLaunchFailedError(f"could not start a run worker ({self.start_method}): {exc}") from exc
        _forget_child(proc)
        assert proc.pid is not None
        owner = _identity_of(proc.pid)
        with self._lock:
            self._workers[run.run_id] = (proc, owner)
        # The worker runs now: from here on nothing may raise (Dagster would report a launch
        # failure for a run that is executing). The tag is what run monitoring checks, so retry it.
        for attempt in range(5):
            try:
                self._instance.add_run_tags(run.run_id, {OWNER_TAG: str(owner)})
                break
            except Exception:  # noqa: BLE001 - e.g. SQLite "database is locked" under load
                if attempt == 4:
                    logging.getLogger(__name__).exception("could not tag run %s with its worker %s", run.run_id, owner)
                time.sleep(0.2 * (attempt + 1))
        how = "forked from the fork server" if self.start_method == "forkserver" else "spawned"
        extra = f"; the fork server started first, in {warm:.2f} s" if warm else ""
        try:
            self._instance.report_engine_event(
                f"Run worker {owner} {how} in {time.monotonic() - started:.3f} s{extra}.", run,
                EngineEventData(metadata={"pid": proc.pid, OWNER_TAG: str(owner)}),
                cls=self.__class__)
        except Exception:  # noqa: BLE001 - informational only
            logging.getLogger(__name__).exception("could not record the launch of run %s", run.run_id)

    def _grpc(self) -> DefaultRunLauncher:
        if self._grpc_launcher is None:
            self._grpc_launcher = DefaultRunLauncher()
            self._grpc_launcher.register_instance(self._instance)
        return self._grpc_launcher

    def _prune(self) -> None:
        """Forget workers that are gone (reaping them with spawn), keeping their exit codes. Liveness
        is the process's own (a fork server that died reports its children as ended)."""
        with self._lock:
            for run_id, (proc, owner) in list(self._workers.items()):
                if owner.is_alive() or proc.is_alive():  # is_alive(): its exit status not read yet
                    continue
                if proc.exitcode is not None:
                    self._exit_codes[run_id] = proc.exitcode
                proc.close()
                del self._workers[run_id]
            while len(self._exit_codes) > 1000:
                self._exit_codes.pop(next(iter(self._exit_codes)))

    def _exit_code(self, run_id: str) -> int | None:
        self._prune()
        return self._exit_codes.get(run_id)

    # --- run monitoring ----------------------------------------------------------------------

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """RUNNING while the run's ``pipeline/owner`` process lives; FAILED (with the reason) once it
        is gone and the run is still STARTING or STARTED; UNKNOWN when the run has no owner tag or
        its owner is on another host. Runs launched through a code server (no owner tag, a gRPC
        tag) are asked about on that server."""
        owner = ProcessIdentity.parse(run.tags.get(OWNER_TAG))
        if owner is None:
            if GRPC_INFO_TAG in run.tags:
                return self._grpc_health(run)
            return CheckRunHealthResult(
                WorkerStatus.UNKNOWN, f"run {run.run_id} has no {OWNER_TAG} tag: it was not started by this "
                "launcher or the pipeline CLI, so its worker cannot be checked")
        alive = owner.is_alive()
        if alive is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"the run worker {owner} is on another host than "
                                        f"{socket.gethostname()}; it cannot be checked from here",
                                        run_worker_id=str(owner))
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(owner))
        if run.status == DagsterRunStatus.SUCCESS:
            return CheckRunHealthResult(WorkerStatus.SUCCESS, run_worker_id=str(owner))
        return CheckRunHealthResult(WorkerStatus.FAILED, self._gone_message(run, owner), run_worker_id=str(owner))

    def _gone_message(self, run: DagsterRun, owner: ProcessIdentity) -> str:
        from dagster._utils import get_run_crash_explanation

        code = self._exit_code(run.run_id)
        prefix = f"The run worker {owner} (pid {owner.pid})"
        if code is not None:
            what = get_run_crash_explanation(prefix, code)
        else:
            what = (f"{prefix} is gone: it exited or was killed (SIGKILL, the OOM killer, a machine restart) "
                    "without finishing the run.")
        return f"{what} The run was still {run.status.value}."

    def _grpc_health(self, run: DagsterRun) -> CheckRunHealthResult:
        from dagster._grpc.types import GetCurrentRunsResult
        from dagster._serdes import deserialize_value

        client = self._grpc()._get_grpc_client_for_termination(run.run_id)  # noqa: SLF001
        if client is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no code server recorded for this run")
        try:
            current = deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs
        except Exception as exc:  # noqa: BLE001 - the server is gone: so is its run process
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the code server that launched this run is gone ({exc})")
        if run.run_id in current:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, "the code server that launched this run no longer runs it")

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs: bool | None = True) -> str | None:
        """One line: the worker's identity, whether it lives, its exit code if known."""
        owner = ProcessIdentity.parse(run.tags.get(OWNER_TAG))
        if owner is None:
            return None
        code = self._exit_code(run.run_id)
        return f"run worker {owner}: alive={owner.is_alive()}" + (f", exit code {code}" if code is not None else "")

    # --- terminating -------------------------------------------------------------------------

    def terminate(self, run_id: str) -> bool:
        """Cancel run ``run_id`` the way Dagster does: report CANCELING, then interrupt the worker
        (SIGINT; the run stops at the next interruptible point and ends CANCELED). A worker still
        alive ``terminate_timeout_seconds`` later is killed and the run marked CANCELED. Returns
        False when the run is unknown, finished, or its worker cannot be signalled from here."""
        check.str_param(run_id, "run_id")
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        owner = ProcessIdentity.parse(run.tags.get(OWNER_TAG))
        if owner is None and GRPC_INFO_TAG in run.tags:
            return self._grpc().terminate(run_id)
        self._instance.report_run_canceling(run)
        if owner is None:
            self._instance.report_engine_event(f"Cannot terminate run {run_id}: it has no {OWNER_TAG} tag, so its "
                                               "worker is unknown.", run, cls=self.__class__)
            return False
        alive = owner.is_alive()
        if alive is None:
            self._instance.report_engine_event(f"Cannot signal run worker {owner} from {socket.gethostname()}.",
                                               run, cls=self.__class__)
            return False
        if not alive:
            self._instance.report_run_canceled(run, f"Run worker {owner} was already gone; run marked canceled.")
            return True
        try:
            os.kill(owner.pid, signal.SIGINT)
        except ProcessLookupError:
            self._instance.report_run_canceled(run, f"Run worker {owner} was already gone; run marked canceled.")
            return True
        self._instance.report_engine_event(f"Sent SIGINT to run worker {owner} to cancel the run.", run,
                                           cls=self.__class__)
        threading.Thread(target=self._kill_if_stuck, args=(run_id, owner), daemon=True,
                         name=f"terminate-{run_id[:8]}").start()
        return True

    def _kill_if_stuck(self, run_id: str, owner: ProcessIdentity) -> None:
        """After an interrupt: wait up to ``terminate_timeout_seconds`` for the worker to exit,
        SIGKILL it if it did not, and mark the run CANCELED if the worker did not get to (it was
        killed, or the interrupt arrived before it started executing)."""
        deadline = time.monotonic() + self.terminate_timeout_seconds
        while owner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        killed = False
        if owner.is_alive():
            try:
                os.kill(owner.pid, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
            for _ in range(20):
                if not owner.is_alive():
                    break
                time.sleep(0.1)
        try:
            instance = self._instance
        except DagsterInvariantViolationError:  # the instance was disposed meanwhile (its process is ending)
            return
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        if killed:
            message = (f"Run worker {owner} did not stop within {self.terminate_timeout_seconds:g} s of the interrupt; "
                       "it was killed (SIGKILL).")
        else:
            message = f"Run worker {owner} exited without reporting the cancellation; run marked canceled."
        instance.report_run_canceled(run, message)

    def dispose(self) -> None:
        """Nothing to stop: run workers outlive the daemon by design, and the fork server exits by
        itself when this process does."""
