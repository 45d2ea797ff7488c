"""Whole runs on Celery workers (a cluster): dagster-celery's ``CeleryRunLauncher`` with a run
worker health check that notices a worker that died, and the worker-side hook that names, on
each run, the worker and the process executing it.

**What stock dagster-celery does when a worker dies** (dagster-celery 0.29.27, Celery 5, Redis):
a run is one Celery task (``execute_job``, ``track_started``), acknowledged when it starts
(``task_acks_late`` off), so a killed worker's task is never redelivered. Run monitoring asks
``CeleryRunLauncher.check_run_worker_health``, which reads the task's state in the result
backend: STARTED is "running", FAILURE "failed".

- Only the process executing the run dies (SIGKILL, OOM): the worker's main process records
  the task as FAILURE (``WorkerLostError``); run monitoring marks the run failed and
  ``run_retries`` launches a new run. This works with the stock launcher.
- The whole worker dies (machine lost, container killed, SIGKILL to its process group):
  nobody records anything, the task stays STARTED in the backend forever, and the stock check
  says RUNNING forever: **the run hangs**, and so does the video.
- Any state the check cannot read (PENDING: e.g. the ``rpc://`` result backend, whose state
  only the sender sees) is UNKNOWN, which run monitoring treats as a dead worker: every STARTED
  run would be failed. A shared result backend (Redis) is required.

``PipelineCeleryRunLauncher`` closes the second gap: for a STARTED task it pings the worker that
started it (its hostname is in the task's STARTED state) through the broker; a worker that has
not answered for ``worker_lost_grace_seconds`` is lost, and the run is reported FAILED (then
retried by ``run_retries``; finished steps and paid predictions are reused). Within the grace
period the run counts as running, so one slow answer does not fail a run.

**Tags written by two processes.** Dagster's run storage rewrites a run's whole record (its tags
included) from what it read a moment before, in ``add_run_tags`` and when it applies a run event:
two processes that write one run at once can lose a tag. Stock dagster-celery's launcher tags the
run with its task id *after* queueing the task, while the worker already starts the run, so the
tag can be lost (seen here: the run then had no task id, run monitoring reported it failed while
it ran, and Dagster could not retry it). Here the task of a run is given the run's id as its
Celery task id, so the health check needs no tag; and the worker hook below waits for the
launcher's tag before writing its own, so neither is lost.

**Worker hook.** Start workers with ``-i pipeline.orchestration.celery_runs`` (dagster-celery's
``--includes``): before a run task executes, ``tag_run_with_worker`` tags the run with
``pipeline/celery_worker`` (the worker's Celery hostname, e.g. ``worker-a@host``) and
``pipeline/owner`` (``host:pid:start`` of the process executing it, as every run of this project
has), so the runs list shows where each run executes, and ``pipeline status`` on that host can
tell a dead run from a live one. It first waits (at most ``LAUNCHER_TAG_WAIT_S``) until the run
shows the launcher's task id tag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from dagster import Field
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClassData
from dagster_celery.config import TASK_EXECUTE_JOB_NAME
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

log = logging.getLogger("pipeline.celery_runs")

WORKER_TAG = "pipeline/celery_worker"
"""Run tag: the Celery hostname (``name@host``) of the worker executing the run."""
OWNER_TAG = "pipeline/owner"
"""Run tag: ``host:pid:start`` of the process executing the run (``pipeline.orchestration.launcher``)."""
RUN_TASKS = ("execute_job", "resume_job")
"""dagster-celery's whole-run task names (``dagster_celery.config``)."""
LAUNCHER_TAG_WAIT_S = 15.0
"""How long the worker hook waits for the launcher's task id tag before tagging anyway."""


def run_task_id(run_id: str) -> str:
    """The Celery task id of run ``run_id``'s ``execute_job`` task: the run id itself."""
    return run_id


class PipelineCeleryRunLauncher(CeleryRunLauncher):
    """``CeleryRunLauncher`` (same config: ``broker``, ``backend``, ``default_queue``, ``include``,
    ``config_source``) whose health check fails the run of a worker that stopped answering (see
    the module docstring). Extra config:

    - ``worker_lost_grace_seconds`` (default 30): how long a worker may not answer pings before
      its STARTED runs are reported FAILED.
    - ``ping_timeout_seconds`` (default 2): how long one ping waits for the worker's answer.

    Raises DagsterInvariantViolationError at start when the effective result backend is
    ``rpc://`` (run monitoring could not read any task's state)."""

    def __init__(self, default_queue: str, broker: str | None = None, backend: str | None = None,
                 include: list[str] | None = None, config_source: dict | None = None,
                 inst_data: ConfigurableClassData | None = None, worker_lost_grace_seconds: float = 30.0,
                 ping_timeout_seconds: float = 2.0):
        super().__init__(default_queue, broker=broker, backend=backend, include=include,
                         config_source=config_source, inst_data=inst_data)
        effective = str(self.celery.conf.result_backend or "")
        if effective.startswith("rpc"):
            raise DagsterInvariantViolationError(
                f"PipelineCeleryRunLauncher needs a result backend every process can read (e.g. redis://...), "
                f"not {effective!r}: run monitoring reads each run's task state there. Set run_launcher.config."
                "backend or $CELERY_RESULT_BACKEND.")
        self.worker_lost_grace_seconds = float(worker_lost_grace_seconds)
        self.ping_timeout_seconds = float(ping_timeout_seconds)
        self._lock = threading.Lock()
        self._silent_since: dict[str, float] = {}
        """Worker hostname -> when it first failed to answer a ping (monotonic seconds)."""
        self._answered: dict[str, float] = {}
        """Worker hostname -> when it last answered (monotonic), to ping each worker once per pass."""

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {**CeleryRunLauncher.config_type(),
                "worker_lost_grace_seconds": Field(float, is_required=False, default_value=30.0,
                                                   description="Seconds a worker may not answer pings before "
                                                               "its runs are reported failed."),
                "ping_timeout_seconds": Field(float, is_required=False, default_value=2.0,
                                              description="Seconds one ping waits for a worker's answer.")}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData,  # type: ignore[override]
                          config_value: Mapping[str, Any]) -> "PipelineCeleryRunLauncher":
        return cls(inst_data=inst_data, **config_value)

    def _launch_celery_task_run(self, run: DagsterRun, task_signature, routing_key: str) -> None:
        """dagster-celery's launch (dagster-celery 0.29.27, private), with the run's id as the
        Celery task id of its ``execute_job`` task (``run_task_id``), so the task is known
        without the tag the launcher writes afterwards (see the module docstring)."""
        if routing_key == TASK_EXECUTE_JOB_NAME:
            task_signature = task_signature.set(task_id=run_task_id(run.run_id))
        super()._launch_celery_task_run(run, task_signature, routing_key)

    def worker_answers(self, hostname: str) -> bool:
        """Whether the Celery worker ``hostname`` answers a ping through the broker within
        ``ping_timeout_seconds`` (an answer is remembered for 1 s, so one monitoring pass pings
        each worker once). Never raises: a broker error counts as no answer."""
        now = time.monotonic()
        with self._lock:
            if now - self._answered.get(hostname, float("-inf")) < 1.0:
                return True
        try:
            replies = self.celery.control.ping(destination=[hostname], timeout=self.ping_timeout_seconds, limit=1)
        except Exception as exc:  # noqa: BLE001 - the broker itself may be unreachable
            log.warning("could not ping Celery worker %s: %s", hostname, exc)
            replies = []
        answered = any(hostname in reply for reply in replies or [])
        with self._lock:
            if answered:
                self._answered[hostname] = time.monotonic()
                self._silent_since.pop(hostname, None)
            else:
                self._silent_since.setdefault(hostname, now)
        return answered

    def silent_for(self, hostname: str) -> float:
        """Seconds since ``hostname`` first failed to answer (0.0 if it answered last time)."""
        with self._lock:
            since = self._silent_since.get(hostname)
        return 0.0 if since is None else time.monotonic() - since

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """SUCCESS / FAILED for a finished task (FAILED names Celery's reason, e.g. the executing
        process was lost); for a STARTED task RUNNING while its worker answers pings (or has been
        silent for less than ``worker_lost_grace_seconds``), FAILED once it has not answered for
        longer; UNKNOWN for any other state (PENDING, RETRY). The task is the run's tag, else the
        run's own id (``run_task_id``)."""
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG) or run_task_id(run.run_id)
        result = self.celery.AsyncResult(task_id)
        state = result.state
        if state == "SUCCESS":
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        if state == "FAILURE":
            return CheckRunHealthResult(WorkerStatus.FAILED, f"Celery task {task_id} failed: {result.info!r}")
        if state == "REVOKED":
            return CheckRunHealthResult(WorkerStatus.FAILED, f"Celery task {task_id} was revoked")
        if state != "STARTED":
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"Celery task {task_id} is {state}")
        info = result.info if isinstance(result.info, dict) else {}
        hostname = info.get("hostname")
        if not hostname:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"Celery task {task_id} started on an unnamed worker")
        worker = f"{hostname} (pid {info.get('pid')})"
        if self.worker_answers(hostname):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=worker)
        silent = self.silent_for(hostname)
        if silent < self.worker_lost_grace_seconds:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"Celery worker {hostname} has not answered for "
                                        f"{silent:.0f} s", run_worker_id=worker)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"Celery worker {hostname} executing task {task_id} has not answered pings for "
            f"{silent:.0f} s (more than {self.worker_lost_grace_seconds:g} s): it is gone (killed, or its machine "
            "was lost)", run_worker_id=worker)


# --- the worker side ----------------------------------------------------------------------------

_instances: dict[str, Any] = {}
"""One Dagster instance per DAGSTER_HOME in a worker process, reused across its tasks."""


def _worker_instance():
    import os

    from dagster import DagsterInstance

    home = os.environ.get("DAGSTER_HOME", "")
    if home not in _instances:
        _instances[home] = DagsterInstance.get()
    return _instances[home]


def tag_run_with_worker(task_name: str, task_id: str, run_args_packed: Any, hostname: str,
                        wait_s: float = LAUNCHER_TAG_WAIT_S) -> str | None:
    """Tag the run of a whole-run task (``execute_job`` / ``resume_job``, Celery task ``task_id``)
    with ``WORKER_TAG`` = ``hostname`` and ``OWNER_TAG`` = this process, once the run shows the
    launcher's task id tag (waiting at most ``wait_s`` seconds; then the task id tag is written
    too). Returns the run id (None for other tasks). Errors are logged, never raised: the run
    executes untagged rather than not at all."""
    if task_name not in RUN_TASKS or not run_args_packed:
        return None
    try:
        from dagster._serdes import unpack_value

        from pipeline.procs import ProcessIdentity

        run_id = unpack_value(run_args_packed).run_id
        instance = _worker_instance()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            run = instance.get_run_by_id(run_id)
            if run is None or run.tags.get(DAGSTER_CELERY_TASK_ID_TAG) == task_id:
                break
            time.sleep(0.05)
        instance.add_run_tags(run_id, {DAGSTER_CELERY_TASK_ID_TAG: task_id, WORKER_TAG: hostname,
                                       OWNER_TAG: str(ProcessIdentity.current())})
        return run_id
    except Exception:  # noqa: BLE001 - tags are informational
        log.exception("could not tag the run of task %s with its worker %s", task_name, hostname)
        return None


def _connect_worker_signals() -> None:
    from celery.signals import task_prerun

    @task_prerun.connect(weak=False)
    def _on_task_prerun(sender=None, task_id=None, task=None, kwargs=None, **_: Any) -> None:
        name = getattr(task or sender, "name", "")
        tag_run_with_worker(name, task_id or "", (kwargs or {}).get("execute_job_args_packed"),
                            getattr(getattr(task or sender, "request", None), "hostname", "") or "")


_connect_worker_signals()
