"""Private services for the cluster tests, each started on a free 127.0.0.1 port in a temporary
directory and always stopped: Postgres (``private_postgres``), Redis (``private_redis``, no
persistence) and moto's S3 server (``moto_server``). A missing binary raises ``ServiceMissing``
(tests turn it into a skip with its reason).

Postgres binaries (initdb, postgres) refuse to run as root: as root they run as the ``postgres``
user, in a directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline_tests.dagster_services import free_port, wait_until

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
"""Debian's Postgres binaries, newest version first (they are not on PATH)."""


class ServiceMissing(RuntimeError):
    """A service binary is not installed; the message says which and where it was looked for."""


def pg_bin(name: str) -> Path:
    """The Postgres binary ``name`` (initdb, postgres, pg_ctl, ...): on PATH, else in Debian's
    /usr/lib/postgresql/<version>/bin. Raises ServiceMissing."""
    found = shutil.which(name)
    if found:
        return Path(found)
    for directory in PG_BIN_DIRS:
        if (directory / name).is_file():
            return directory / name
    raise ServiceMissing(f"Postgres' {name} is not installed (not on PATH nor in /usr/lib/postgresql/*/bin); "
                         "install the postgresql package")


def _as_postgres_user() -> list[str]:
    """The command prefix that runs a Postgres binary as a non-root user: ``runuser -u postgres --``
    as root, nothing otherwise. Raises ServiceMissing as root without a postgres user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceMissing("running as root, and there is no postgres user to run Postgres as") from None
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresServer:
    """A running private Postgres: ``url(db)`` is a psycopg2 SQLAlchemy URL, ``log_path`` its log."""

    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen

    def url(self, db_name: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db_name}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def sessions(self, db_name: str) -> int:
        """Sessions ever established to ``db_name`` (``pg_stat_database.sessions``, Postgres 14+),
        read over a connection to the ``postgres`` database (not counted). The statistics
        collector reports with a delay of up to ~0.5 s; callers wait for it."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            value = conn.execute(sa.text("SELECT sessions FROM pg_stat_database WHERE datname = :d"),
                                 {"d": db_name}).scalar()
        engine.dispose()
        return int(value or 0)

    def connections(self, db_name: str) -> int:
        """Connections authorized to ``db_name`` so far, counted in the server log (``log_connections``
        is on: Postgres logs each one as it is authorized, before the client can use it)."""
        needle = f"connection authorized: user=postgres database={db_name} "
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if needle in line + " ")

    def connections_by_application(self, db_name: str) -> dict[str, int]:
        """Like ``connections``, per ``application_name`` (libpq's $PGAPPNAME; "" when unset)."""
        import re
        from collections import Counter

        needle = f"connection authorized: user=postgres database={db_name}"
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        found = Counter()
        for line in lines:
            if needle + " " in line + " ":
                match = re.search(r"application_name=(\S+)", line)
                found[match.group(1) if match else ""] += 1
        return dict(found)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no postgres log)"


@contextmanager
def private_postgres(*, fsync: bool = False, extra: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """A fresh Postgres cluster (initdb, trust auth for user ``postgres``) serving 127.0.0.1 on a
    free port, stopped and deleted afterwards. ``fsync`` False (default) trades durability for
    speed, as a test wants; ``extra`` adds ``-c name=value`` settings. Raises ServiceMissing when
    Postgres is not installed, RuntimeError (with its log) when it does not start."""
    initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
    prefix = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="pg-private-"))
    if prefix:
        shutil.chown(root, "postgres", "postgres")
    data, log_path = root / "data", root / "postgres.log"
    out = subprocess.run([*prefix, str(initdb), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                          "--no-sync"], capture_output=True, text=True)
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({out.returncode}): {out.stderr[-2000:]}")
    port = free_port()
    settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(root), "max_connections": "200",
                "log_connections": "on",
                "fsync": "on" if fsync else "off", "synchronous_commit": "on" if fsync else "off",
                "full_page_writes": "on" if fsync else "off", **(extra or {})}
    args = [*prefix, str(postgres), "-D", str(data), "-p", str(port)]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    log = open(log_path, "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    server = PostgresServer(port, data, log_path, proc)
    try:
        import sqlalchemy as sa

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {proc.returncode}:\n{server.tail()}")
            try:
                engine = sa.create_engine(server.url(), poolclass=sa.pool.NullPool)
                with engine.connect():
                    pass
                engine.dispose()
                return True
            except sa.exc.OperationalError:
                return False

        wait_until(ready, timeout=60, interval=0.2, what="postgres to accept connections", on_timeout=server.tail)
        yield server
    finally:
        _stop(proc, signal.SIGINT)  # "fast shutdown": disconnects clients
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen, sig: int, grace_s: float = 20.0) -> None:
    """Send ``sig`` to ``proc``'s process group, then SIGKILL it after ``grace_s`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


@dataclass
class RedisServer:
    """A running private Redis: ``url(db)`` for Celery's broker / result backend."""

    port: int
    proc: subprocess.Popen

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    """redis-server on a free 127.0.0.1 port without persistence (no RDB snapshots, no AOF),
    stopped afterwards. Raises ServiceMissing when redis-server is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceMissing("redis-server is not installed (install the redis-server package)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-private-") as tmp:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp, "--protected-mode", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            import redis

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}")
                try:
                    return redis.Redis(port=port, socket_connect_timeout=1).ping()
                except redis.exceptions.ConnectionError:
                    return False

            wait_until(ready, timeout=30, interval=0.1, what="redis-server to answer PING")
            yield RedisServer(port, proc)
        finally:
            _stop(proc, signal.SIGTERM)


@contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """moto's S3 server (``moto_server`` of this Python) as its own process on a free 127.0.0.1
    port; yields its endpoint URL (for AWS_ENDPOINT_URL). Stopped afterwards."""
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.is_file():
        raise ServiceMissing(f"{binary} is missing (install moto[server])")
    port = free_port()
    log = open(log_path, "ab")
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import httpx

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                return httpx.get(f"{endpoint}/moto-api/", timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, interval=0.2, what="moto_server to answer")
        yield endpoint
    finally:
        _stop(proc, signal.SIGTERM)
