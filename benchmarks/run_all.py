"""Run every benchmark in turn and print every table (``make bench``).

Each benchmark is a script in this directory that also runs alone and prints its own tables:

    bench_makespan.py          1-2. makespan vs the critical path and the reference schedulers; faults
    bench_local_render.py      3.   local render speed and scaling, first run vs cached rerun
    bench_stitch.py            4.   stitch throughput (stream copy and re-encode), final mux
    bench_assembly_tail.py     4b.  assembly tail: last chunk done -> final video published (120 and 600 s)
    bench_dagster_overhead.py  5.   Dagster overhead per run, in-process and with the daemon
    bench_daemon_path.py       6.   the operated path: pipeline submit -> final video through the daemon,
                                    per run launcher and dagster.yaml, against pipeline render
    bench_concurrency.py       7.   concurrent pipeline render processes: crashes, duplicate paid creates,
                                    ledger vs cost tables (fake Replicate at create latency 0/0.5/2 s)
    bench_narration.py         11.  the narrated lecture with each provider: cold, up to date, forced
    bench_fleet.py             (only with --fleet: several minutes) 20 videos of mixed length submitted at
                                    once through the daemon: makespan vs the pool-limited bound, peak memory,
                                    paid creates vs the minimum

The combined output (Markdown) is also written to benchmarks/results/latest.md, each script's raw
numbers to benchmarks/results/<name>.json. Every benchmark uses temporary Dagster homes and data
directories; nothing touches the repository's data/.

Usage: python benchmarks/run_all.py [--only makespan stitch ...] [--quick] [--fleet]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH, RESULTS, load_averages, machine_info, table  # noqa: E402

BENCHMARKS = [
    ("makespan", "bench_makespan.py", [], ["--quick"]),
    ("local_render", "bench_local_render.py", [], ["--lengths", "15", "40"]),
    ("stitch", "bench_stitch.py", [], ["--lengths", "40", "120"]),
    ("assembly_tail", "bench_assembly_tail.py", [], ["--lengths", "20", "--repeat", "1"]),
    ("dagster_overhead", "bench_dagster_overhead.py", [], ["--repeat", "4"]),
    ("daemon_path", "bench_daemon_path.py", ["--repeat", "2", "--configs", "before,forkserver"], ["--quick"]),
    ("concurrency", "bench_concurrency.py", [], ["--latencies", "0.5", "--scenarios", "twins"]),
    ("narration", "bench_narration.py", [], ["--providers", "local"]),
]
OPTIONAL = [
    ("fleet", "bench_fleet.py", [], ["--videos", "4", "--max-beats", "4"]),
]
"""Benchmarks run only when asked for (``--fleet`` or ``--only fleet``): they take minutes."""


loadavg = load_averages


def load1() -> float:
    return loadavg()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHMARKS + OPTIONAL], help="run only these")
    ap.add_argument("--fleet", action="store_true", help="also the fleet benchmark (bench_fleet.py, minutes)")
    ap.add_argument("--quick", action="store_true", help="smaller variants of each benchmark (a smoke run)")
    ap.add_argument("--wait-quiet", type=float, default=60.0,
                    help="wait up to this many seconds for the 1-minute load average to drop below 1.0")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "latest.md"
    out = open(out_path, "w")

    def say(text: str = "") -> None:
        print(text, flush=True)
        out.write(text + "\n")
        out.flush()

    waited = 0.0
    while load1() >= 1.0 and waited < args.wait_quiet:
        time.sleep(5)
        waited += 5
    info = machine_info()
    say("# Benchmark run\n")
    say(f"Started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; 1-minute load average at start {load1():.2f}"
        + (" (the machine was busy: numbers may be inflated)" if load1() >= 1.0 else "") + ".\n")
    say(table([{"": k, "value": v} for k, v in info.items()]))
    failures = []
    started = time.perf_counter()
    timings = []
    chosen = BENCHMARKS + [b for b in OPTIONAL if args.fleet or (args.only and b[0] in args.only)]
    for name, script, full_args, quick_args in chosen:
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, str(BENCH / script), *(quick_args if args.quick else full_args)]
        say(f"\n---\n\n<!-- {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))} -->")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert proc.stdout is not None
        for line in proc.stdout:
            say(line.rstrip("\n"))
        rc = proc.wait()
        la = loadavg()
        timings.append({"benchmark": script, "wall_s": time.perf_counter() - t0, "exit": rc,
                        "load_avg_1/5/15_min_at_end": f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}"})
        if rc != 0:
            failures.append(script)
    say("\n---\n")
    say(table(timings))
    say("\nThe load average includes this benchmark's own processes (2 cores: a load of 2 is a busy machine).")
    say(f"\nAll benchmarks: {time.perf_counter() - started:.0f} s. Output: {out_path}")
    if failures:
        say(f"FAILED: {', '.join(failures)}")
    out.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
