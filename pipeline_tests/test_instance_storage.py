"""The instance storage (pipeline.orchestration.storage, and storage_postgres for a cluster): a run
event is visible to readers of the event log only after the run record shows it, so Dagster's
run-retry daemon never reads a RUN_FAILURE for a run that still looks STARTED (and skips its retry
for good). Every test runs on SQLite and on a private Postgres (skipped, with the reason, when
Postgres is not installed).

The stock ``storage: sqlite`` / ``storage: postgres`` cases are kept as controls: they show the
window this storage closes, and fail (telling us to drop the workaround) once Dagster orders the
writes itself. The pooled Postgres storage is measured too: connections opened for one run."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest

from dagster._core.storage.tags import WILL_RETRY_TAG
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry
from pipeline.orchestration.storage import RunFirstEventLogMixin, RunFirstSqliteEventLogStorage, RunFirstSqliteStorage
from pipeline_tests.cluster_services import ServiceMissing, pg_bin, private_postgres
from pipeline_tests.dagster_services import write_instance_yaml

POOL = {"pool_size": 1, "max_overflow": 2}
"""The pool of the pooled Postgres cases: at most 3 connections at once per process."""


@pytest.fixture(scope="module")
def postgres():
    """A private Postgres for this module (skipped with the reason if Postgres is not installed)."""
    try:
        pg_bin("initdb"), pg_bin("postgres")
    except ServiceMissing as exc:
        pytest.skip(str(exc))
    with private_postgres() as server:
        yield server


def storage_config(request, kind: str, pool: dict | None = None) -> tuple[dict | None, str | None]:
    """(``storage`` section of dagster.yaml, Postgres database name) for ``kind``: ``sqlite`` (the
    repository's, None: as dagster.yaml has it), ``stock sqlite``, ``postgres``
    (RunFirstPostgresStorage, with ``pool`` if given) or ``stock postgres``, each Postgres kind
    in a fresh database of the module's server."""
    if kind == "sqlite":
        return None, None
    if kind == "stock sqlite":
        return {"sqlite": {}}, None
    server = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    if kind == "stock postgres":
        return {"postgres": {"postgres_url": url}}, name
    config = {"postgres_url": url, **({"pool": pool} if pool is not None else {})}
    return {"custom": {"module": "pipeline.orchestration.storage_postgres", "class": "RunFirstPostgresStorage",
                       "config": config}}, name


def open_home(tmp_path, request, kind: str, pool: dict | None = None) -> str:
    """A DAGSTER_HOME (the repository's dagster.yaml with ``kind``'s storage); returns its path."""
    storage, _ = storage_config(request, kind, pool)
    write_instance_yaml(tmp_path / "home", {"storage": storage} if storage else None)
    return str(tmp_path / "home")


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


@pytest.mark.parametrize("storage", ["sqlite", "stock sqlite", "postgres", "stock postgres"])
def test_a_failure_event_is_visible_only_after_the_run_record_shows_it(tmp_path, request, storage):
    with dg.DagsterInstance.from_config(open_home(tmp_path, request, storage)) as instance:
        uses_ours = isinstance(instance.event_log_storage, RunFirstEventLogMixin)
        assert uses_ours == (not storage.startswith("stock"))
        seen: list[int] = []
        _watch_run_updates(instance, seen)
        run = instance.create_run_for_job(boom_job)
        instance.report_run_failed(run, "the worker died")

        assert len(seen) == 1
        if uses_ours:
            assert seen == [0], "the RUN_FAILURE event was readable before the run was marked FAILURE"
        else:
            assert seen == [1], "stock Dagster now applies the run update first: drop the RunFirst storages"
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        assert failed.tags[WILL_RETRY_TAG] == "true"  # dagster.yaml: run_retries enabled, max_retries 2
        assert should_retry(failed, instance)
        [event] = _failure_events(instance)
        assert event.run_id == run.run_id and "the worker died" in event.message


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
@pytest.mark.parametrize("batch_size", ["0", "5"])  # Dagster's DAGSTER_EVENT_BATCH_SIZE: events stored in batches
def test_every_run_event_is_applied_exactly_once(tmp_path, request, monkeypatch, batch_size, storage):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", batch_size)
    with dg.DagsterInstance.from_config(open_home(tmp_path, request, storage)) as instance:
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


@pytest.mark.parametrize("pool", [None, POOL], ids=["unpooled", "pooled"])
def test_the_postgres_storage_reopens_from_an_instance_ref(tmp_path, request, pool):
    from pipeline.orchestration.storage_postgres import RunFirstPostgresEventLogStorage, RunFirstPostgresStorage

    with dg.DagsterInstance.from_config(open_home(tmp_path, request, "postgres", pool)) as instance:
        assert instance.get_ref().storage_data.class_name == RunFirstPostgresStorage.__name__
        run = instance.create_run_for_job(boom_job)
        with dg.DagsterInstance.from_ref(instance.get_ref()) as worker_instance:
            assert isinstance(worker_instance.event_log_storage, RunFirstPostgresEventLogStorage)
            worker_instance.report_run_failed(worker_instance.get_run_by_id(run.run_id), "from the worker")
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE and failed.tags[WILL_RETRY_TAG] == "true"


def test_a_pooled_postgres_storage_opens_a_few_connections_per_run_not_one_per_operation(tmp_path, request):
    """One failing run (a job of one op, executed in process) on the stock connection-per-operation
    engines, then on the pooled storage. The instance was opened once before (``write_instance_yaml``
    creates the tables), as a worker process has by its second run: the pooled run reuses that
    process's connections; the stock one opens one per operation."""
    server = request.getfixturevalue("postgres")
    opened = {}
    for label, pool in (("unpooled", None), ("pooled", POOL)):
        storage, db_name = storage_config(request, "postgres", pool)
        home = tmp_path / label
        write_instance_yaml(home, {"storage": storage})
        before = server.connections(db_name)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            result = boom_job.execute_in_process(instance=instance, raise_on_error=False)
            assert not result.success
            assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.FAILURE
        opened[label] = server.connections(db_name) - before
    # Unpooled, opening the instance checks each storage's tables again (two connections each).
    assert opened["pooled"] <= POOL["max_overflow"], opened
    assert opened["unpooled"] > 5 * opened["pooled"], opened
    print(f"\nconnections opened for one failing run: {opened}")


def test_instances_opened_one_after_another_reuse_the_process_pool(tmp_path, request):
    """A code server opens an instance per sensor tick, a Celery worker one per run: with the pool,
    the second and later opens in a process check no tables and open no connection of their own."""
    server = request.getfixturevalue("postgres")
    storage, db_name = storage_config(request, "postgres", POOL)
    write_instance_yaml(tmp_path / "home", {"storage": storage})  # the first open: tables checked
    before = server.connections(db_name)
    for _ in range(5):
        with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
            instance.report_run_failed(instance.create_run_for_job(boom_job), "opened again")
    assert server.connections(db_name) - before <= POOL["max_overflow"]
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert len(instance.get_runs()) == 5


def test_a_forked_child_makes_its_own_pool(tmp_path, request):
    """A process forked after its parent pooled connections never shares them (one socket used by
    two processes corrupts both sessions): the child's queries run on another Postgres backend."""
    import os

    import sqlalchemy as sa

    from pipeline.orchestration.storage_postgres import shared_engine

    server = request.getfixturevalue("postgres")
    url = server.create_database(f"t_{uuid.uuid4().hex[:12]}")

    def backend_pid() -> int:
        with shared_engine(url, None, POOL).connect() as conn:
            return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()

    parent = backend_pid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, str(backend_pid()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_backend = int(pipe.read() or 0)
    os.waitpid(child, 0)
    assert child_backend and child_backend != parent
    assert backend_pid() == parent  # the parent's pooled connection still serves it
