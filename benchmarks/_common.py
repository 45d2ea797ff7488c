"""Shared helpers for the benchmark scripts: paths, temporary Dagster/data directories, the
machine description, process-tree measurement, and table printing.

Every benchmark runs in its own temporary DAGSTER_HOME and data directory (never the repository's
``data/``), and prints its tables as GitHub-flavoured Markdown, so the output pastes straight
into BENCHMARKS.md. Results are also written as JSON under ``benchmarks/results/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
EXAMPLES = ROOT / "examples"
VENV_BIN = Path(sys.executable).parent

for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

INSTANCE_YAML = "telemetry:\n  enabled: false\n"

CLI_INSTANCE_YAML = ("telemetry:\n  enabled: false\nstorage:\n  custom:\n    module: pipeline.orchestration.storage\n"
                     "    class: RunFirstSqliteStorage\n    config:\n      base_dir: @STORAGE@\n")
"""What ``pipeline render`` writes for a new instance and the repository's dagster.yaml use: Dagster's
SQLite files with the project's storage class (temp_env fills in @STORAGE@)."""


# --- environments ------------------------------------------------------------------------------

def scratch_dir(prefix: str) -> Path:
    """A temporary directory removed when the process exits."""
    import atexit

    path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@contextlib.contextmanager
def temp_env(prefix: str, *, keep: bool = False, instance_yaml: str = INSTANCE_YAML) -> Iterator[Path]:
    """A temporary directory with ``dagster_home/`` (a dagster.yaml) and ``data/``; sets
    DAGSTER_HOME and PIPELINE_DATA_DIR for the duration (restoring them after). Yields the root."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml.replace("@STORAGE@", str(home / "storage")))
    (root / "data").mkdir()
    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "PIPELINE_DATA_DIR")}
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["PIPELINE_DATA_DIR"] = str(root / "data")
    try:
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def subprocess_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for a child process using ``root``'s Dagster home and data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATE_")}
    env.update(DAGSTER_HOME=str(root / "dagster_home"), PIPELINE_DATA_DIR=str(root / "data"),
               PYTHONUNBUFFERED="1", **extra)
    return env


# --- the machine -------------------------------------------------------------------------------

def load_averages() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (/proc/loadavg); NaN where unavailable."""
    try:
        a, b, c = Path("/proc/loadavg").read_text().split()[:3]
        return float(a), float(b), float(c)
    except (OSError, ValueError):
        return float("nan"), float("nan"), float("nan")


def machine_info() -> dict[str, str]:
    """nproc, CPU model, memory, OS, Python, Dagster and ffmpeg versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    from pipeline import media

    exe = media.ffmpeg_exe()
    try:
        first = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
        ffmpeg_version = first.split(" Copyright")[0]
    except (OSError, IndexError):
        ffmpeg_version = "unknown"
    import dagster

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "dagster": dagster.__version__,
        "ffmpeg": f"{ffmpeg_version} ({exe})",
    }


# --- measuring a process tree ------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
            ppid = int(data.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _mem_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in KiB; PSS from smaps_rollup (shared pages split between sharers)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        return rss, pss
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    return rss, rss
    except (OSError, ValueError):
        pass
    return rss, pss


def tree_mem_kb(pid: int) -> tuple[int, int, int]:
    """(summed RSS, summed PSS, process count) of ``pid`` and all its descendants right now, KiB."""
    kids = _children_map()
    rss = pss = n = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        r, s_ = _mem_kb(p)
        rss, pss, n = rss + r, pss + s_, n + 1
        stack.extend(kids.get(p, []))
    return rss, pss, n


class TreeSampler:
    """Samples the summed RSS and PSS of a process tree every ``interval`` seconds in a thread.
    Summed RSS counts pages shared by forked workers once per process; PSS splits them."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak_rss_kb = self.peak_pss_kb = self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss, n = tree_mem_kb(self.pid)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            self.peak_procs = max(self.peak_procs, n)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


_WRAPPER = """
import json, resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "maxrss_kb": u.ru_maxrss, "cpu_s": u.ru_utime + u.ru_stime}, f)
sys.exit(rc)
"""


def run_measured(args: Sequence[str], *, env: dict[str, str], cwd: Path, timeout: float = 900) -> dict[str, Any]:
    """Run ``args`` (through a small wrapper process); return wall seconds, the peak summed RSS and
    PSS of its process tree (sampled every 50 ms, MiB), the largest max RSS of any single process
    in the tree (getrusage RUSAGE_CHILDREN of the wrapper, MiB), the tree's CPU seconds
    (user+sys), the exit code and output."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        stats_path = tf.name
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, stats_path, *args], env=env, cwd=str(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    with TreeSampler(proc.pid) as sampler:
        out, _ = proc.communicate(timeout=timeout)
    wall = time.perf_counter() - t0
    try:
        stats = json.loads(Path(stats_path).read_text())
    finally:
        os.unlink(stats_path)
    return {
        "wall_s": wall,
        "peak_tree_rss_mib": sampler.peak_rss_kb / 1024,
        "peak_tree_pss_mib": sampler.peak_pss_kb / 1024,
        "peak_processes": max(0, sampler.peak_procs - 1),
        "max_process_rss_mib": stats["maxrss_kb"] / 1024,
        "cpu_s": stats["cpu_s"],
        "returncode": proc.returncode,
        "output": out,
    }


# --- output ------------------------------------------------------------------------------------

def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat; busy excludes idle and iowait);
    (0, 0) where there is no /proc."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def table(rows: Iterable[dict[str, Any]] | Sequence[Sequence[Any]], headers: Sequence[str] | str = "keys",
          floatfmt: str = ".2f") -> str:
    """A GitHub-flavoured Markdown table (tabulate)."""
    from tabulate import tabulate

    return tabulate(list(rows), headers=headers, tablefmt="github", floatfmt=floatfmt)


def heading(text: str, level: int = 3) -> None:
    print(f"\n{'#' * level} {text}\n", flush=True)


def emit(text: str) -> None:
    print(text, flush=True)


def save_results(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def met(value: float, target: float) -> str:
    return "met" if value < target else "MISSED"


# --- profiling ---------------------------------------------------------------------------------

def pyspy_record(args: Sequence[str], *, env: dict[str, str], cwd: Path, out: Path, rate: int = 67,
                 idle: bool = False, timeout: float = 900) -> dict[str, Any]:
    """Run ``args`` under ``py-spy record --subprocesses`` (raw collapsed stacks to ``out``).
    Returns wall seconds and the exit code. py-spy samples Python processes only (ffmpeg shows as
    the Python frame waiting for it when ``idle``)."""
    spy = VENV_BIN / "py-spy"
    cmd = [str(spy), "record", "--subprocesses", "--format", "raw", "-r", str(rate), "-o", str(out),
           *(["--idle"] if idle else []), "--", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=str(cwd), capture_output=True, text=True, errors="replace",
                          timeout=timeout)
    return {"wall_s": time.perf_counter() - t0, "returncode": proc.returncode,
            "stderr_tail": proc.stderr[-2000:]}


def _frame_name(frame: str) -> str:
    frame = re.sub(r":\d+\)$", ")", frame)
    frame = frame.replace(str(ROOT) + "/", "")
    frame = re.sub(r"\S*/site-packages/", "", frame)
    frame = re.sub(r"\S*/lib/python3\.\d+/", "", frame)
    return frame


def summarize_profile(path: Path, *, top: int = 15, include: str | None = None,
                      exclude: Sequence[str] = ()) -> tuple[int, list[dict[str, Any]]]:
    """Aggregate py-spy raw stacks: per function, the share of samples in which it is on the stack
    (inclusive, counted once per stack) and at the top (self). ``include``: only frames whose name
    contains it (e.g. "pipeline/" or "dagster/"). Returns (total samples, rows)."""
    from collections import Counter

    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        try:
            count = int(n)
        except ValueError:
            continue
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not any(x in f for x in exclude)]
        total += count
        if frames:
            own[frames[-1]] += count
        for f in set(frames):
            if include is None or include in f:
                inclusive[f] += count
    rows = [{"function (file)": f, "on_stack_%": 100 * c / max(1, total), "self_%": 100 * own[f] / max(1, total)}
            for f, c in inclusive.most_common(top)]
    return total, rows


class PySpyAttach:
    """``with PySpyAttach(pid, out):`` samples process ``pid`` and its children (wall time, idle
    included) into ``out`` (raw collapsed stacks) until the block ends."""

    def __init__(self, pid: int, out: Path, rate: int = 25):
        self.cmd = [str(VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--subprocesses", "--idle",
                    "--nonblocking", "--format", "raw", "-r", str(rate), "-o", str(out)]
        self.out = out
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "PySpyAttach":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def stack_shares(path: Path, *, within: str, buckets: Sequence[tuple[str, Sequence[str]]]) -> tuple[int, list[dict]]:
    """Share of the samples whose stack contains ``within`` that fall in each bucket (the first
    bucket any of whose substrings occurs in the stack's frames, checked leaf first), else "other"."""
    from collections import Counter

    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or within not in stack:
            continue
        count = int(n)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        label = "other"
        for name, needles in buckets:
            if any(needle in f for f in reversed(frames) for needle in needles):
                label = name
                break
        counts[label] += count
    return total, [{"where": k, "share_%": 100 * v / max(1, total)} for k, v in counts.most_common()]


ORCHESTRATION_BUCKETS: list[tuple[str, list[str]]] = [
    ("Dagster: event log writes (SQLite)", ["store_event", "SqliteEventLogStorage", "ConsolidatedSqliteEventLogStorage"]),
    ("Dagster: run creation", ["create_run_for_job", "RunDomain.create_run"]),
    ("Dagster: dynamic partition checks", ["has_partition_key", "get_dynamic_partitions", "has_dynamic_partition"]),
    ("Dagster: compute-log capture (tail + watcher processes)", ["compute_logs.py", "capture_logs"]),
    ("Dagster: other", ["dagster/"]),
    ("pipeline: other", ["pipeline/"]),
]
"""Profile buckets for Dagster's and the pipeline's own work, in priority order."""
