"""A render's worker processes are forks of the warm fork server, never of the render process:
a fork of a multi-threaded process copies every lock another thread held at that instant, and a
worker that needs one blocks forever (seen as a suite hang under load: a worker of a render run
from a pytest-xdist worker, which has threads, sat in futex forever)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from pipeline.orchestration import forkserver, render
from pipeline.procs import ProcessIdentity

from .conftest import write_spec


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[1])


def test_workers_are_forks_of_the_fork_server_and_run_with_the_renders_environment(env, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_MARKER", "from-the-render")  # set after the fork server started, maybe
    parents: dict[str, int] = {}

    def on_run(name: str, outcome) -> None:
        if outcome is None or outcome.job not in ("render_segment", "render_music"):
            return  # planning and assembly run in the render process itself
        owner = ProcessIdentity.parse(env.instance.get_run_by_id(outcome.run_id).tags["pipeline/owner"])
        if owner.is_alive():  # the pool is still up: its workers are
            parents[name] = _ppid(owner.pid)

    report = env.render(write_spec(tmp_path / "s.yaml", video_id="forks"), max_parallel=2, on_run=on_run)
    assert report.final is not None, [r.error for r in report.failed]
    assert parents, "no worker was seen alive"
    assert set(parents.values()) == {forkserver.server_pid()}, parents
    assert os.getpid() not in parents.values()


def test_a_lock_held_by_another_thread_of_the_render_does_not_hang_its_workers(env, tmp_path, monkeypatch):
    """With ``fork``, the worker inherits the held lock and the patched function that takes it, and
    hangs. A fork server's worker imports its own, untouched modules. The render runs in this (the
    main) thread, as the CLI's does; a watchdog kills hung workers so a regression fails, not hangs."""
    held, done = threading.Lock(), threading.Event()
    holder = threading.Thread(target=lambda: (held.acquire(), done.wait(), held.release()), daemon=True)
    holder.start()
    while not held.locked():
        time.sleep(0.01)
    original = render.execute_planned
    parent = os.getpid()

    def execute_planned(defs, instance, run):
        if os.getpid() != parent:  # in a worker: needs the lock, as a worker's logging or I/O would
            with held:
                pass
        return original(defs, instance, run)

    monkeypatch.setattr(render, "execute_planned", execute_planned)
    hung: list[int] = []

    def watchdog() -> None:
        if done.wait(240):
            return
        for child in Path("/proc").glob("[0-9]*"):
            try:
                if _ppid(int(child.name)) == forkserver.server_pid():
                    hung.append(int(child.name))
                    os.kill(int(child.name), signal.SIGKILL)
            except (OSError, TypeError, ValueError):
                pass

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        report = env.render(write_spec(tmp_path / "s.yaml", video_id="no-hang"), max_parallel=2)
    finally:
        done.set()
    assert not hung, f"the render hung: workers {hung} inherited a lock held by another thread"
    assert report.final is not None, [r.error for r in report.failed]
