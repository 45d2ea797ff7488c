"""The instance storage (pipeline.orchestration.storage): a run event is visible to readers of the
event log only after the run record shows it, so Dagster's run-retry daemon never reads a
RUN_FAILURE for a run that still looks STARTED (and skips its retry for good).

The stock ``storage: sqlite`` case is kept as a control: it shows the window this storage closes,
and fails (telling us to drop the workaround) once Dagster orders the writes itself."""

from __future__ import annotations

import dagster as dg
import pytest

from dagster._core.storage.tags import WILL_RETRY_TAG
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry
from pipeline.orchestration.storage import RunFirstSqliteEventLogStorage, RunFirstSqliteStorage
from pipeline_tests.dagster_services import write_instance_yaml


@dg.op
def boom():
    raise RuntimeError("boom")


@dg.job
def boom_job():
    boom()


def _failure_events(instance: dg.DagsterInstance) -> list:
    return list(instance.event_log_storage.get_logs_for_all_runs_by_log_id(
        after_cursor=-1, dagster_event_type=dg.DagsterEventType.RUN_FAILURE).values())


def _watch_run_updates(instance: dg.DagsterInstance, seen: list) -> None:
    """Record, each time the run storage applies a RUN_FAILURE, how many RUN_FAILURE events a reader
    of the event log could already see."""
    storage = instance.run_storage
    original = storage.handle_run_event

    def handle_run_event(run_id, event, update_timestamp=None):
        if event.is_run_failure:
            seen.append(len(_failure_events(instance)))
        return original(run_id, event, update_timestamp)

    storage.handle_run_event = handle_run_event


@pytest.mark.parametrize("storage", ["repository", "stock sqlite"])
def test_a_failure_event_is_visible_only_after_the_run_record_shows_it(tmp_path, storage):
    overrides = {"storage": {"sqlite": {}}} if storage == "stock sqlite" else None
    write_instance_yaml(tmp_path / "home", overrides)
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        uses_ours = isinstance(instance.event_log_storage, RunFirstSqliteEventLogStorage)
        assert uses_ours == (storage == "repository")
        seen: list[int] = []
        _watch_run_updates(instance, seen)
        run = instance.create_run_for_job(boom_job)
        instance.report_run_failed(run, "the worker died")

        assert len(seen) == 1
        if uses_ours:
            assert seen == [0], "the RUN_FAILURE event was readable before the run was marked FAILURE"
        else:
            assert seen == [1], "stock Dagster now applies the run update first: drop RunFirstSqliteStorage"
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        assert failed.tags[WILL_RETRY_TAG] == "true"  # dagster.yaml: run_retries enabled, max_retries 2
        assert should_retry(failed, instance)
        [event] = _failure_events(instance)
        assert event.run_id == run.run_id and "the worker died" in event.message


@pytest.mark.parametrize("batch_size", ["0", "5"])  # Dagster's DAGSTER_EVENT_BATCH_SIZE: events stored in batches
def test_every_run_event_is_applied_exactly_once(tmp_path, monkeypatch, batch_size):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", batch_size)
    write_instance_yaml(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        applied: list[str] = []
        original = instance.run_storage.handle_run_event

        def handle_run_event(run_id, event, update_timestamp=None):
            applied.append(event.event_type_value)
            return original(run_id, event, update_timestamp)

        instance.run_storage.handle_run_event = handle_run_event
        result = boom_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        assert applied == ["PIPELINE_START", "PIPELINE_FAILURE"], applied
        record = instance.get_run_record_by_id(result.run_id)
        assert record.dagster_run.status == dg.DagsterRunStatus.FAILURE
        assert record.start_time and record.end_time and record.end_time >= record.start_time
        # A step failure is not retried (retry_on_asset_or_op_failure: false) and says so.
        assert record.dagster_run.tags[WILL_RETRY_TAG] == "false"


def test_the_storage_keeps_stock_sqlite_files_and_reopens_from_an_instance_ref(tmp_path):
    write_instance_yaml(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert instance.get_ref().storage_data.class_name == RunFirstSqliteStorage.__name__
        run = instance.create_run_for_job(boom_job)
        # Run workers rebuild the instance from its ref: the same storage class, the same files.
        with dg.DagsterInstance.from_ref(instance.get_ref()) as worker_instance:
            assert isinstance(worker_instance.event_log_storage, RunFirstSqliteEventLogStorage)
            worker_instance.report_run_failed(worker_instance.get_run_by_id(run.run_id), "from the worker")
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    history = tmp_path / "home" / "storage" / "history"  # the layout of `storage: sqlite`
    assert (history / "runs.db").is_file() and (history / "runs" / "index.db").is_file()
    assert (history / "runs" / f"{run.run_id}.db").is_file()
