"""The per-video render lock: one ``pipeline render`` / ``retry`` of a video at a time on this
machine (``<data>/locks/<video_id>.lock``, an flock holding the holder's ``host:pid:start``), and the
inbox sensor's check of whether a ``pipeline`` process holds it."""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from pipeline.procs import ProcessIdentity, file_lock
from pipeline.store import Workspace

log = logging.getLogger(__name__)


def render_lock_path(workspace: Workspace, video_id: str) -> Path:
    """``<data>/locks/<video_id>.lock``."""
    return workspace.root / "locks" / f"{video_id}.lock"


@contextmanager
def video_lock(workspace: Workspace, video_id: str,
               on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the render lock of ``video_id`` (``<data>/locks/<video_id>.lock``, flock) for the
    block: one CLI render or retry of a video at a time on this machine. If another live process
    holds it, ``on_wait(message)`` is called first (default: a log warning) and this one waits.
    The lock is released when the holder exits or is killed (its forked workers die with it)."""
    path = render_lock_path(workspace, video_id)
    try:
        holder = ProcessIdentity.parse(path.read_text().strip())
    except OSError:
        holder = None
    me = ProcessIdentity.current()
    if holder is not None and holder != me and holder.is_alive():
        (on_wait or log.warning)(f"waiting for another render of {video_id} (process {holder.pid}) to finish")
    with file_lock(path):
        path.write_text(str(me))
        yield


def render_lock_holder(workspace: Workspace, video_id: str) -> str | None:
    """Who holds ``video_id``'s render lock (``<data>/locks/<video_id>.lock``, taken by
    ``pipeline render`` / ``retry`` for the whole command: ``video_lock``) on this machine:
    the holder's identity as written there (``host:pid:start``), or None when nobody holds it.
    Tested with a non-blocking shared flock, released at once."""
    path = render_lock_path(workspace, video_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)
