"""``PipelineCeleryRunLauncher``'s run worker health check against a real (private) Redis result
backend, without workers: a task state written as a worker would write it, and a worker hostname
that answers no ping. The whole path (real workers killed mid-run) is test_cluster.py's."""

from __future__ import annotations

import dagster as dg
import pytest

from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.launcher import WorkerStatus
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG
from pipeline.orchestration.celery_runs import PipelineCeleryRunLauncher, run_task_id
from pipeline_tests.cluster_services import ServiceMissing, private_redis


@pytest.fixture(scope="module")
def redis_server():
    try:
        with private_redis() as server:
            yield server
    except ServiceMissing as exc:
        pytest.skip(str(exc))


def launcher(redis_server, grace_s: float) -> PipelineCeleryRunLauncher:
    return PipelineCeleryRunLauncher("dagster", broker=redis_server.url(0), backend=redis_server.url(1),
                                     worker_lost_grace_seconds=grace_s, ping_timeout_seconds=0.5)


def run_with(tags: dict[str, str] | None = None, run_id: str = "3f8a1c1e-0000-4000-8000-000000000001") -> dg.DagsterRun:
    return dg.DagsterRun(job_name="render_segment", run_id=run_id, tags=tags or {})


def test_a_result_backend_no_other_process_can_read_is_refused(redis_server):
    with pytest.raises(DagsterInvariantViolationError, match="needs a result backend every process can read"):
        PipelineCeleryRunLauncher("dagster", broker=redis_server.url(0), backend="rpc://")


def test_finished_tasks_report_their_outcome(redis_server):
    runs = launcher(redis_server, 30.0)
    backend = runs.celery.backend
    backend.store_result("task-ok", 0, "SUCCESS")
    backend.store_result("task-lost", RuntimeError("Worker exited prematurely: signal 9 (SIGKILL)"), "FAILURE")
    assert runs.check_run_worker_health(run_with({DAGSTER_CELERY_TASK_ID_TAG: "task-ok"})).status == WorkerStatus.SUCCESS
    failed = runs.check_run_worker_health(run_with({DAGSTER_CELERY_TASK_ID_TAG: "task-lost"}))
    assert failed.status == WorkerStatus.FAILED and "signal 9" in failed.msg


def test_a_started_task_of_a_silent_worker_fails_after_the_grace_period(redis_server):
    run = run_with()  # no task id tag (the tag can be lost): the task id is the run id
    lenient, strict = launcher(redis_server, 3600.0), launcher(redis_server, 0.0)
    lenient.celery.backend.store_result(run_task_id(run.run_id), {"pid": 4242, "hostname": "ghost@nowhere"}, "STARTED")
    within_grace = lenient.check_run_worker_health(run)
    assert within_grace.status == WorkerStatus.RUNNING and "ghost@nowhere has not answered" in within_grace.msg
    lost = strict.check_run_worker_health(run)
    assert lost.status == WorkerStatus.FAILED, lost
    assert "Celery worker ghost@nowhere" in lost.msg and "has not answered pings" in lost.msg


def test_a_task_not_started_yet_is_unknown(redis_server):
    result = launcher(redis_server, 30.0).check_run_worker_health(run_with({DAGSTER_CELERY_TASK_ID_TAG: "queued"}))
    assert result.status == WorkerStatus.UNKNOWN and "PENDING" in result.msg
