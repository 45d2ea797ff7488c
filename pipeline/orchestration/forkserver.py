"""The process's one warm fork server (Python's ``multiprocessing`` "forkserver" start method),
shared by everything here that starts Python worker processes: the daemon's run launcher
(``launcher.ForkServerRunLauncher``) and a CLI render's pool of run workers
(``render._Launcher.run_parallel``).

Why a fork server and not ``fork``: a process forked from a multi-threaded parent inherits every
lock another thread held at that instant (a stdout buffer being written by rich's refresh thread,
a logging handler, a lease-renewal thread's SQLite connection, pytest-xdist's channel thread) and
can block on it forever. The fork server is a separate, single-threaded interpreter that has
imported the heavy third-party modules once (``DEFAULT_PRELOAD_MODULES``); each worker is a fork of
it, started in milliseconds, with nothing locked. Why not "spawn": a fresh interpreter re-imports
Dagster and friends, 2-3 s of CPU per worker.

The server is started on first use (``warm_up``) and lives until this process exits (it reads
EOF on its "alive" pipe and exits; its children get SIGKILL then if they asked for
``procs.die_with_parent``). Its preload list is fixed by the first ``warm_up``.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence

DEFAULT_PRELOAD_MODULES: tuple[str, ...] = (
    # Dagster and what its run execution path imports (dagster api execute_run -> core_execute_run
    # -> execute_run_iterator, SQLite storages, compute-log capture).
    "dagster",
    "dagster._cli.api",
    "dagster._grpc.impl",
    "dagster._core.execution.api",
    "dagster._core.execution.plan.execute_plan",
    "dagster._core.executor.in_process",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.execution.compute_logs",
    # A forked child re-runs the launching process's main script as __mp_main__ (multiprocessing's
    # spawn preparation); for the `dagster-daemon` script that imports the daemon's CLI (~0.5 s).
    # `dagster dev` runs `python -m dagster._daemon`, which is skipped.
    "dagster._daemon.cli",
    "sqlalchemy",
    "alembic",
    # The third-party libraries the pipeline's assets, resources and providers import.
    "pydantic",
    "numpy",
    "pandas",
    "av",
    "PIL.Image",
    "PIL.ImageDraw",
    "PIL.ImageFont",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
    "httpx",
    "boto3",
    "botocore",
    "dagster_aws.s3",
    "replicate",
    "yaml",
    "ffmpeg",
    "imageio_ffmpeg",
    "tabulate",
    "tenacity",
    "rich",
)
"""Imported once by the fork server. Never the project's ``pipeline`` modules (edits must be
picked up by the next run). A module that fails to import is skipped (multiprocessing ignores
ImportError in the preload list)."""


_LOCK = threading.Lock()
_READY: list[bool] = []


def _noop() -> None:
    """The fork server's warm-up child."""


def available() -> bool:
    """True where this platform has a fork server (Linux, macOS); else callers use "spawn"."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def context():
    """The ``multiprocessing`` context whose processes are forks of the fork server."""
    return multiprocessing.get_context("forkserver")


def warm_up(preload: Sequence[str] = DEFAULT_PRELOAD_MODULES, timeout_s: float = 120.0) -> float:
    """Start the fork server (importing ``preload``) and fork one no-op child through it, if this
    process has not done so yet. Returns the seconds it took (0.0 when already warm). Safe to call
    from any thread; concurrent callers wait for the one that starts it.

    The no-op fork also makes the server single-threaded: numpy's OpenBLAS starts a worker thread
    on import and shuts it down in its pre-fork handler, and nothing restarts it. Raises
    RuntimeError if the warm-up child fails or takes longer than ``timeout_s`` seconds."""
    with _LOCK:
        if _READY:
            return 0.0
        started = time.monotonic()
        ctx = context()
        ctx.set_forkserver_preload(list(preload))
        proc = ctx.Process(target=_noop, name="forkserver-warm-up", daemon=True)
        proc.start()
        proc.join(timeout_s)
        if proc.exitcode != 0:
            raise RuntimeError(f"the fork server's warm-up child ended with {proc.exitcode}")
        proc.close()
        _READY.append(True)
        return time.monotonic() - started


def warm_up_in_background() -> None:
    """``warm_up`` in a daemon thread, so the fork server's imports (1.7 s on this project's
    machine) overlap with the caller's own work. A failure is left to the next ``warm_up`` call,
    which raises it where a worker is needed."""

    def quietly() -> None:
        try:
            warm_up()
        except Exception:  # noqa: BLE001 - raised again by the caller's own warm_up
            logging.getLogger(__name__).debug("fork server warm-up failed", exc_info=True)

    threading.Thread(target=quietly, name="forkserver-warm-up", daemon=True).start()


def server_pid() -> int | None:
    """The pid of this process's fork server, if it runs (for diagnostics and tests)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    return getattr(server, "_forkserver_pid", None)
