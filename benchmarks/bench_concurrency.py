"""Concurrent ``pipeline render`` processes on one Dagster home and one data directory: do they all
succeed, and is every shared paid request bought once?

Replicate (against the fake Replicate server in its own process, ``FakeServerProcess`` from
``pipeline_tests.fake_replicate`` -- the benchmarks already use that package, see ``_server.py``;
predictions run 0.3-0.8 s, outputs at a quarter of the draft size), for each create latency
(``--latencies``, default 0, 0.5 and 2 s: how long a create takes before the prediction exists, the
window in which two processes could both decide to buy) and each scenario:

- ``twins``: two videos whose first two beats, style, music and seed are the same and whose third
  beat differs (3 x 5 s), two processes started together;
- ``same``: one spec (2 x 5 s), two processes started together (one renders; the other waits for
  the per-video render lock and prints "up to date");
- ``quad``: four videos sharing their first two beats and music, each with a beat of its own, four
  processes started together.

Each run is ``pipeline render SPEC --provider replicate`` as a real process (REPLICATE_API_TOKEN,
REPLICATE_BASE_URL and REPLICATE_OUTPUT_HOSTS point at the fake), all on a fresh temporary
DAGSTER_HOME and data directory per scenario. Columns: processes; exit codes and crashes (non-zero
exits); paid creates (the fake's predictions created), keys (distinct (model, input) pairs) and
duplicates (creates per key minus one, summed); shared requests obtained without paying: adopted
(a prediction another process was paying for) or cache hits; wall time (first start to last exit);
and the money check: the ledger's spend in the scenario's time window against the sum of the
videos' cost tables (``pipeline.costs.video_costs``) and the creates times the registry prices.

Local (``--local``, on by default): six concurrent ``pipeline render`` processes (local provider,
1 beat of 5 s) on a fresh DAGSTER_HOME (dagster.yaml only, no storage yet): six different specs,
then one spec six times. Columns: exit codes, crashes, "up to date" count, videos that decode.

Usage (from the repository root, with the venv):

    .venv/bin/python benchmarks/bench_concurrency.py                       # everything, ~8 min on 2 cores
    .venv/bin/python benchmarks/bench_concurrency.py --latencies 0.5 --scenarios twins --no-local

Prints Markdown tables (and the load average before and after); raw numbers go to
``benchmarks/results/concurrency.json``. Nothing touches the repository's ``data/``. The fake's
media rendering (ffmpeg, its music synthesizer) shares the machine with the renders, so wall times
include it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT, VENV_BIN, emit, heading, load_averages, machine_info, save_results, scratch_dir, table)

import yaml  # noqa: E402

TIMEOUT_S = 1500.0
SIZE = {"width": 854, "height": 480}  # 16:9 draft resolution: Wan's 480p tier
SEED = 4242
SHARED = [{"prompt": "A lighthouse keeper climbs the spiral stairs", "duration_s": 5},
          {"prompt": "The lamp turns over a stormy sea", "duration_s": 5, "motion": "slow orbit"}]
OWN = [{"prompt": "A small boat reaches the harbour", "duration_s": 5, "motion": "push in"},
       {"prompt": "Gulls circle the rocks at dawn", "duration_s": 5, "motion": "tilt up"},
       {"prompt": "Villagers run down the quay with lanterns", "duration_s": 5, "motion": "tracking"},
       {"prompt": "Fishing nets dry in the morning sun", "duration_s": 5}]
SCENARIOS = ("twins", "same", "quad")


# --- specs and processes -----------------------------------------------------------------------

def write_spec(path: Path, video_id: str, beats: list[dict], *, seed: int | None = SEED) -> Path:
    spec = {"video_id": video_id, "title": f"Concurrency {video_id}", "duration_s": sum(b["duration_s"] for b in beats),
            "aspect_ratio": "16:9", "style": "ink wash", "music": {"prompt": "slow cello drone", "bpm": 70},
            "beats": beats}
    if seed is not None:
        spec["seed"] = seed
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def scenario_specs(root: Path, scenario: str) -> list[tuple[str, Path]]:
    """(video_id, spec) per process of ``scenario``."""
    if scenario == "same":
        spec = write_spec(root / "same.yaml", "same-spec", SHARED)
        return [("same-spec", spec)] * 2
    n = 2 if scenario == "twins" else 4
    return [(f"{scenario}-{i}", write_spec(root / f"{scenario}-{i}.yaml", f"{scenario}-{i}", [*SHARED, OWN[i]]))
            for i in range(n)]


def child_env(root: Path, **extra: str) -> dict[str, str]:
    """This environment without PIPELINE_*/DAGSTER_*/REPLICATE_*, on ``root``'s home and data
    directory, importing this checkout's ``pipeline`` first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "DAGSTER_", "REPLICATE_"))}
    env.update(DAGSTER_HOME=str(root / "dagster_home"), PIPELINE_DATA_DIR=str(root / "data"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra)
    return env


def fresh_root(prefix: str) -> Path:
    root = scratch_dir(prefix)
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return root


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path
    code: int | None = None
    ended: float = 0.0
    output: str = field(default="", repr=False)


def run_together(argvs: list[list[str]], *, env: dict[str, str], logs: Path, timeout: float = TIMEOUT_S
                 ) -> tuple[list[Proc], float]:
    """Start every ``pipeline ARGV`` at once (own sessions, output to a log each); wait for all.
    A process still running at ``timeout`` is killed (its session) and reported as exit code -9.
    Returns the processes and the wall time (first start to last exit)."""
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    procs = []
    for i, argv in enumerate(argvs):
        log = logs / f"process-{i}.log"
        with open(log, "wb") as out:
            procs.append(Proc(subprocess.Popen([str(VENV_BIN / "pipeline"), *argv], cwd=ROOT, env=env, stdout=out,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True), log))
    deadline = t0 + timeout
    for p in procs:
        try:
            p.code = p.popen.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.code = -9
        p.ended = time.monotonic()
    for p in procs:  # the sessions' leftovers (workers die with their parent; this is a backstop)
        try:
            os.killpg(p.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.popen.wait()
        p.output = p.log.read_text(errors="replace")
    return procs, max(p.ended for p in procs) - t0


def crashes(procs: list[Proc]) -> int:
    return sum(p.code != 0 for p in procs)


def decoded(data: Path, video_ids: list[str], seconds: dict[str, float]) -> int:
    """How many of ``video_ids`` have a published video that decodes to its planned duration."""
    from pipeline import media

    ok = 0
    for v in video_ids:
        try:
            info = media.verify_video(data / "videos" / f"{v}.mp4")
        except Exception:  # noqa: BLE001 - a missing or broken video is counted, not raised
            continue
        ok += abs(info.frames / info.fps - seconds[v]) <= 1 / info.fps
    return ok


# --- replicate scenarios -----------------------------------------------------------------------

def replicate_scenario(scenario: str, latency: str) -> dict[str, Any]:
    from pipeline import costs, models
    from pipeline.ledger import Ledger, default_ledger_path
    from pipeline_tests.fake_replicate import FakeServerProcess

    root = fresh_root(f"conc-{scenario}")
    specs = scenario_specs(root, scenario)
    videos = sorted({v for v, _ in specs})
    seconds = {v: float(sum(b["duration_s"] for b in yaml.safe_load(s.read_text())["beats"])) for v, s in specs}
    fake_args = ("--create-latency", latency, "--run-seconds", "0.3", "0.8", "--render-scale", "0.25")
    with FakeServerProcess(*fake_args) as server:
        env = child_env(root, REPLICATE_API_TOKEN=server.token, REPLICATE_BASE_URL=server.base_url,
                        REPLICATE_OUTPUT_HOSTS=server.origin)
        since = time.time() - 1
        procs, wall = run_together([["render", str(spec), "--provider", "replicate"] for _, spec in specs],
                                   env=env, logs=root / "logs")
        until = time.time() + 1
        stats = server.stats()
    creates: dict[str, int] = stats["creates"]
    data = root / "data"
    row: dict[str, Any] = {
        "scenario": f"{scenario} x{len(specs)}", "create latency s": float(latency), "processes": len(procs),
        "exit codes": ",".join(str(p.code) for p in procs), "crashes": crashes(procs),
        "paid creates": sum(creates.values()), "create requests": stats["create_requests"], "keys": len(creates),
        "duplicates": sum(n - 1 for n in creates.values()), "up to date": sum("up to date" in p.output for p in procs),
        "videos ok": f"{decoded(data, videos, seconds)}/{len(videos)}", "wall s": wall,
    }
    registry = sum(n * models.get_model(k.rsplit(":", 1)[0]).price(SIZE).usd for k, n in creates.items())
    ledger_path = default_ledger_path(data)
    if ledger_path.exists():
        ledger = Ledger(ledger_path)
        views = []
        for v in videos:
            try:
                views.append(costs.video_costs(v, manifests=data / "manifests", ledger=ledger))
            except LookupError:
                pass
        ledger_usd = ledger.spent_between(since, until)
        tables_usd = round(sum(view.paid_usd for view in views), 6)
        notes = [line.note or "" for view in views for line in view.lines if line.reused_usd > 0]
        row.update({"adopted": sum(n.startswith("adopted") for n in notes),
                    "cache hits": sum(n.startswith("cache hit") for n in notes),
                    "ledger $": ledger_usd, "cost tables $": tables_usd, "creates x price $": round(registry, 6),
                    "money agrees": "yes" if abs(ledger_usd - tables_usd) < 1e-9 and abs(tables_usd - registry) < 1e-9
                    else "NO"})
    else:
        row.update({"adopted": 0, "cache hits": 0, "ledger $": 0.0, "cost tables $": 0.0,
                    "creates x price $": round(registry, 6), "money agrees": "no ledger"})
    row["failures"] = [f"{v}: exit {p.code}: {p.output[-1500:]}" for (v, _), p in zip(specs, procs) if p.code != 0]
    return row


# --- local renders -----------------------------------------------------------------------------

def local_six(same: bool) -> dict[str, Any]:
    root = fresh_root("conc-local-same" if same else "conc-local-diff")
    beats = [{"prompt": "A red kite rises over a green hill", "duration_s": 5, "motion": "slow pan"}]
    if same:
        spec = write_spec(root / "same.yaml", "local-same", beats, seed=None)
        specs = [("local-same", spec)] * 6
    else:
        specs = [(f"local-{i}", write_spec(root / f"local-{i}.yaml", f"local-{i}", beats, seed=None)) for i in range(6)]
    videos = sorted({v for v, _ in specs})
    procs, wall = run_together([["render", str(spec)] for _, spec in specs], env=child_env(root), logs=root / "logs")
    return {"scenario": "one spec x6" if same else "six specs", "processes": len(procs),
            "exit codes": ",".join(str(p.code) for p in procs), "crashes": crashes(procs),
            "up to date": sum("up to date" in p.output for p in procs),
            "videos ok": f"{decoded(root / 'data', videos, {v: 5.0 for v in videos})}/{len(videos)}", "wall s": wall,
            "failures": [f"{v}: exit {p.code}: {p.output[-1500:]}" for (v, _), p in zip(specs, procs) if p.code != 0]}


# --- main ----------------------------------------------------------------------------------------

REPLICATE_COLUMNS = ["scenario", "create latency s", "processes", "exit codes", "crashes", "paid creates", "keys",
                     "duplicates", "adopted", "cache hits", "up to date", "videos ok", "wall s", "ledger $",
                     "cost tables $", "creates x price $", "money agrees"]
LOCAL_COLUMNS = ["scenario", "processes", "exit codes", "crashes", "up to date", "videos ok", "wall s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latencies", nargs="+", default=["0", "0.5", "2"], help="fake create latencies, seconds")
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--no-local", dest="local", action="store_false", help="skip the six local renders")
    args = ap.parse_args(argv)

    load_before = load_averages()
    started = time.monotonic()
    rows = []
    for latency in args.latencies:
        for scenario in args.scenarios:
            row = replicate_scenario(scenario, latency)
            rows.append(row)
            print(f"  {row['scenario']} at {latency} s: crashes {row['crashes']}, duplicates {row['duplicates']}, "
                  f"{row['wall s']:.1f} s", file=sys.stderr, flush=True)
    local = [local_six(same) for same in (False, True)] if args.local else []
    load_after = load_averages()

    heading("Concurrent replicate renders (fake Replicate server, one data directory)")
    emit(table([{c: r[c] for c in REPLICATE_COLUMNS} for r in rows], floatfmt=".4g"))
    if local:
        heading("Six concurrent local renders on a fresh DAGSTER_HOME")
        emit(table([{c: r[c] for c in LOCAL_COLUMNS} for r in local], floatfmt=".1f"))
    emit(f"\nload average before {' '.join(f'{x:.2f}' for x in load_before)}, after "
         f"{' '.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} CPUs; total {time.monotonic() - started:.0f} s")
    for r in rows + local:
        for failure in r["failures"]:
            emit(f"\nFAILED {r['scenario']}: {failure}")
    save_results("concurrency", {"machine": machine_info(), "load_before": load_before, "load_after": load_after,
                                 "replicate": rows, "local": local})
    bad = any(r["crashes"] or r.get("duplicates") or r.get("money agrees", "yes") != "yes" for r in rows) \
        or any(r["crashes"] for r in local)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
