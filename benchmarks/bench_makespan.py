"""Makespan against the critical path and the common schedulers, and under transient faults.

Renders the benchmark specs (benchmarks/specs.py) with ``--provider replicate`` against the fake
Replicate server (pipeline_tests.fake_replicate, in its own process) whose prediction run times
are drawn per call from a fixed-seed log-normal distribution (benchmarks/_workload.py), scaled by
SCALE so a render takes seconds. The pipeline runs exactly as ``pipeline render`` does
(pipeline.orchestration.render.render_video: plan run, then segment runs + music in forked worker
processes, then the assemble run), in a temporary Dagster instance and data directory.

Reported in the same run:
- the critical-path lower bound: the longest beat chain (storyboard image + chunks) or the music,
  whichever is longer, from the draws, plus the stitch and mux times measured in the pipeline's run;
- the pipeline's makespan (render_video wall time, planning included, ``--repeat`` runs), with the
  provider polling on its real schedule scaled like the latencies (``--full`` adds constant 20 ms
  polling and a consolidated-event-log experiment);
- sequential, two-phase and batches-of-3 schedulers, simulated on the same draws (zero overhead,
  so any overhead the pipeline shows counts against it, not them);
- where the pipeline's time went on its critical path (orchestration vs provider wait vs media);
- the 60 s spec at two latency scales (how the ratio moves as calls get longer);
- faults: 10 % of the calls fail once (transiently), paid calls vs the minimum, makespan.

Usage: python benchmarks/bench_makespan.py [--quick | --full] [--repeat 2] [--scale 0.05] [--seed 7]
       python benchmarks/bench_makespan.py --real-latency     # the 12-beat spec at scale 1 (~6 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    INSTANCE_YAML,
    ORCHESTRATION_BUCKETS,
    PySpyAttach,
    emit,
    heading,
    save_results,
    scratch_dir,
    stack_shares,
    table,
    temp_env,
)
from _server import ServerProcess  # noqa: E402
from _workload import (  # noqa: E402
    REAL_BACKOFF_INITIAL_S,
    REAL_LATENCY,
    REAL_MAX_BACKOFF_S,
    REAL_MAX_POLL_INTERVAL_S,
    REAL_POLL_INTERVAL_S,
    Workload,
    batches,
    critical_path,
    pick_failures,
    pipeline_policy,
    poll_detect_delay,
    sequential,
    two_phase,
    workload_for_spec,
)
from specs import makespan_specs  # noqa: E402

DEFAULT_SCALE = 0.05
"""1 benchmark second = 20 real seconds: a 45 s chunk takes ~2.25 s."""
DEFAULT_SEED = 7
TIGHT_POLL_S = 0.02
CAPPED_MAX_POLL_INTERVAL_S = 2.0


def _patch_provider_timings(poll_s: float, max_poll_s: float, backoff_s: float, max_backoff_s: float) -> None:
    """Give the replicate provider these polling/backoff timings.

    PipelineResource exposes only the first poll interval (``replicate_poll_interval_s``); the
    provider's other timings (max poll interval 10 s, create backoff 1 s .. 60 s) are constructor
    options. The benchmark wraps ``get_provider`` in pipeline.defs.resources (in this process; the
    forked workers inherit it) to scale them like the latencies. Pipeline code is unchanged.
    """
    import pipeline.defs.resources as resources

    original = getattr(resources.get_provider, "__wrapped__", resources.get_provider)

    def get_provider(name: str, **options: Any):
        if name == "replicate":
            options = {**options, "poll_interval_s": poll_s, "max_poll_interval_s": max_poll_s,
                       "backoff_initial_s": backoff_s, "max_backoff_s": max_backoff_s}
        return original(name, **options)

    get_provider.__wrapped__ = original
    resources.get_provider = get_provider


def _events(instance, run_id: str) -> list[tuple[str, float, str | None]]:
    out = []
    for e in instance.all_logs(run_id):
        if e.dagster_event is not None:
            out.append((e.dagster_event.event_type_value, e.timestamp, e.step_key))
    return out


def _first(events, kind: str, step: str | None = None) -> float | None:
    for k, ts, s in events:
        if k == kind and (step is None or s == step):
            return ts
    return None


def _last(events, kind: str, step: str | None = None) -> float | None:
    found = None
    for k, ts, s in events:
        if k == kind and (step is None or s == step):
            found = ts
    return found


def run_pipeline(spec: Path, workload: Workload, *, seed: int, scale: float, polling: str, max_parallel: int,
                 fault_kind: str | None = None, fault_options: dict | None = None,
                 instance_yaml: str = INSTANCE_YAML) -> dict[str, Any]:
    """Render ``spec`` against a fresh fake server; return timings, server stats and a breakdown."""
    import logging

    import dagster as dg

    from pipeline.definitions import build_definitions
    from pipeline.orchestration.render import render_video
    from pipeline.generation import read_call_log
    from pipeline.store import Workspace

    # The provider logs each retried create as a warning; expected here, and noise in the tables.
    logging.getLogger("pipeline.providers.replicate").setLevel(logging.ERROR)

    if polling == "production":
        poll = (REAL_POLL_INTERVAL_S * scale, REAL_MAX_POLL_INTERVAL_S * scale)
    elif polling == "capped":  # the recommended schedule: the same, but never more than 2 s apart
        poll = (REAL_POLL_INTERVAL_S * scale, CAPPED_MAX_POLL_INTERVAL_S * scale)
    else:
        poll = (TIGHT_POLL_S, TIGHT_POLL_S)
    _patch_provider_timings(poll[0], poll[1], REAL_BACKOFF_INITIAL_S * scale, REAL_MAX_BACKOFF_S * scale)
    server_cfg = dict(seed=seed, scale=scale, failed=sorted(workload.failed), fault_kind=fault_kind,
                      fault_options=fault_options or {})
    with ServerProcess(**server_cfg) as server, temp_env("makespan", instance_yaml=instance_yaml) as root:
        os.environ["REPLICATE_API_TOKEN"] = server.token
        os.environ["REPLICATE_BASE_URL"] = server.base_url
        try:
            data = root / "data"
            defs = build_definitions(str(data), replicate_output_hosts=[server.origin],
                                     replicate_poll_interval_s=poll[0])
            with dg.DagsterInstance.get() as instance:
                t0 = time.time()
                report = render_video(spec, defs=defs, instance=instance, provider="replicate",
                                      max_parallel=max_parallel)
                t1 = time.time()
                if report.final is None:
                    raise RuntimeError(f"render failed: {[r.error for r in report.failed]}")
                runs = {r.name: (r, _events(instance, r.run_id)) for r in report.runs}
            calls = read_call_log(Workspace.at(data))
            stats = server.stats()
        finally:
            os.environ.pop("REPLICATE_API_TOKEN", None)
            os.environ.pop("REPLICATE_BASE_URL", None)
    return analyse(workload, t0, t1, runs, calls, stats, poll)


def analyse(w: Workload, t0: float, t1: float, runs: dict, calls: list[dict], stats: dict,
            poll: tuple[float, float]) -> dict[str, Any]:
    preds = stats["predictions"]
    by_key: dict[str, list[dict]] = {}
    for p in preds:
        by_key.setdefault(p["key"], []).append(p)
    unknown = sorted(set(by_key) - set(w.keys))
    missing = sorted(set(w.keys) - set(by_key))
    if unknown or missing:
        raise RuntimeError(f"the server saw other calls than the workload predicts: unknown {unknown[:3]}, "
                           f"missing {missing[:3]} (did the pipeline's prompts or seeds change?)")
    for k, ps in by_key.items():
        for p in ps:
            if p["run_s"] is None or abs(p["run_s"] - w.draws[k]) > 1e-9:
                raise RuntimeError(f"{k}: server drew {p['run_s']}, workload {w.draws[k]}")
    # By stage, whatever the method: stitch-clips-v1 / stitch-v1, mux-copy-v1 / mux-loudnorm-v1.
    stitch_s = sum(c["seconds"] for c in calls if c.get("stage") == "stitched_video")
    mux_s = sum(c["seconds"] for c in calls if c.get("stage") == "final_video")
    lastframe: dict[str, float] = {}
    for c in calls:
        if c.get("model") == "last-frame-v1":
            lastframe[c.get("segment", "")] = lastframe.get(c.get("segment", ""), 0.0) + c["seconds"]

    # The critical run: the segment or music run that finished last.
    work_runs = {n: v for n, v in runs.items() if n.startswith("segment ") or n == "music"}
    crit_name = max(work_runs, key=lambda n: _last(work_runs[n][1], "PIPELINE_SUCCESS") or 0.0)
    crit_events = work_runs[crit_name][1]
    plan_events = runs["video_spec"][1]
    asm_events = runs["assemble"][1]
    if crit_name == "music":
        keys = [w.music]
        seg = None
    else:
        seg = crit_name.split()[1]
        beat = next(b for b in w.beats if f"{b.index:03d}" == seg)
        keys = beat.keys
    cpreds = sorted((p for k in keys for p in by_key[k]), key=lambda p: p["created_at"])
    model_time = sum(p["run_s"] for p in cpreds)
    in_server = sum(p["completed_at"] - p["created_at"] for p in cpreds)
    first_create, last_done = cpreds[0]["created_at"], max(p["completed_at"] for p in cpreds)
    between = (last_done - first_create) - in_server
    poll_est = sum(poll_detect_delay(p["run_s"], poll[0], poll[1]) for p in cpreds)
    retries = sum(1 for k, _, _ in crit_events if k == "STEP_UP_FOR_RETRY")
    retry_wait = 0.0
    # STEP_UP_FOR_RETRY -> STEP_RESTARTED: the RetryPolicy delay (and the re-launch of the step).
    pending = None
    for k, ts, s in crit_events:
        if k == "STEP_UP_FOR_RETRY":
            pending = ts
        elif k == "STEP_RESTARTED" and pending is not None:
            retry_wait += ts - pending
            pending = None
    handoff = 0.0
    sb_end, cv_start = _last(crit_events, "STEP_SUCCESS", "storyboard_images"), _first(crit_events, "STEP_START", "chunk_videos")
    if sb_end and cv_start:
        handoff = max(0.0, cv_start - sb_end)
    lf = lastframe.get(seg or "", 0.0)
    plan_start, plan_end = _first(plan_events, "PIPELINE_START"), _last(plan_events, "PIPELINE_SUCCESS")
    crit_start, crit_end = _first(crit_events, "PIPELINE_START"), _last(crit_events, "PIPELINE_SUCCESS")
    asm_start, asm_end = _first(asm_events, "PIPELINE_START"), _last(asm_events, "PIPELINE_SUCCESS")
    between_other = between - handoff - lf - retry_wait
    rows = [
        ("render start -> plan run started (submit spec, partitions, run setup)", plan_start - t0, "orchestration"),
        ("plan run (video_spec)", plan_end - plan_start, "orchestration"),
        (f"plan run end -> critical run ({crit_name}) started (fork worker, run setup)", crit_start - plan_end,
         "orchestration"),
        ("run started -> first provider call created (steps start, inputs load)", first_create - crit_start,
         "orchestration"),
        ("model time of the chain's predictions (the draws)", model_time, "provider (model)"),
        ("fake server beyond the draws (rendering, thread start)", in_server - model_time, "provider (fake)"),
        ("between calls: polling, create POST, download, verify", between_other, "provider (polling/IO)"),
        ("between calls: last-frame extraction", lf, "media"),
        ("between calls: step hand-off storyboard_images -> chunk_videos", handoff, "orchestration"),
        ("between calls: Dagster RetryPolicy wait after a failed prediction", retry_wait, "orchestration (retry)"),
        ("last call done -> run succeeded (poll, download, verify, last frame, outputs)", crit_end - last_done,
         "provider (polling/IO)"),
        ("critical run end -> assemble run started", asm_start - crit_end, "orchestration"),
        ("assemble: stitch", stitch_s, "media"),
        ("assemble: mux (stream copy of the finished track)", mux_s, "media"),
        ("assemble: Dagster overhead", (asm_end - asm_start) - stitch_s - mux_s, "orchestration"),
        ("assemble run end -> render_video returns", t1 - asm_end, "orchestration"),
    ]
    makespan = t1 - t0
    categories: dict[str, float] = {}
    for _, s, cat in rows:
        categories[cat.split(" (")[0] if cat.startswith("orchestration") else cat] = \
            categories.get(cat.split(" (")[0] if cat.startswith("orchestration") else cat, 0.0) + s
    return {
        "makespan_s": makespan, "stitch_s": stitch_s, "mux_s": mux_s,
        "bound_s": critical_path(w, stitch_s, mux_s),
        "critical_run": crit_name, "breakdown": rows, "categories": categories,
        "poll_estimate_s": poll_est, "step_retries": retries,
        "all_step_retries": sum(1 for _, (r, ev) in runs.items() for k, _, _ in ev if k == "STEP_UP_FOR_RETRY"),
        "creates": stats["creates"], "create_requests": stats["create_requests"],
        "predictions": len(preds), "statuses": _count(p["status"] for p in preds),
        "run_seconds": {n: r.seconds for n, (r, _) in runs.items()},
    }


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def poll_schedule_rows() -> list[dict[str, Any]]:
    import math
    import random

    rng = random.Random(1)
    rows = []
    for kind, (median, sigma) in REAL_LATENCY.items():
        ds = [rng.lognormvariate(math.log(median), sigma) for _ in range(20000)]
        now = statistics.mean(poll_detect_delay(d, REAL_POLL_INTERVAL_S, REAL_MAX_POLL_INTERVAL_S) for d in ds)
        capped = statistics.mean(poll_detect_delay(d, REAL_POLL_INTERVAL_S, 2.0) for d in ds)
        mean = statistics.mean(ds)
        rows.append({"call": kind, "mean_run_s": mean, "seen_late_by_s (1 s..10 s)": now,
                     "as_%_of_run": 100 * now / mean, "seen_late_by_s (cap 2 s)": capped})
    return rows


def scheduler_rows(w: Workload, stitch_s: float, mux_s: float, retry_delay_s: float = 0.0) -> list[tuple[str, float]]:
    return [
        ("sequential (one call at a time)", sequential(w, stitch_s, mux_s, retry_delay_s)),
        ("two-phase (all reference chunks, then all continuous chunks)", two_phase(w, stitch_s, mux_s, retry_delay_s)),
        ("batches of 3 scenes, failures isolated", batches(w, stitch_s, mux_s, 3, retry_delay_s)),
    ]


CONSOLIDATED_YAML = """telemetry:
  enabled: false
event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {base_dir}
"""


PROFILE_BUCKETS = [
    ("provider: polling (GETs and the sleeps between them)", ["ReplicateProvider._poll"]),
    ("provider: create POST (incl. retries, lookups)", ["ReplicateProvider._create", "ReplicateProvider._lookup"]),
    ("provider: download output", ["ReplicateProvider._download"]),
    ("provider: input image as data URI", ["image_data_uri"]),
    ("media: decode-verify outputs", ["probe (pipeline/media.py)", "verify_image"]),
    ("media: last-frame extraction (ffmpeg)", ["extract_last_frame"]),
    ("pipeline: prediction ledger (SQLite)", ["pipeline/ledger.py"]),
    ("pipeline: cache, store, manifests", ["pipeline/store.py", "pipeline/generation.py", "io_manager.py"]),
    *ORCHESTRATION_BUCKETS,
]


def profile_run(spec: Path, w: Workload, *, seed: int, scale: float, workers: int) -> None:
    """One more production-polling run, sampled by py-spy (wall time, every worker process)."""
    out = scratch_dir("prof") / "stacks.txt"
    try:
        with PySpyAttach(os.getpid(), out, rate=25):
            r = run_pipeline(spec, w, seed=seed, scale=scale, polling="production", max_parallel=workers)
    except Exception as exc:  # noqa: BLE001 - the profile is an explanation, not the measurement
        emit(f"\n(profile run failed: {type(exc).__name__}: {exc})")
        return
    if not out.exists():
        emit("\n(py-spy wrote no profile; is ptrace allowed?)")
        return
    total, rows = stack_shares(out, within="_worker_execute", buckets=PROFILE_BUCKETS)
    heading(f"Profile: where the segment and music runs' worker processes spent their wall time (py-spy, "
            f"{total} samples at 25 Hz over {workers} workers; makespan {r['makespan_s']:.1f} s under the profiler)", 4)
    emit(table(rows, floatfmt=".1f"))


def _breakdown(label: str, r: dict[str, Any]) -> None:
    heading(f"{label}: where the critical path's time went ({r['critical_run']})", 4)
    emit(table([{"interval": a, "seconds": s, "category": c} for a, s, c in r["breakdown"]]
               + [{"interval": "**makespan**", "seconds": r["makespan_s"], "category": ""}]))
    cats = r["categories"]
    emit("\nBy category: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(cats.items(), key=lambda kv: -kv[1]))
         + f". Of the polling/IO time, the poll schedule alone accounts for about {r['poll_estimate_s']:.2f} s.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=DEFAULT_SCALE, help="latency scale (default 0.05 = 1/20)")
    ap.add_argument("--sweep-scale", type=float, default=0.25, help="second scale for the 60 s spec")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--quick", action="store_true", help="one pipeline run of the 12-beat spec, one fault (smoke test)")
    ap.add_argument("--repeat", type=int, default=2, help="pipeline runs of the 12-beat spec (default 2)")
    ap.add_argument("--full", action="store_true",
                    help="also tight polling, the consolidated event log experiment and the 429 fault scenario")
    ap.add_argument("--fault-fraction", type=float, default=0.10)
    ap.add_argument("--profile", action="store_true", help="profile a run even if the target is met")
    ap.add_argument("--sweep-only", action="store_true", help="only the 60 s spec at two scales (part 2)")
    ap.add_argument("--real-latency", action="store_true",
                    help="only the 12-beat spec at scale 1 (real latencies), production and capped polling (~6 min)")
    ap.add_argument("--no-profile", action="store_true", help="never profile")
    args = ap.parse_args(argv)
    scale, seed = args.scale, args.seed
    for kind in ("IMAGE", "VIDEO", "MUSIC"):  # the workload assumes the registry's default models
        os.environ.pop(f"REPLICATE_{kind}_MODEL", None)

    heading("Makespan vs the critical path (fake Replicate, log-normal latencies)", 2)
    emit(f"Latency model: log-normal per call, seeded by (seed={seed}, model, prompt, input seed); assumed real "
         f"medians/sigma {', '.join(f'{k} {m:g} s/{s:g}' for k, (m, s) in REAL_LATENCY.items())}, "
         f"all times x{1.0 if args.real_latency else scale:g}. Provider polling 'production' = the provider's real schedule ({REAL_POLL_INTERVAL_S:g} s "
         f"first interval, x1.5 per poll, capped at {REAL_MAX_POLL_INTERVAL_S:g} s) x the same; 'tight' = constant "
         f"{TIGHT_POLL_S * 1000:g} ms. Reference schedulers are simulated on the same draws with zero overhead.")
    results: dict[str, Any] = {"scale": scale, "seed": seed}
    scratch = str(scratch_dir("specs"))
    specs = makespan_specs(Path(scratch))

    if args.real_latency:
        part_real(args, specs, scratch, results)
        save_results("makespan-real-latency", results)
        return 0
    if not args.sweep_only:
        part_one(args, specs, scratch, results)
    if not args.quick:
        part_two(args, specs, scratch, results)
    if not args.sweep_only:
        part_three(args, specs, scratch, results)
    save_results("makespan-sweep" if args.sweep_only else "makespan", results)
    return 0


def part_one(args, specs: dict[str, Path], scratch: str, results: dict[str, Any]) -> None:
    """The 12-beat spec: the pipeline against the bound and the reference schedulers."""
    scale, seed = args.scale, args.seed
    name = "mixed-12"
    spec = specs[name]
    w = workload_for_spec(str(spec), seed=seed, scale=scale, scratch=scratch)
    workers = len(w.beats) + 1
    heading(f"{name}: {len(w.beats)} beats ({', '.join(f'{b.duration_s:g}' for b in w.beats)} s = "
            f"{sum(b.duration_s for b in w.beats):g} s), {sum(len(b.chunks) for b in w.beats)} chunks, "
            f"{len(w.keys)} provider calls; `render_video(..., max_parallel={workers})`", 3)
    variants = [(f"production polling, run {i + 1}", "production", INSTANCE_YAML)
                for i in range(1 if args.quick else args.repeat)]
    if args.full:
        variants += [("tight polling", "tight", INSTANCE_YAML),
                     ("production polling, consolidated SQLite event log (experiment)", "production",
                      CONSOLIDATED_YAML.format(base_dir=scratch_dir("evlog")))]
    runs = {label: run_pipeline(spec, w, seed=seed, scale=scale, polling=polling, max_parallel=workers,
                                instance_yaml=yaml_text)
            for label, polling, yaml_text in variants}
    stitch_s = statistics.median(r["stitch_s"] for r in runs.values())
    mux_s = statistics.median(r["mux_s"] for r in runs.values())
    bound = critical_path(w, stitch_s, mux_s)
    chain = max(max(w.chain(b) for b in w.beats), w.draws[w.music])
    rows = [{"schedule": "critical-path lower bound", "makespan_s": bound, "x_bound": 1.0,
             "how": f"longest chain {chain:.2f} s (draws) + stitch {stitch_s:.2f} + mux {mux_s:.2f} (measured, median)"}]
    for label, r in runs.items():
        rows.append({"schedule": f"this pipeline, {label}", "makespan_s": r["makespan_s"],
                     "x_bound": r["makespan_s"] / r["bound_s"],
                     "how": f"measured (x of this run's own bound {r['bound_s']:.2f} s); orchestration "
                            f"{r['categories'].get('orchestration', 0):.2f} s, polling/IO "
                            f"{r['categories'].get('provider (polling/IO)', 0):.2f} s"})
    for label, value in scheduler_rows(w, stitch_s, mux_s):
        rows.append({"schedule": label, "makespan_s": value, "x_bound": value / bound, "how": "simulated, same draws"})
    emit(table(rows))
    prod = [r for label, r in runs.items() if label.startswith("production polling, run")]
    ratio = statistics.median(r["makespan_s"] / r["bound_s"] for r in prod)
    emit(f"\nTarget: makespan within 1.10x of the bound: {ratio:.2f}x (median of {len(prod)} runs) -> "
         f"{'met' if ratio <= 1.10 else 'MISSED'}.")
    for label, r in runs.items():
        if label.endswith("run 1") or not label.startswith("production polling, run"):
            _breakdown(f"{name}, {label}", r)
    if (ratio > 1.10 or args.profile) and not args.no_profile:
        profile_run(spec, w, seed=seed, scale=scale, workers=workers)
    heading(f"{name}: this pipeline's policy simulated at other max_parallel values (same draws, zero overhead)", 4)
    emit(table([{"max_parallel": p, "makespan_s": pipeline_policy(w, stitch_s, mux_s, p),
                 "x_bound": pipeline_policy(w, stitch_s, mux_s, p) / bound} for p in (1, 2, 3, 4, 6, workers)]))
    results[name] = {"runs": runs, "bound_s": bound, "stitch_s": stitch_s, "mux_s": mux_s, "draws": w.draws,
                     "references": dict(scheduler_rows(w, stitch_s, mux_s))}

    heading("The provider's poll schedule at real latencies (analytic, 20 000 draws per kind)", 4)
    emit(table(poll_schedule_rows()))
    emit("\nPolls at 1 s, then x1.5 per poll up to 10 s apart (the provider's defaults): a call is seen this long "
         "after it finishes, on average. Capping the interval at 2 s costs a few more GETs (free) per call.")



def scale_row(spec: Path, *, seed: int, scale: float, polling: str, scratch: str) -> tuple[dict, dict]:
    """One production-like run of ``spec`` at latency ``scale``: a row for the scale tables."""
    w = workload_for_spec(str(spec), seed=seed, scale=scale, scratch=scratch)
    r = run_pipeline(spec, w, seed=seed, scale=scale, polling=polling, max_parallel=len(w.beats) + 1)
    ch = max(max(w.chain(b) for b in w.beats), w.draws[w.music])
    refs = dict(scheduler_rows(w, r["stitch_s"], r["mux_s"]))
    row = {
        "scale": scale, "polling": polling if polling == "production" else
        f"capped at {CAPPED_MAX_POLL_INTERVAL_S:g} s x{scale:g}",
        "longest_chain_s": ch, "stitch_mux_s": r["stitch_s"] + r["mux_s"], "bound_s": r["bound_s"],
        "pipeline_s": r["makespan_s"], "x_bound": r["makespan_s"] / r["bound_s"],
        "orchestration_s": r["categories"].get("orchestration", 0.0),
        "polling_io_s": r["categories"].get("provider (polling/IO)", 0.0),
        **{short: v for short, v in zip(("sequential_s", "two_phase_s", "batches_of_3_s"), refs.values())},
    }
    return row, r


def part_two(args, specs: dict[str, Path], scratch: str, results: dict[str, Any]) -> None:
    """The 60 s spec at two latency scales, and with the poll interval capped."""
    name = "mixed-60"
    heading(f"{name}: the 60 s spec (6 beats of 5, 10 and 15 s) at two latency scales", 3)
    rows = []
    for sc, polling in ((args.scale, "production"), (args.sweep_scale, "production"), (args.sweep_scale, "capped")):
        row, r = scale_row(specs[name], seed=args.seed, scale=sc, polling=polling, scratch=scratch)
        rows.append(row)
        results.setdefault(name, {})[f"{sc}-{polling}"] = r
    emit(table(rows))
    emit("\nsequential / two-phase / batches of 3: simulated on the same draws, with this run's stitch and mux. "
         f"'capped': the provider's poll schedule with its interval capped at {CAPPED_MAX_POLL_INTERVAL_S:g} s "
         "(scaled), the recommended change.")


def part_real(args, specs: dict[str, Path], scratch: str, results: dict[str, Any]) -> None:
    """The 12-beat spec at real latencies (scale 1): slow (~3 min a run), not part of make bench."""
    name = "mixed-12"
    heading(f"{name} at real latencies (scale 1), production and capped polling", 3)
    rows = []
    for polling in ("production", "capped"):
        row, r = scale_row(specs[name], seed=args.seed, scale=1.0, polling=polling, scratch=scratch)
        rows.append(row)
        results.setdefault("real", {})[polling] = r
        _breakdown(f"{name}, scale 1, {polling} polling", r)
    heading(f"{name} at real latencies: summary", 4)
    emit(table(rows))


def part_three(args, specs: dict[str, Path], scratch: str, results: dict[str, Any]) -> None:
    """Transient faults on the 12-beat spec: paid calls vs the minimum, makespan."""
    scale, seed = args.scale, args.seed
    name = "mixed-12"
    spec = specs[name]
    w = workload_for_spec(str(spec), seed=seed, scale=scale, scratch=scratch)
    w.failed = pick_failures(w, args.fault_fraction, seed)
    workers = len(w.beats) + 1
    scenarios = [("abort", {}, "prediction ends `aborted` (transient; Dagster RetryPolicy re-runs the step)", True)]
    if not args.quick:
        scenarios.append(("server_error", {"status": 503, "after_create": True},
                          "create answers 503 after creating the prediction (ambiguous; provider looks it up)", False))
    if args.full:
        scenarios.append(("rate_limit", {"retry_after": round(REAL_BACKOFF_INITIAL_S * scale, 3)},
                          "create answers 429 with Retry-After (nothing created; provider waits and retries)", False))
    heading(f"Faults: {name}, {len(w.failed)} of {len(w.keys)} provider calls ({args.fault_fraction:.0%}) fail "
            "once, production polling", 3)
    fault_rows, fault_results = [], {}
    for kind, options, what, extra_paid in scenarios:
        r = run_pipeline(spec, w, seed=seed, scale=scale, polling="production", max_parallel=workers,
                         fault_kind=kind, fault_options=options)
        minimum = len(w.keys) + (len(w.failed) if extra_paid else 0)
        wf = w if extra_paid else Workload(w.beats, w.music, w.draws)
        fbound = critical_path(wf, r["stitch_s"], r["mux_s"])
        fault_rows.append({"fault": what, "calls": len(w.keys), "failed": len(w.failed),
                           "paid_creates": r["creates"], "minimum": minimum, "extra_paid": r["creates"] - minimum,
                           "step_retries": r["all_step_retries"], "makespan_s": r["makespan_s"], "bound_s": fbound,
                           "x_bound": r["makespan_s"] / fbound})
        fault_results[kind] = r
    emit(table(fault_rows))
    emit("\nminimum: one paid create per call, plus one per failed prediction when the failure used one up "
         "(an aborted prediction). A 5xx after create or a 429 needs no extra paid call. bound: the critical path "
         "with each failed call run twice back to back (no retry delay).")
    if "abort" in fault_results:
        r = fault_results["abort"]
        wf_bound = critical_path(w, r["stitch_s"], r["mux_s"])
        heading("Aborted predictions: this pipeline against the reference schedulers (same draws and failures; "
                "the references retry at once)", 4)
        emit(table([{"schedule": "critical-path lower bound", "makespan_s": wf_bound}]
                   + [{"schedule": "this pipeline (measured)", "makespan_s": r["makespan_s"]}]
                   + [{"schedule": label, "makespan_s": v} for label, v in scheduler_rows(w, r["stitch_s"], r["mux_s"])]))
        _breakdown("Aborted predictions", r)
    results["faults"] = {"failed": sorted(w.failed), "rows": fault_rows, "runs": fault_results}


if __name__ == "__main__":
    sys.exit(main())
