"""Where the ledger's tables live: a SQLite file (one machine) or a PostgreSQL database (a cluster),
reached through SQLAlchemy Core so the ledger runs the same statements on both.

``LedgerDatabase.open(path_or_url)`` takes a filesystem path (SQLite, created with its parent
directory) or a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg2://user:pw@host/db``). A
bare ``postgresql://`` or ``postgres://`` URL is given the psycopg2 driver: SQLAlchemy 2.x would
pick psycopg 3 for it, which is not installed (psycopg2-binary is, as dagster-postgres uses it).

**Transactions.** ``transaction()`` is the one way to write, and every write transaction is
serialized with every other one on the same database, across processes and machines, so that
the budget check and the intent it admits happen as one step (no two processes can both see room
in a budget and both spend it) and a read-then-update of a job cannot interleave with another:

- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock at the start of the transaction
  (readers go on, in WAL mode). Connections use ``journal_mode=WAL`` and ``synchronous=FULL``,
  so a committed state survives a killed process, and wait up to 60 s for the lock.
- PostgreSQL: ``SELECT pg_advisory_xact_lock(LEDGER_LOCK_KEY)`` as the transaction's first
  statement: one fixed advisory lock per database, released at commit or rollback (also when the
  client dies: the server ends its transaction). The transaction runs at READ COMMITTED, set
  explicitly (a server default of REPEATABLE READ would take the snapshot at the lock statement,
  before the lock is granted, and miss the previous holder's commit); each later statement sees
  everything committed before the lock was granted. A table lock (``LOCK TABLE jobs IN EXCLUSIVE
  MODE``) would do the same, but only once the tables exist; the advisory lock also serializes
  creating and migrating them. Ledger writes are a few short transactions per paid call and per
  lease renewal (every ``lease_s / 3`` seconds per open job), so one lock is not a bottleneck.

Reads (``connect()``) take no lock: SQLite reads a snapshot (deferred ``BEGIN``), PostgreSQL
runs each statement in autocommit (one round trip, no BEGIN/ROLLBACK).

**Connections.** One engine per URL per process (``engine_for``). PostgreSQL connections are
pooled (QueuePool, ``POSTGRES_POOL``: as many kept as the process used at once, at most 10, up to
10 more under load; ``pool_pre_ping`` so a restarted server costs one failed check, not an error),
so a process that makes thousands of ledger calls opens a handful of connections. SQLite
connections are pooled too (opening one per operation cost a connect, two PRAGMAs and, on the last
close, a WAL checkpoint each time); a pooled connection is checked out only while the file at the
path is still the one it opened (device and inode), so a ledger file deleted or replaced while the
process runs is reconnected to, not written into after its unlinking. Forked children (the
render forks its workers) must not use the parent's connections: an ``os.register_at_fork`` hook
drops every engine's pooled connections in the child without closing them
(``engine.dispose(close=False)``: the parent keeps using them), so the child opens its own.
``named_lock(name)`` is a cross-process mutex for work done outside a transaction (an upload):
a lock file next to a SQLite ledger (this machine's processes), a session advisory lock in
PostgreSQL (every machine's).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event

from pipeline.procs import file_lock

log = logging.getLogger("pipeline.ledger")

LEDGER_LOCK_KEY = int.from_bytes(hashlib.blake2b(b"pipeline.ledger write lock", digest_size=8).digest(), "big",
                                 signed=True)
"""The PostgreSQL advisory lock (a signed 64-bit key) every ledger write transaction takes first."""

SQLITE_BUSY_TIMEOUT_S = 60.0
"""How long a SQLite connection waits for another process's write lock before failing, seconds."""

POSTGRES_POOL = {"pool_size": 10, "max_overflow": 10, "pool_timeout": 60.0, "pool_pre_ping": True}
"""QueuePool settings of PostgreSQL engines: connections kept (a process keeps as many as it used
at once, at most 10), extra ones under load (closed when returned), seconds to wait for one, check
a pooled connection before use."""


def ledger_url(path_or_url: str | Path) -> sa.URL:
    """The SQLAlchemy URL of a ledger: a ``Path`` or a string without ``://`` is a SQLite file
    (made absolute); a URL is parsed, ``postgresql://`` / ``postgres://`` getting the psycopg2
    driver (SQLAlchemy 2.x defaults to psycopg 3, not installed). Raises ValueError for a URL
    that is neither SQLite nor PostgreSQL."""
    if isinstance(path_or_url, Path) or "://" not in str(path_or_url):
        return sa.URL.create("sqlite", database=str(Path(path_or_url).expanduser().resolve()))
    text = str(path_or_url)
    if text.startswith("postgres://"):  # Heroku-style alias, not a SQLAlchemy dialect name
        text = "postgresql://" + text[len("postgres://"):]
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError:  # its message quotes the URL, password included: not repeated
        raise ValueError(f"cannot parse the ledger URL {text.split('://')[0]}://... as a SQLAlchemy URL") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"the ledger runs on SQLite or PostgreSQL, not {url.get_backend_name()!r} "
                         f"({url.render_as_string(hide_password=True)})")
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ValueError("the ledger must be a SQLite file shared by processes, not an in-memory database")
    return url


_ENGINES: dict[str, sa.Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    engine = sa.create_engine(url, poolclass=sa.QueuePool, pool_size=5, max_overflow=10,
                              connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record) -> None:
        # SQLAlchemy emits BEGIN itself (below) instead of the sqlite3 module's legacy implicit
        # transactions, which begin only before DML: see SQLAlchemy's "Transactions with SQLite".
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()
        record.info["file"] = _file_id(url.database)

    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_conn, record, _proxy) -> None:
        # A pooled connection to a file that was since deleted or replaced (a data directory
        # removed and made again while this process runs) would write into the unlinked file:
        # the pool drops it and connects again (to the file now at the path).
        if record.info.get("file") != _file_id(url.database):
            raise sa.exc.DisconnectionError(f"{url.database} was replaced or removed")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("ledger_write") else "BEGIN")

    return engine


POSTGRES_CONNECT_ARGS = {
    "application_name": "pipeline-ledger",
    # The client notices a vanished server (libpq keepalives) ...
    "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    # ... and the server a vanished client (a crashed machine, a cut network) within about a
    # minute, ending its session and so releasing the ledger's locks it held; a transaction left
    # idle is ended after 60 s (ledger transactions last milliseconds).
    "options": "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
               " -c idle_in_transaction_session_timeout=60000",
}
"""psycopg2 connection parameters of ledger engines (a parameter given in the URL's query wins).
Through a connection pooler, use session pooling: the advisory locks belong to a session."""


def _postgres_engine(url: sa.URL) -> sa.Engine:
    connect_args = {k: v for k, v in POSTGRES_CONNECT_ARGS.items() if k not in url.query}
    return sa.create_engine(url, isolation_level="READ COMMITTED", connect_args=connect_args, **POSTGRES_POOL)


def engine_for(url: sa.URL) -> sa.Engine:
    """This process's engine for ``url`` (made on first use; see the module doc)."""
    key = url.render_as_string(hide_password=False)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _sqlite_engine(url) if url.get_backend_name() == "sqlite" else _postgres_engine(url)
            _ENGINES[key] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection of this process's ledger engines (they reconnect on next use):
    for tests that make many databases, and for a process done with its ledgers."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
    for engine in engines:
        engine.dispose()


def _after_fork_in_child() -> None:
    global _ENGINES_LOCK
    _ENGINES_LOCK = threading.Lock()  # another thread may have held it at the fork
    for engine in _ENGINES.values():
        engine.dispose(close=False)  # the parent's sockets: leave them to the parent


os.register_at_fork(after_in_child=_after_fork_in_child)


def _signed_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"pipeline.ledger:{name}".encode(), digest_size=8).digest(), "big",
                          signed=True)


@dataclass(frozen=True)
class LedgerDatabase:
    """A ledger's database: its ``url``, and ``path`` for a SQLite file (None for PostgreSQL)."""

    url: sa.URL
    path: Path | None

    @classmethod
    def open(cls, path_or_url: str | Path) -> "LedgerDatabase":
        """The database at ``path_or_url`` (see ``ledger_url``); a SQLite file's directory is created."""
        url = ledger_url(path_or_url)
        path = None
        if url.get_backend_name() == "sqlite":
            path = Path(url.database).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            url = url.set(database=str(path))
        return cls(url, path)

    @property
    def engine(self) -> sa.Engine:
        return engine_for(self.url)

    @property
    def is_postgres(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    @property
    def name(self) -> str:
        """The file path, or the URL with its password hidden (for messages and ids)."""
        return str(self.path) if self.path is not None else self.url.render_as_string(hide_password=True)

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection for reads (no lock taken), returned to the pool afterwards."""
        with self.engine.connect() as conn:
            if self.is_postgres:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction serialized with every other one on this database (SQLite: BEGIN
        IMMEDIATE; PostgreSQL: the advisory lock LEDGER_LOCK_KEY), committed when the block ends,
        rolled back if it raises."""
        with self.engine.connect() as conn:
            conn.execution_options(ledger_write=True)
            with conn.begin():
                if self.is_postgres:
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LEDGER_LOCK_KEY)))
                yield conn

    def insert(self, table: sa.Table):
        """An INSERT for ``table`` in this database's dialect, which has ``.on_conflict_do_update``
        / ``.on_conflict_do_nothing`` and ``.excluded`` (the same API on SQLite and PostgreSQL)."""
        if self.is_postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    @contextmanager
    def named_lock(self, name: str) -> Iterator[None]:
        """Hold the cross-process mutex ``name`` while the block runs: a lock file
        ``<ledger dir>/locks/<name>.lock`` for SQLite (this machine), a session advisory lock on a
        connection of its own for PostgreSQL (every machine using the database)."""
        if not self.is_postgres:
            assert self.path is not None
            with file_lock(self.path.parent / "locks" / f"{name}.lock"):
                yield
            return
        key = _signed_key(name)
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.select(sa.func.pg_advisory_lock(key)))
            try:
                yield
            finally:
                try:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                except sa.exc.SQLAlchemyError as exc:  # a lost connection released it already
                    log.warning("ledger: could not release lock %s: %s", name, exc)
                    conn.invalidate()
