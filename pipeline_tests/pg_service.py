"""A private PostgreSQL server for tests: started in a temporary directory on a free port of
127.0.0.1, stopped (and its directory removed) afterwards. Nothing is shared with a system server.

API (import what you use; the fixture is self-contained, so importing ``postgres_url`` alone is
enough: ``from pipeline_tests.pg_service import postgres_url  # noqa: F401``):

- ``postgres_url`` (pytest fixture, session scope): a ``postgresql+psycopg2://postgres@127.0.0.1:PORT/
  pipeline_tests`` URL (str) of a database on the session's server (one server per test process,
  whichever modules import the fixture). Skips the test, saying why, when the PostgreSQL binaries
  are missing.
- ``fresh_database(url) -> url``: a new, empty database (unique name) on the server of ``url``;
  call it per test so tests share no state.
- ``PostgresServer.start()`` / ``stop()`` (also a context manager): one server, for tests that
  need their own (e.g. to stop it mid-test). ``url(database)`` names a database on it.

The binaries are PostgreSQL 15's (``/usr/lib/postgresql/15/bin``, Debian's ``postgresql-15``), or
the newest ``/usr/lib/postgresql/*/bin``. ``initdb`` and ``postgres`` refuse to run as root: as root
they run as the ``postgres`` user (``runuser -u postgres --``) on a directory chowned to it.
Authentication is ``trust`` on loopback only; ``fsync`` is off (a test server, not a durable one).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

PG_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
"""Where the server binaries are looked for, first match wins."""

START_TIMEOUT_S = 120.0
"""How long a server may take to accept connections (a loaded 2-core machine), seconds."""


def postgres_bin() -> Path | None:
    """The first of PG_BIN_DIRS holding ``initdb``, ``postgres`` and ``pg_ctl``, or None."""
    for directory in PG_BIN_DIRS:
        if all((directory / name).is_file() for name in ("initdb", "postgres", "pg_ctl")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One private server: data in ``root/data``, log in ``root/postgres.log``, listening on
    127.0.0.1:``port`` (and a Unix socket in ``root``). ``start()`` raises RuntimeError (with the
    log's tail) if it does not come up, or pytest's Skipped if the binaries are missing."""

    def __init__(self, *, max_connections: int = 300):
        self.max_connections = max_connections
        self.bin = postgres_bin()
        self.root: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "the server was not started"
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this server, user ``postgres`` (trust, no password)."""
        assert self.port is not None, "the server was not started"
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> "PostgresServer":
        if self.bin is None:
            pytest.skip(f"PostgreSQL server binaries not found (looked in {', '.join(map(str, PG_BIN_DIRS))}); "
                        "install postgresql-15")
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root, and there is no 'postgres' user to run the PostgreSQL server as")
        # Not under pytest's tmp dirs: those are 0700 root, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
        if os.geteuid() == 0:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        init = subprocess.run(self._as_owner([str(self.bin / "initdb"), "-D", str(self.root / "data"), "-U", "postgres",
                                              "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]),
                              capture_output=True, text=True)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}) in {self.root}:\n{init.stdout}\n{init.stderr}")
        for _ in range(3):  # another process may take the free port before the server binds it
            self.port = _free_port()
            if self._launch():
                return self
        raise RuntimeError(f"PostgreSQL did not start in {self.root}:\n{self.tail()}")

    def _launch(self) -> bool:
        assert self.root is not None and self.bin is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._as_owner([str(self.bin / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
                                "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off",
                                "-c", f"max_connections={self.max_connections}"]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        import psycopg2

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                 connect_timeout=5).close()
                return True
            except psycopg2.OperationalError:
                time.sleep(0.1)
        self._kill()
        raise RuntimeError(f"PostgreSQL did not accept connections within {START_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def _kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``: clients disconnected), SIGKILL if that fails; then
        remove the directory. Safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            assert self.root is not None and self.bin is not None
            subprocess.run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "stop", "-m",
                                           "fast", "-w", "-t", "60"]), capture_output=True)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` (through its ``postgres`` database);
    returns the URL of the new database (same driver, user and host)."""
    import sqlalchemy as sa

    base = sa.make_url(url)
    engine = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def fresh_database(url: str) -> str:
    """A new empty database with a unique name on the server of ``url``; returns its URL."""
    return create_database(url, f"t_{uuid.uuid4().hex[:16]}")


_SHARED: dict = {"server": None, "url": None, "users": 0}
"""The session's server: one per test process, however many modules import ``postgres_url`` (each
import is a fixture of its own to pytest; they share this server, stopped by the last one)."""


@pytest.fixture(scope="session")
def postgres_url():
    """The URL (``postgresql+psycopg2://...``) of database ``pipeline_tests`` on a private server
    started for the session (once per process) and stopped after it. Use
    ``fresh_database(postgres_url)`` for an empty database per test."""
    if _SHARED["users"] == 0:
        server = PostgresServer().start()
        try:
            _SHARED.update(server=server, url=create_database(server.url(), "pipeline_tests"))
        except BaseException:
            server.stop()
            raise
    _SHARED["users"] += 1
    try:
        yield _SHARED["url"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED["server"].stop()
            _SHARED.update(server=None, url=None)
