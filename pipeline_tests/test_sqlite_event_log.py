"""FastSqliteEventLogStorage (pipeline.orchestration.sqlite_event_log): the same files and events as
Dagster's SqliteEventLogStorage, with engines kept per shard and a cheap ``_initdb``."""

from __future__ import annotations

import os
import sqlite3

import dagster as dg

from pipeline.orchestration import sqlite_event_log
from pipeline.orchestration.sqlite_event_log import FastSqliteEventLogStorage
from pipeline_tests.dagster_services import write_instance_yaml


@dg.op
def noop():
    return 1


@dg.job
def noop_job():
    noop()


def _alembic_revision(path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_runs_beyond_the_engine_cache_and_in_a_forked_child_keep_every_event(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_event_log, "ENGINE_CACHE_SIZE", 3)
    write_instance_yaml(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, FastSqliteEventLogStorage)
        runs = [noop_job.execute_in_process(instance=instance).run_id for _ in range(6)]
        assert len(storage._engines) <= 3  # evicted engines were disposed, the runs stay readable
        pid = os.fork()
        if pid == 0:  # a forked worker writes to a shard the parent has an engine for
            code = 0
            try:
                instance.report_engine_event("from the child", instance.get_run_by_id(runs[-1]))
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for run_id in runs:
            types = [e.dagster_event.event_type_value for e in instance.all_logs(run_id) if e.dagster_event]
            assert types[0] == "PIPELINE_START" and "PIPELINE_SUCCESS" in types  # RUN_START, RUN_SUCCESS
        assert any("from the child" in (e.message or "") for e in instance.all_logs(runs[-1]))

        # every new run file is stamped with the head revision, as Dagster's own _initdb stamps it
        run_files = [p for p in (tmp_path / "home").rglob("*.db") if p.stem in runs]
        assert len(run_files) == 6
        head = _script_head()
        assert {_alembic_revision(p) for p in run_files} == {head}


def _script_head() -> str:
    return sqlite_event_log._script_directory().get_current_head()


def test_a_found_dynamic_partition_is_trusted_briefly_and_a_deleted_one_is_forgotten(tmp_path, monkeypatch):
    write_instance_yaml(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        storage = instance.event_log_storage
        assert not instance.has_dynamic_partition("videos", "a")
        instance.add_dynamic_partitions("videos", ["a"])
        assert instance.has_dynamic_partition("videos", "a")  # an absent key is asked again, not cached
        queries = []
        real = sqlite_event_log.SqliteEventLogStorage.has_dynamic_partition
        monkeypatch.setattr(sqlite_event_log.SqliteEventLogStorage, "has_dynamic_partition",
                            lambda self, *a: queries.append(a) or real(self, *a))
        for _ in range(20):
            assert instance.has_dynamic_partition("videos", "a")
        assert queries == []  # answered from the cache
        instance.delete_dynamic_partition("videos", "a")
        assert not instance.has_dynamic_partition("videos", "a")
        # another process's deletion is seen once the entry expires
        instance.add_dynamic_partitions("videos", ["b"])
        assert instance.has_dynamic_partition("videos", "b")
        other = dg.DagsterInstance.from_config(str(tmp_path / "home"))
        other.delete_dynamic_partition("videos", "b")
        other.dispose()
        assert instance.has_dynamic_partition("videos", "b")  # still trusted
        monkeypatch.setattr(sqlite_event_log, "DYNAMIC_PARTITION_TTL_S", 0.0)
        storage._partitions_seen.clear()
        assert not instance.has_dynamic_partition("videos", "b")
