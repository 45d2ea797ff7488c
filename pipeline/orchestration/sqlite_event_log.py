"""Dagster's SQLite event log storage without its per-event set-up costs.

``SqliteEventLogStorage`` (dagster 1.13.27) keeps one SQLite file per run plus an index file, and for
every event it stores:

- builds a new SQLAlchemy engine for the shard (``create_engine``, then the dialect's first-connect
  initialisation), opens one connection, commits and disposes of the engine;
- the first time a process touches a shard, runs ``_initdb``: it loads Dagster's whole alembic
  script directory (about 40 migration modules, executed from source) to learn the head revision,
  even when the file is already stamped, and stamps a new run file through ``alembic.command.stamp``,
  which loads the script directory again and runs its ``env.py``.

In a 40 s local render (9 runs, a few hundred events, forked workers and the CLI reading every
run's events) that was 19 % of all Python CPU samples, 7 % in ``_initdb`` alone
(py-spy, BENCHMARKS.md section 9). ``FastSqliteEventLogStorage`` changes only how the work is
done, never the files:

- one engine per shard per process (NullPool as before, so no connection outlives its
  transaction and nothing is shared across ``fork``), kept in a small LRU and disposed on eviction;
- ``has_table`` remembers the tables it found (Dagster opened a new engine and read the schema
  before every dynamic-partition lookup and every asset event);
- ``has_dynamic_partition`` trusts a partition it found for DYNAMIC_PARTITION_TTL_S (a step asked
  the database for every partition key of every input and output: another 5 %);
- ``_initdb`` asks the file for its alembic revision first (one ``SELECT``), exactly Dagster's
  test: a stamped file needs nothing. A new file gets Dagster's tables, WAL journaling and the head
  stamp written through alembic's ``MigrationContext.stamp`` with the script directory loaded once
  per process. Anything unexpected (a race on creation, an old file) falls back to Dagster's own
  ``_initdb``, which retries and migrates.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as db
from sqlalchemy.pool import NullPool

from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import get_alembic_config

DYNAMIC_PARTITION_TTL_S = 10.0
"""How long this process trusts that a dynamic partition it found still exists, seconds."""

ENGINE_CACHE_SIZE = 64
"""Engines kept per process (one per run file recently written or read; the index file's too)."""

@functools.cache
def _script_directory():
    """Dagster's event log alembic ScriptDirectory, loaded once per process."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(get_alembic_config(sqlite_event_log.__file__))


class FastSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with engines kept per shard and a cheap ``_initdb`` (module
    docstring). Same constructor, same files, same transactions and locks."""

    def __init__(self, *args, **kwargs):
        self._engines: OrderedDict[tuple[int, str], db.engine.Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._tables: set[str] = set()
        self._partitions_seen: dict[tuple[str, str], float] = {}
        super().__init__(*args, **kwargs)

    def _engine(self, shard: str) -> db.engine.Engine:
        """The shard's engine for this process (made on first use; the least recently used of more
        than ENGINE_CACHE_SIZE is disposed)."""
        with self._engines_lock:
            return self._engine_locked(shard)

    def _engine_locked(self, shard: str) -> db.engine.Engine:
        key = (os.getpid(), shard)
        engine = self._engines.get(key)
        if engine is not None:
            self._engines.move_to_end(key)
            return engine
        for stale in [k for k in self._engines if k[0] != key[0]]:  # inherited across fork: drop, never dispose
            del self._engines[stale]
        engine = db.create_engine(self.conn_string_for_shard(shard), poolclass=NullPool,
                                  connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        self._engines[key] = engine
        while len(self._engines) > ENGINE_CACHE_SIZE:
            _, old = self._engines.popitem(last=False)
            old.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def has_table(self, table_name: str) -> bool:
        """Whether the index file has ``table_name``. Dagster asks before every dynamic-partition
        lookup and asset event (a new engine and a schema query each time: 5 % of a local render's
        CPU); a table that exists is remembered for the life of this object (only ``wipe`` drops
        tables, and it forgets them)."""
        if table_name in self._tables:
            return True
        with self._engine(INDEX_SHARD_NAME).connect() as conn:
            present = bool(conn.dialect.has_table(conn, table_name))
        if present:
            self._tables.add(table_name)
        return present

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        """Whether the dynamic partition exists. A step checks every partition key of its inputs and
        outputs, one query each (dozens per segment run); a key found is trusted for
        DYNAMIC_PARTITION_TTL_S seconds in this process (deleting a partition here forgets it; a
        deletion by another process is seen within that time). Absent keys are always asked again."""
        key = (partitions_def_name, partition_key)
        now = time.monotonic()
        if self._partitions_seen.get(key, 0.0) > now:
            return True
        present = super().has_dynamic_partition(partitions_def_name, partition_key)
        if present:
            self._partitions_seen[key] = now + DYNAMIC_PARTITION_TTL_S
        return present

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        self._partitions_seen.pop((partitions_def_name, partition_key), None)
        super().delete_dynamic_partition(partitions_def_name, partition_key)

    def wipe(self) -> None:
        self._tables.clear()
        self._partitions_seen.clear()
        super().wipe()

    def _initdb(self, engine: db.engine.Engine, for_index_shard: bool = False) -> None:
        from alembic.runtime.migration import MigrationContext

        try:
            with engine.connect() as conn:
                if MigrationContext.configure(conn).get_current_revision():
                    return  # stamped: Dagster's _initdb would do nothing either
                if for_index_shard or db.inspect(conn).get_table_names():
                    raise LookupError("not a new run file")  # old or half-made: Dagster's own path
                SqlEventLogStorageMetadata.create_all(conn)
                conn.execute(db.text("PRAGMA journal_mode=WAL;"))
                MigrationContext.configure(conn).stamp(_script_directory(), "head")
                conn.commit()
        except Exception:  # a race on creation, an unusual file: Dagster retries and migrates
            super()._initdb(engine, for_index_shard=for_index_shard)

    def dispose(self) -> None:
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
        super().dispose()
