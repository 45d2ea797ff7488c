"""Where the test suite's CPU goes, by kind of process: run a command (default: the whole suite as
``make test`` runs it) while sampling every process's CPU time from /proc, and print a table.

Every ``--interval`` seconds (default 0.1) each process's utime+stime is read from
``/proc/<pid>/stat`` and the process is classified once by its command line (ffmpeg, a pytest
worker, the ``pipeline`` CLI, ``dagster-daemon``, a code server, ...). A process's CPU is the last
value seen (minus its value at the first sweep, for processes that were already running). A
process that lives less than one interval may be missed, so the table is a lower bound; the
machine-wide total from /proc/stat over the same window is printed beside it.

Linux only. Usage:
    python benchmarks/profile_suite_cpu.py [--interval 0.5] [-- COMMAND ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_times, emit, heading, machine_info, table  # noqa: E402

from pipeline.procs import _stat_fields  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")
KINDS = [  # (substring of the command line, kind); the first match wins
    ("ffmpeg", "ffmpeg"),
    ("dagster-daemon", "dagster-daemon"), ("dagster._daemon", "dagster-daemon"),
    ("dagster-webserver", "dagster-webserver"),
    ("dagster api grpc", "Dagster code server"), ("dagster code-server", "Dagster code server"),
    ("poll_compute_logs", "Dagster compute-log tail"), ("compute_log", "Dagster compute-log tail"),
    ("multiprocessing.forkserver", "fork server and forked run workers"),
    ("bin/pipeline", "pipeline CLI"),
    ("exec(eval(sys.stdin.readline()))", "pytest worker (tests and in-process Dagster)"),
    ("pytest", "pytest"),
    ("postgres", "postgres"), ("redis-server", "redis"), ("celery", "celery"), ("chrom", "chromium"),
    ("fake_replicate", "fake Replicate server"), ("moto", "moto S3 server"),
    ("bin/dagster", "dagster CLI"),
]


def kind_of(pid: str) -> str | None:
    """The kind of process ``pid`` by its command line (None if it is gone)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    if not cmd:  # a kernel thread, or a process that exited before it was first seen (a zombie)
        fields = _stat_fields(int(pid))
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        if fields is None:
            return None
        if pid == "2" or fields[1] == b"2":
            return "kernel threads"
        return "ffmpeg" if "ffmpeg" in comm else f"exited before first seen: {comm}"
    for needle, kind in KINDS:
        if needle in cmd:
            return kind
    return "other: " + Path(cmd.split()[0]).name


def cpu_ticks(pid: str) -> tuple[int, bytes] | None:
    """(utime + stime in clock ticks, start time) of ``pid``, or None if it is gone."""
    fields = _stat_fields(int(pid))
    return (int(fields[11]) + int(fields[12]), fields[19]) if fields else None


class Sampler:
    """Samples every process's CPU until ``stop``; ``table`` gives CPU seconds and count per kind."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.seen: dict[tuple[str, str], list] = {}  # (pid, start) -> [ticks, kind, baseline]
        self._stop = threading.Event()
        self._first = True
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sweep(self) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            got = cpu_ticks(pid)
            if got is None:
                continue
            ticks, start = got
            entry = self.seen.get((pid, start))
            if entry is None:
                kind = kind_of(pid)
                if kind is not None:
                    self.seen[(pid, start)] = [ticks, kind, ticks if self._first else 0]
            else:
                entry[0] = ticks
        self._first = False

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sweep()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._sweep()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sweep()

    def table(self) -> list[dict]:
        cpu, count = Counter(), Counter()
        for ticks, kind, baseline in self.seen.values():
            if ticks > baseline:
                cpu[kind] += (ticks - baseline) / HZ
                count[kind] += 1
        total = sum(cpu.values()) or 1.0
        return [{"kind": k, "cpu_s": round(v, 1), "share_%": round(100 * v / total, 1), "processes": count[k]}
                for k, v in cpu.most_common()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between sweeps of /proc")
    ap.add_argument("command", nargs="*", help="command to profile (default: the suite as `make test` runs it)")
    args = ap.parse_args()
    command = args.command or [str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-n", "2",
                               "--dist", "loadgroup", "-q"]
    sampler = Sampler(args.interval)
    busy0, t0 = cpu_times()[0] / HZ, time.monotonic()
    sampler.start()
    code = subprocess.call(command, cwd=ROOT, env={**os.environ, "DAGSTER_HOME": str(ROOT)})
    sampler.stop()
    wall, busy = time.monotonic() - t0, cpu_times()[0] / HZ - busy0
    rows = sampler.table()
    heading(f"CPU by kind of process: `{' '.join(command)}` (exit {code})")
    emit(table(rows))
    print(f"\nwall {wall:.0f} s; machine busy {busy:.0f} CPU-s ({busy / wall:.2f} cores on average, "
          f"{os.cpu_count()} present); sampled {sum(r['cpu_s'] for r in rows):.0f} CPU-s; {machine_info()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
