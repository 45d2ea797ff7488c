"""Processes: who owns a piece of work, whether that owner is still alive, cross-process locks,
and tying child processes to their parent's life. Nothing here imports Dagster.

``ProcessIdentity`` names one process on one machine across pid reuse: host name, pid and the
process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22, see proc(5)).
Its string form ``host:pid:start`` goes into ledger rows, run tags and temp-file names, so any
process can tell whether the owner of a job, a run or a scratch directory is still running.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Hashable, Iterator, TypeVar

V = TypeVar("V")

_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when the thread that forked it exits."""


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, comes first), or
    None if there is no such process or no /proc. The command name (field 2) may contain spaces
    and parentheses, so fields are counted after its last closing parenthesis (proc(5))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 1:].split()
    return fields if len(fields) > 19 else None


def _start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22), or None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ProcessIdentity:
    """One process: ``host`` name, ``pid``, and ``start`` (clock ticks since boot; 0 if unknown)."""

    host: str
    pid: int
    start: int

    @classmethod
    def current(cls) -> "ProcessIdentity":
        """This process (computed on every call, so a forked child gets its own identity)."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _start_ticks(pid) or 0)

    @classmethod
    def parse(cls, text: str | None) -> "ProcessIdentity | None":
        """The identity written by ``str()`` (``host:pid:start``), or None if ``text`` is not one."""
        if not text:
            return None
        host, _, rest = text.rpartition(":")
        host, _, pid = host.rpartition(":")
        try:
            return cls(host, int(pid), int(rest)) if host else None
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    @property
    def is_local(self) -> bool:
        """True if this identity belongs to a process on this machine."""
        return self.host == socket.gethostname()

    def is_alive(self) -> bool | None:
        """True if the process still runs (same pid *and* start time), False if it is gone, None
        if that cannot be known from here (another host). A zombie counts as gone."""
        if not self.is_local:
            return None
        fields = _stat_fields(self.pid)
        if fields is None or fields[0] == b"Z":
            return False
        return not self.start or int(fields[19]) == self.start


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux prctl
    PR_SET_PDEATHSIG; a no-op elsewhere), and exit at once if the parent is already gone: when
    ``parent_pid`` is given, if this process's parent is no longer that pid (the orphan was
    reparented to init or a subreaper before prctl took effect), else if the parent is pid 1.

    Use it as a pool worker's initializer (``initializer=die_with_parent, initargs=(os.getpid(),)``)
    or in a subprocess's ``preexec_fn``. The signal fires when the parent *thread* that forked this
    process exits, so fork from a thread that outlives the child (the main thread, or one that
    waits for the child)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    orphaned = os.getppid() != parent_pid if parent_pid is not None else os.getppid() == 1
    if orphaned:
        os._exit(1)


def exit_with(owner: ProcessIdentity, poll_s: float = 0.5) -> None:
    """Exit this process (``os._exit(1)``; children tied to it by ``die_with_parent`` follow) as
    soon as process ``owner``, not its parent, ends; at once if it already has. For workers whose
    parent is a fork server rather than the process they work for.

    A daemon thread waits on a pidfd of ``owner`` (Linux 5.3+, pidfd_open(2)): woken the instant it
    exits, no polling. Elsewhere, or for another host's process, it checks ``owner.is_alive()``
    every ``poll_s`` seconds. The start time is checked after the pidfd opens, so a reused pid is
    not mistaken for the owner."""
    import threading

    if owner.is_alive() is False:
        os._exit(1)
    fd = None
    if owner.is_local and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(owner.pid)
        except OSError:
            os._exit(1)  # ESRCH: gone between the check and the open
        if owner.is_alive() is False:
            os._exit(1)

    def watch() -> None:
        if fd is not None:
            import select

            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll():
                pass
            os._exit(1)
        import time

        while owner.is_alive() is not False:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name=f"exit-with-{owner.pid}", daemon=True).start()


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock(2)) on ``path`` (created if missing) for the block.

    Serializes processes on one machine (not across NFS). Released when the block ends or the
    process dies, so a killed holder never leaves it locked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class PerProcess(Generic[V]):
    """Objects owned by this process, one per key, created on first use under a lock. A forked
    child starts with none: its parent's objects (their threads, locks and counters) are not its
    own (``os.register_at_fork``)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._items: dict[Hashable, V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, create: Callable[[], V]) -> V:
        """The object for ``key``, made by ``create()`` if this process has none yet."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = create()
            return item
