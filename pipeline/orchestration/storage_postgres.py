"""Postgres instance storage for a cluster: Dagster's ``storage: postgres`` (dagster-postgres) with
the repository's run-first event ordering, and an optional connection pool.

**Run events first.** ``RunFirstPostgresEventLogStorage`` is dagster-postgres' event log storage
with ``RunFirstEventLogMixin`` (``pipeline.orchestration.storage``): a run event (RUN_FAILURE, ...)
is stored only after the run record shows it, so Dagster's run-retry daemon never skips the retry
of a crashed run. ``RunFirstPostgresStorage`` is ``DagsterPostgresStorage`` with that event log.

**Connections.** dagster-postgres builds every storage's SQLAlchemy engine with ``NullPool``: each
operation opens a new connection (a TCP handshake, authentication and a new server process) and
closes it afterwards. A run stores dozens of events, and each run event also reads and updates
the run, so one run opens hundreds of connections; the daemon's loops open more every second.
Only ``dagster-webserver`` pools (``optimize_for_webserver``: ``pool_size`` 1 per storage, its
``--db-pool-max-overflow`` / ``--db-pool-recycle`` flags). And every open of an instance checks
each storage's tables (two connections each), which processes do all the time: a code server
opens an instance for every sensor tick, a Celery worker for every run.

With ``pool`` configured, ``RunFirstPostgresStorage`` gives the run, event log and schedule
storages of every instance a process opens on one database one shared pooled engine
(``shared_engine``: ``pool_size`` connections kept open, up to ``max_overflow`` more while busy,
each replaced after ``pool_recycle`` seconds; ``pool_pre_ping`` checks a connection before use, so
a Postgres restart costs no failed query), and checks the tables once per process. The pool
lives as long as the process (a forked child makes its own); each process holds at most
``pool_size`` idle connections.

Config (dagster.yaml), ``pool`` optional::

    storage:
      custom:
        module: pipeline.orchestration.storage_postgres
        class: RunFirstPostgresStorage
        config:
          postgres_db:
            hostname: {env: DAGSTER_PG_HOST}
            username: {env: DAGSTER_PG_USER}
            password: {env: DAGSTER_PG_PASSWORD}
            db_name: {env: DAGSTER_PG_DB}
            port: 5432
            scheme: postgresql+psycopg2   # SQLAlchemy 2.1 maps postgresql:// to psycopg 3
          pool: {pool_size: 2, max_overflow: 8, pool_recycle: 1800}

The ``scheme`` matters: dagster-postgres builds ``postgresql://`` URLs, which SQLAlchemy 2.1 hands
to psycopg (3), not installed with dagster-postgres (it depends on psycopg2-binary). A
``postgres_url`` without ``+psycopg2`` gets it added (``psycopg2_url``) for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy as db
from dagster import Field, Shape
from dagster import _check as check
from dagster._config.config_schema import UserConfigSchema
from dagster._core.storage.base_storage import DagsterStorage
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.storage import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_config, pg_url_from_config

from pipeline.orchestration.storage import RunFirstEventLogMixin

POOL_DEFAULTS = {"pool_size": 2, "max_overflow": 8, "pool_recycle": 1800, "pool_pre_ping": True}
"""A process of the cluster (daemon, webserver, a run) keeps at most 2 idle connections and opens
at most 10 at once; connections are recycled after 30 minutes."""


def psycopg2_url(url: str) -> str:
    """``url`` with the ``postgresql+psycopg2`` driver when it names none (``postgresql://`` or
    ``postgres://``); other URLs unchanged."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare):]
    return url


class RunFirstPostgresEventLogStorage(RunFirstEventLogMixin, PostgresEventLogStorage):
    """dagster-postgres' event log storage, except that a run event is applied to the run record
    before the event is stored (``RunFirstEventLogMixin``). Same tables and config as
    ``PostgresEventLogStorage``."""


def _pool_config() -> Field:
    return Field(Shape({
        "pool_size": Field(int, is_required=False, default_value=POOL_DEFAULTS["pool_size"],
                           description="Connections kept open per process."),
        "max_overflow": Field(int, is_required=False, default_value=POOL_DEFAULTS["max_overflow"],
                              description="Connections opened beyond pool_size while busy (closed when returned)."),
        "pool_recycle": Field(int, is_required=False, default_value=POOL_DEFAULTS["pool_recycle"],
                              description="Seconds after which a pooled connection is replaced (-1: never)."),
        "pool_pre_ping": Field(bool, is_required=False, default_value=POOL_DEFAULTS["pool_pre_ping"],
                               description="Check a pooled connection before use (one round trip)."),
    }), is_required=False, description="Pool connections (default: dagster-postgres' NullPool, a "
                                       "connection per operation).")


class RunFirstPostgresStorage(DagsterPostgresStorage):
    """``storage: postgres`` (same config: ``postgres_url`` or ``postgres_db``, and the same
    tables) with ``RunFirstPostgresEventLogStorage`` as its event log storage, plus an optional
    ``pool`` (see the module docstring). Raises what dagster-postgres raises for an unreachable
    database (``DagsterPostgresException`` after its retries)."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider=None,
                 pool: Mapping[str, Any] | None = None):
        # DagsterPostgresStorage.__init__ with our event log storage in place of the stock one
        # (building both would cost the stock one's table check: two more connections per open).
        postgres_url = psycopg2_url(postgres_url)
        self.postgres_url = postgres_url
        self.should_autocreate_tables = check.bool_param(should_autocreate_tables, "should_autocreate_tables")
        self._inst_data = check.opt_inst_param(inst_data, "inst_data", ConfigurableClassData)
        self.pool = {**POOL_DEFAULTS, **pool} if pool is not None else None
        # With a pool, this process checks (and creates) the tables once per database, not at
        # every open of the instance (each check costs two connections per storage).
        check_tables = should_autocreate_tables and (self.pool is None or postgres_url not in _TABLES_CHECKED)
        self._run_storage = PostgresRunStorage(postgres_url, check_tables, token_provider=token_provider)
        self._event_log_storage = RunFirstPostgresEventLogStorage(postgres_url, check_tables,
                                                                  token_provider=token_provider)
        self._schedule_storage = PostgresScheduleStorage(postgres_url, check_tables, token_provider=token_provider)
        DagsterStorage.__init__(self)
        if self.pool is not None:
            _TABLES_CHECKED.add(postgres_url)
            # One engine per process for the three storages of every instance opened on this
            # database: their queries share its connections.
            engine = shared_engine(postgres_url, token_provider, self.pool)
            for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
                storage._engine.dispose()
                storage._engine = engine

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {**pg_config(), "pool": _pool_config()}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,  # type: ignore[override]
                          config_value: Mapping[str, Any]) -> "RunFirstPostgresStorage":
        return cls(psycopg2_url(pg_url_from_config(config_value)),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data, token_provider=get_token_provider_from_config(config_value),
                   pool=config_value.get("pool"))


_TABLES_CHECKED: set[str] = set()
"""Databases whose tables this process has checked (pooled storages only)."""
_ENGINES: dict[tuple, db.engine.Engine] = {}
"""This process's pooled engines, per (URL, pool settings)."""
_INHERITED: list[db.engine.Engine] = []
"""Engines of the parent process, after a fork: kept referenced and never used, so the child
neither uses nor closes (garbage collection would) the parent's connections."""


def shared_engine(postgres_url: str, token_provider, pool: Mapping[str, Any]) -> db.engine.Engine:
    """The pooled SQLAlchemy engine of this process for ``postgres_url`` with ``pool`` settings
    (``pool_size``, ``max_overflow``, ``pool_recycle``, ``pool_pre_ping``), made on first use. It
    lives as long as the process: instances opened and disposed one after another (a sensor
    tick, a run) reuse its connections instead of opening new ones. A forked child makes its own.
    With a token provider (cloud IAM auth) every call makes a new engine."""
    key = (postgres_url, tuple(sorted(pool.items())))
    engine = _ENGINES.get(key) if token_provider is None else None
    if engine is None:
        engine = create_pg_engine(postgres_url, token_provider, isolation_level="AUTOCOMMIT",
                                  poolclass=db.pool.QueuePool, **pool)
        if token_provider is None:
            _ENGINES[key] = engine
    return engine


def _forget_parent_engines() -> None:
    _INHERITED.extend(_ENGINES.values())
    _ENGINES.clear()


os.register_at_fork(after_in_child=_forget_parent_engines)
