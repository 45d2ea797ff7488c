"""The fleet: N videos of mixed length submitted at once through the daemon path against the fake
Replicate server, makespan against the bound the pool limits set, peak memory, paid creates.

What runs. ``--videos`` (20) specs from benchmarks/specs.py ``fleet_specs``: 2-12 beats each (beat
counts spread evenly, shuffled), beats of 5, 10 or 15 s, seeded (``--spec-seed``), every video with
its own seed and prompts, ``provider: replicate``. A fresh temporary DAGSTER_HOME and data directory
(pipeline_tests.dagster_services.DagsterStack: the repository's dagster.yaml -- run launcher, run
queue, pools, run limits, retries, monitoring -- with storage moved into the temporary home),
``dagster-daemon run``, the fake Replicate server in its own process (benchmarks/_server.py:
per-call run times drawn as in bench_makespan.py from ``--seed``, multiplied by ``--scale``), a
warm-up video (local provider, 1 beat: the daemon's fork server and code server are up, as on a
daemon that has been running; ``--cold`` skips it). Then every spec goes through ``pipeline
submit`` (its code, in this process, one after the other: ``--submit inprocess``; or one
``pipeline submit`` command each: ``--submit subprocess``) into the inbox, and the benchmark waits
until every video's ``final_video`` is materialized (``--timeout``; a video whose runs failed for
good is reported, not waited for).

Polling. With ``--polling scaled`` (default) the daemon loads the pipeline through a generated
workspace module that gives the replicate provider its production timings multiplied by
``--scale`` (first poll 1 s, cap 2 s, create backoff 1..60 s; reads budget 1500/min divided by
the scale), and the fake's rate-limit window is 60 s x scale: time runs ``1/scale`` times faster
everywhere, so the ratio to the bound means what it would at real latencies (minus the fixed costs
that do not scale: sensor ticks, run launch, Dagster's event writes, ffmpeg). ``--polling
production`` leaves the provider and the fake's limits as in production.

The bound. A lower bound on the makespan (first submit -> last final_video) from the draws and the
instance's limits (read from dagster.yaml: pools' default_limit P = 13, granularity, run limit R =
max_concurrent_runs = 20, per-video run limit V = 13); ``chain(b)`` = the draw of beat b's
storyboard image + the draws of its chunks (a chain: chunk k starts from chunk k-1's last frame),
``music(v)`` = the draw of video v's music, ``asm(v)`` = the stitch + mux seconds measured in v's
assemble run (pipeline's call log). The bound is the largest of:

- critical path: max over videos of max(max_b chain(b), music(v)) + asm(v);
- each pool: the calls that hold its slots / P, + min_v asm(v) (the last call to finish belongs to
  some video, which still has to be assembled). With granularity ``run`` a segment run holds an
  image_api *and* a video_api slot for its whole run, so both pools' busy time is the sum of all
  chains (≥ what the run holds them for); with granularity ``op``, image_api holds the images and
  video_api the chunks. music_api: the sum of the music draws;
- run slots: (sum of chains + sum of music + sum of asm) / R (segment, music and assemble runs each
  hold a run slot at least that long; plan runs are not counted);
- per video: with V ≥ beats + 1 (13 ≥ 12 + 1 here) a video's runs all fit at once, so V adds
  nothing beyond its critical path (checked, warned about otherwise).

Overheads that are not in the draws (planning, sensor ticks, queueing, run launch, last-frame
extraction, downloads, polling lateness) are not in the bound, so the ratio makespan / bound counts
them against the pipeline. A zero-overhead simulation of the same limits (the run queue in its
order: videos in submit order, each video's segment runs longest first with music after the
longer half, every run started as soon as every limit has room) is reported beside it: the part of
the gap that the limits plus first-come-first-served order leave, before any overhead.

Also reported: per-video makespan (first submit -> its final_video), peak memory of the daemon's
process tree (daemon, code server, fork server, run workers, their ffmpeg; summed RSS and PSS
from /proc/<pid>/smaps_rollup every 0.5 s) and of the fake server, paid creates (predictions the
fake created) against the minimum (distinct calls in the plans), duplicate creates (a call created
twice), failed runs, the peak number of runs in progress, CPU busy share of the machine, load.

Target (issue 11): every video finishes, paid creates = minimum, makespan <= 1.2 x bound.

Usage: python benchmarks/bench_fleet.py [--videos 20] [--scale 0.05] [--seed 7] [--spec-seed 11]
       [--min-beats 2] [--max-beats 12] [--polling scaled|production] [--submit inprocess|subprocess]
       [--pool-limit N] [--render-scale 0.25] [--cold] [--timeout 1800] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    VENV_BIN,
    TreeSampler,
    cpu_times,
    emit,
    heading,
    load_averages,
    save_results,
    table,
)

DEFAULT_SCALE = 0.05
"""1 benchmark second = 20 real seconds: a 45 s chunk takes ~2.25 s."""
DEFAULT_SEED = 7
WARMUP_VIDEO = "bench-fleet-warmup"

SCALED_DEFS_MODULE = '''"""The pipeline's definitions with the replicate provider's timings scaled by {scale!r}
(benchmark, generated by benchmarks/bench_fleet.py; pipeline code unchanged)."""
import pipeline.defs.resources as _resources
from pipeline.defs.resources import ReplicateSettings as _Settings
from pipeline.providers.replicate.ratelimit import DEFAULT_MAX_READS_PER_MINUTE as _READS

SCALE = {scale!r}
_original = getattr(_resources.get_provider, "__wrapped__", _resources.get_provider)
_defaults = _Settings()


def _get_provider(name, **options):
    if name == "replicate":
        options = {{**options, "poll_interval_s": _defaults.poll_interval_s * SCALE,
                    "max_poll_interval_s": _defaults.max_poll_interval_s * SCALE,
                    "backoff_initial_s": 1.0 * SCALE, "max_backoff_s": 60.0 * SCALE,
                    "max_reads_per_minute": _READS / SCALE}}
    return _original(name, **options)


_get_provider.__wrapped__ = _original
_resources.get_provider = _get_provider

from pipeline.definitions import defs  # noqa: E402,F401
'''


# --- the instance's limits ----------------------------------------------------------------------

def instance_limits(pool_limit: int | None = None) -> dict[str, Any]:
    """The limits the bound uses, from the repository's dagster.yaml: pool slots (default_limit,
    or ``pool_limit``), pool granularity, max_concurrent_runs and the per-video run limit."""
    import yaml

    conc = (yaml.safe_load((ROOT / "dagster.yaml").read_text()) or {}).get("concurrency") or {}
    pools = conc.get("pools") or {}
    runs = conc.get("runs") or {}
    per_video = next((t.get("limit") for t in runs.get("tag_concurrency_limits") or [] if t.get("key") == "video"),
                     None)
    return {"pool_slots": int(pool_limit if pool_limit is not None else pools.get("default_limit", 1)),
            "granularity": pools.get("granularity", "op"),
            "run_slots": int(runs.get("max_concurrent_runs", 10**6)),
            "per_video": int(per_video) if per_video else None}


def instance_overrides(pool_limit: int | None) -> dict[str, Any]:
    """dagster.yaml sections to replace (``write_instance_yaml``): only the pools' default limit."""
    if pool_limit is None:
        return {}
    import yaml

    conc = (yaml.safe_load((ROOT / "dagster.yaml").read_text()) or {})["concurrency"]
    conc["pools"]["default_limit"] = pool_limit
    return {"concurrency": conc}


# --- the bound and the zero-overhead schedule ---------------------------------------------------

def fleet_bound(workloads: dict[str, Any], asm: dict[str, float], limits: dict[str, Any]) -> dict[str, Any]:
    """The lower bound (module doc) in seconds: ``{"bound_s", "binding", "terms": {name: seconds}}``.
    ``workloads``: video_id -> _workload.Workload; ``asm``: video_id -> stitch + mux seconds."""
    P, R = limits["pool_slots"], limits["run_slots"]
    chains = {v: [w.chain(b) for b in w.beats] for v, w in workloads.items()}
    music = {v: w.draws[w.music] for v, w in workloads.items()}
    images = sum(w.draws[b.image] for w in workloads.values() for b in w.beats)
    chunks = sum(w.draws[k] for w in workloads.values() for b in w.beats for k in b.chunks)
    all_chains = sum(sum(c) for c in chains.values())
    min_asm = min(asm.values()) if asm else 0.0
    if limits["granularity"] == "run":
        image_busy = video_busy = all_chains
    else:
        image_busy, video_busy = images, chunks
    terms = {
        "critical path (longest chain or music + stitch + mux of that video)":
            max(max(max(chains[v]), music[v]) + asm.get(v, 0.0) for v in workloads),
        f"image_api pool: {image_busy:.1f} s held / {P} slots + min assembly": image_busy / P + min_asm,
        f"video_api pool: {video_busy:.1f} s held / {P} slots + min assembly": video_busy / P + min_asm,
        f"music_api pool: {sum(music.values()):.1f} s held / {P} slots + min assembly":
            sum(music.values()) / P + min_asm,
        f"run slots: {all_chains + sum(music.values()) + sum(asm.values()):.1f} s of runs / {R} slots":
            (all_chains + sum(music.values()) + sum(asm.values())) / R,
    }
    binding = max(terms, key=terms.__getitem__)
    return {"bound_s": terms[binding], "binding": binding, "terms": terms}


def simulate_fleet(order: list[str], workloads: dict[str, Any], asm: dict[str, float],
                   limits: dict[str, Any]) -> dict[str, Any]:
    """Zero-overhead list schedule under the instance's limits: the run queue holds every video's
    runs at time 0 in ``order`` (each video's segment runs longest first, music after the longer
    half: planner.fanout_runs), and at every event each queued run that fits every limit starts
    (Dagster's queue skips a run that does not fit and tries the next). A segment run takes its
    chain, a music run its draw; a video ends ``asm`` after its last run. Returns the makespan and
    each video's end, seconds."""
    P, R, V = limits["pool_slots"], limits["run_slots"], limits["per_video"] or 10**6
    queue: list[tuple[str, str, float]] = []
    for v in order:
        w = workloads[v]
        runs = [(v, "segment", w.chain(b)) for b in sorted(w.beats, key=lambda b: (-b.duration_s, b.index))]
        runs.insert(len(runs) // 2, (v, "music", w.draws[w.music]))
        queue += runs
    running: list[tuple[float, str, str]] = []
    t, last_end = 0.0, {v: 0.0 for v in order}
    while queue or running:
        seg = sum(1 for _, _, k in running if k == "segment")
        mus = len(running) - seg
        per: dict[str, int] = {}
        for _, v, _ in running:
            per[v] = per.get(v, 0) + 1
        rest = []
        for v, kind, d in queue:
            fits = len(running) < R and per.get(v, 0) < V and (seg < P if kind == "segment" else mus < P)
            if fits:
                running.append((t + d, v, kind))
                per[v] = per.get(v, 0) + 1
                seg, mus = (seg + 1, mus) if kind == "segment" else (seg, mus + 1)
            else:
                rest.append((v, kind, d))
        queue = rest
        t = min(end for end, _, _ in running)
        for item in [r for r in running if r[0] <= t]:
            running.remove(item)
            last_end[item[1]] = max(last_end[item[1]], item[0])
    ends = {v: last_end[v] + asm.get(v, 0.0) for v in order}
    return {"makespan_s": max(ends.values()), "video_end_s": ends}


# --- the run ------------------------------------------------------------------------------------

def _peak_concurrency(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, b in intervals] + [(b, -1) for a, b in intervals], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, d in edges:
        now += d
        peak = max(peak, now)
    return peak


def _submit(stack, specs: list[Path], mode: str) -> list[float]:
    """Submit every spec with ``pipeline submit`` (in this process or one command each); returns
    the time.time() each submit returned."""
    done = []
    if mode == "subprocess":
        for spec in specs:
            subprocess.run([str(VENV_BIN / "pipeline"), "--data-dir", str(stack.data_dir), "submit", str(spec)],
                           env=stack.env, cwd=str(stack.root), check=True, capture_output=True)
            done.append(time.time())
        return done
    from pipeline import cli

    for spec in specs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = cli.main(["--data-dir", str(stack.data_dir), "submit", str(spec)])
        if rc != 0:
            raise RuntimeError(f"pipeline submit {spec} exited {rc}: {out.getvalue()[-2000:]}")
        done.append(time.time())
    return done


def _wait_fleet(stack, instance, video_ids: list[str], timeout: float) -> dict[str, Any]:
    """Wait until every video has a successful assemble_video run, or every unfinished one has a
    run that failed for good (FAILURE, no retry coming) and nothing is queued or in progress, or
    ``timeout`` seconds. Returns {"done": set, "failed": {video: [run ids]}, "timed_out": bool}."""
    import dagster as dg

    from pipeline_tests.dagster_services import wait_until

    wanted = set(video_ids)
    state: dict[str, Any] = {"done": set(), "failed": {}, "timed_out": False}
    active = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]

    def check() -> bool:
        stack.check_alive()
        ok = instance.get_runs(dg.RunsFilter(job_name="assemble_video", statuses=[dg.DagsterRunStatus.SUCCESS]))
        state["done"] = {r.tags.get("video") for r in ok} & wanted
        if state["done"] == wanted:
            return True
        bad = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        failed: dict[str, list[str]] = {}
        for r in bad:
            if r.tags.get("video") in wanted - state["done"] and r.tags.get("dagster/will_retry") != "true":
                failed.setdefault(r.tags["video"], []).append(r.run_id)
        state["failed"] = failed
        if set(failed) == wanted - state["done"] and not instance.get_runs(dg.RunsFilter(statuses=active), limit=1):
            return True  # every unfinished video failed for good, nothing left to run
        return False

    try:
        wait_until(check, timeout=timeout, interval=1.0, what="the fleet's final videos")
    except AssertionError:
        state["timed_out"] = True
    return state


def run_fleet(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """One fleet render (module doc) under ``base``; returns the measurements."""
    import dagster as dg

    from _server import ServerProcess
    from _workload import critical_path, workload_for_spec
    from bench_daemon_path import _video_runs, _why
    from pipeline.generation import read_call_log
    from pipeline.store import Workspace
    from pipeline_tests.dagster_services import DagsterStack
    from specs import fleet_specs, write_spec

    limits = instance_limits(args.pool_limit)
    specs_dir = base / "specs"
    specs = fleet_specs(specs_dir, args.videos, seed=args.spec_seed, min_beats=args.min_beats,
                        max_beats=args.max_beats)
    import yaml

    replicate_specs, video_ids = [], []
    for spec in specs:
        data = yaml.safe_load(spec.read_text())
        data["provider"] = "replicate"
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
        replicate_specs.append(spec)
        video_ids.append(data["video_id"])
    workloads = {v: workload_for_spec(str(s), seed=args.seed, scale=args.scale, scratch=str(base / "wl"))
                 for v, s in zip(video_ids, replicate_specs)}
    all_keys = [k for w in workloads.values() for k in w.keys]
    if len(set(all_keys)) != len(all_keys):
        raise RuntimeError("two videos share a provider call; the fleet's specs must not")
    beats = {v: len(w.beats) for v, w in workloads.items()}
    if limits["per_video"] and max(beats.values()) + 1 > limits["per_video"]:
        emit(f"warning: a video has {max(beats.values())} beats: its runs exceed the per-video limit "
             f"{limits['per_video']}, which the bound does not model")

    workspace_yaml = None
    if args.polling == "scaled":
        code = base / "code"
        code.mkdir()
        (code / "bench_fleet_defs.py").write_text(SCALED_DEFS_MODULE.format(scale=args.scale))
        workspace_yaml = base / "workspace.yaml"
        workspace_yaml.write_text(yaml.safe_dump({"load_from": [{"python_module": {
            "module_name": "bench_fleet_defs", "attribute": "defs", "working_directory": str(code),
            "location_name": "video_pipeline_fleet"}}]}))
    server_cfg = dict(seed=args.seed, scale=args.scale, failed=[], fault_kind=None, fault_options={},
                      rate_window_s=60.0 * args.scale if args.polling == "scaled" else 60.0,
                      render_scale=args.render_scale)
    result: dict[str, Any] = {"limits": limits, "videos": video_ids, "beats": beats}
    root = base / "stack"
    root.mkdir()
    with ServerProcess(**server_cfg) as server:
        stack = DagsterStack.create(root, instance_overrides=instance_overrides(args.pool_limit),
                                    workspace=workspace_yaml, extra_env={
            "REPLICATE_API_TOKEN": server.token, "REPLICATE_BASE_URL": server.base_url,
            "REPLICATE_OUTPUT_HOSTS": server.origin})
        try:
            t0 = time.time()
            daemon = stack.start_daemon(wait=True)
            result["daemon_ready_s"] = time.time() - t0
            with dg.DagsterInstance.from_config(str(stack.home)) as instance:
                if not args.cold:
                    t0 = time.time()
                    _submit(stack, [write_spec(base / "warmup.yaml", WARMUP_VIDEO, [5])], args.submit)
                    warm = _wait_fleet(stack, instance, [WARMUP_VIDEO], 600)
                    if warm["done"] != {WARMUP_VIDEO}:
                        raise RuntimeError(f"the warm-up video did not finish: {warm}\n{stack.tails()}")
                    result["warm_up_s"] = time.time() - t0
                la_start, cpu_start = load_averages(), cpu_times()
                with TreeSampler(daemon.proc.pid, interval=0.5) as mem, \
                        TreeSampler(server.pid, interval=0.5) as fake_mem:
                    t_submit = time.time()
                    submitted = _submit(stack, replicate_specs, args.submit)
                    state = _wait_fleet(stack, instance, video_ids, args.timeout)
                    t_waited = time.time()
                la_end, cpu_end = load_averages(), cpu_times()
                runs = {v: _video_runs(instance, v) for v in video_ids}
                why = {v: [_why(instance, rid) for rid in rids[:2]] for v, rids in state["failed"].items()}
            calls = read_call_log(Workspace.at(stack.data_dir))
            stats = server.stats()
        finally:
            stack.stop()

    # paid creates
    wanted = set(all_keys)
    by_key: dict[str, int] = {}
    for p in stats["predictions"]:
        by_key[p["key"]] = by_key.get(p["key"], 0) + 1
    unknown = sorted(set(by_key) - wanted)
    for p in stats["predictions"]:
        w = next((w for w in workloads.values() if p["key"] in w.draws), None)
        if w is not None and p["run_s"] is not None and abs(p["run_s"] - w.draws[p["key"]]) > 1e-9:
            raise RuntimeError(f"{p['key']}: the fake drew {p['run_s']}, the workload {w.draws[p['key']]}")

    # timings
    asm = {}
    for v in video_ids:
        mine = [c for c in calls if c.get("video_id") == v]
        asm[v] = sum(c["seconds"] for c in mine if c.get("stage") in ("stitched_video", "final_video"))
    finished = sorted(state["done"])
    final_at = {}
    for v in finished:
        ts = [r["final_materialized"] for r in runs[v] if r["job"] == "assemble_video" and r["final_materialized"]]
        if ts:
            final_at[v] = min(ts)
    # a video that did not finish has no measured assembly: the bound uses the others' (>= 0)
    asm_known = {v: s for v, s in asm.items() if v in final_at}
    bound = fleet_bound(workloads, asm_known, limits)
    sim = simulate_fleet(video_ids, workloads, asm_known, limits)
    makespan = (max(final_at.values()) - t_submit) if final_at else None
    all_runs = [dict(r, video=v) for v, rs in runs.items() for r in rs]
    seg_iv = [(r["start"], r["end"]) for r in all_runs if r["job"] == "render_segment" and r["start"] and r["end"]]
    work_iv = [(r["start"], r["end"]) for r in all_runs if r["start"] and r["end"]]
    queued = [r["starting"] - r["enqueued"] for r in all_runs
              if r["job"] in ("render_segment", "render_music") and r["starting"] and r["enqueued"]]
    from pipeline.defs.partitions import split_key
    from pipeline.manifests import segment_key

    overhead, launch = [], []  # per successful segment/music run: execution - draws; starting -> RUN_START
    for r in all_runs:
        if r["status"] != "SUCCESS" or not (r["start"] and r["end"]):
            continue
        w = workloads[r["video"]]
        if r["job"] == "render_segment":
            seg = split_key(r["partition"])[1]
            beat = next((b for b in w.beats if segment_key(b.index) == seg), None)
            if beat is not None:
                overhead.append(r["end"] - r["start"] - w.chain(beat))
        elif r["job"] == "render_music":
            overhead.append(r["end"] - r["start"] - w.draws[w.music])
        if r["job"] in ("render_segment", "render_music") and r["starting"]:
            launch.append(r["start"] - r["starting"])
    failed_runs = [{"video": r["video"], "job": r["job"], "partition": r["partition"], "status": r["status"]}
                   for r in all_runs if r["status"] == "FAILURE"]
    status_counts: dict[str, int] = {}
    for r in all_runs:
        status_counts[f"{r['job']} {r['status']}"] = status_counts.get(f"{r['job']} {r['status']}", 0) + 1
    per_video = []
    for v in video_ids:
        w = workloads[v]
        per_video.append({
            "video": v, "beats": len(w.beats), "duration_s": sum(b.duration_s for b in w.beats),
            "calls": len(w.keys), "submit_to_final_s": (final_at[v] - t_submit) if v in final_at else None,
            "own_critical_path_s": critical_path(w, asm.get(v, 0.0), 0.0),
            "simulated_end_s": sim["video_end_s"][v],
            "max_queued_s": max((r["starting"] - r["enqueued"] for r in runs[v]
                                 if r["job"] in ("render_segment", "render_music") and r["starting"]
                                 and r["enqueued"]), default=None),
            "status": "done" if v in final_at else ("failed" if v in state["failed"] else "unfinished")})
    busy = cpu_end[0] - cpu_start[0]
    total = cpu_end[1] - cpu_start[1]
    result.update({
        "scale": args.scale, "render_scale": args.render_scale, "seed": args.seed, "spec_seed": args.spec_seed,
        "polling": args.polling,
        "submit": args.submit, "timed_out": state["timed_out"],
        "finished": len(final_at), "failed_videos": sorted(state["failed"]), "failure_reasons": why,
        "submit_s": submitted[-1] - t_submit, "waited_s": t_waited - t_submit,
        "makespan_s": makespan, "bound": bound, "x_bound": (makespan / bound["bound_s"]) if makespan else None,
        "simulated_s": sim["makespan_s"], "x_simulated": (makespan / sim["makespan_s"]) if makespan else None,
        "per_video": per_video,
        "peak_daemon_tree_pss_mib": mem.peak_pss_kb / 1024, "peak_daemon_tree_rss_mib": mem.peak_rss_kb / 1024,
        "peak_daemon_tree_processes": mem.peak_procs,
        "peak_fake_server_pss_mib": fake_mem.peak_pss_kb / 1024,
        "paid_creates": stats["creates"], "create_requests": stats["create_requests"],
        "minimum_creates": len(wanted), "duplicate_creates": sum(n - 1 for n in by_key.values() if n > 1),
        "calls_never_created": len(wanted - set(by_key)), "unknown_calls": unknown[:5],
        "failed_runs": failed_runs, "run_status_counts": status_counts,
        "peak_segment_runs": _peak_concurrency(seg_iv), "peak_runs": _peak_concurrency(work_iv),
        "segment_music_queued_s": {"median": statistics.median(queued) if queued else None,
                                   "max": max(queued) if queued else None},
        "work_run_overhead_s": {"median": statistics.median(overhead) if overhead else None,
                                "max": max(overhead) if overhead else None},
        "work_run_launch_s": {"median": statistics.median(launch) if launch else None,
                              "max": max(launch) if launch else None},
        "cpu_busy_share": busy / total if total else None,
        "load_start": la_start, "load_end": la_end,
        "stitch_mux_s": asm, "runs": runs,
    })
    return result


# --- report -------------------------------------------------------------------------------------

def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def report(r: dict[str, Any]) -> None:
    lim = r["limits"]
    heading(f"Fleet: {len(r['videos'])} videos ({sum(r['beats'].values())} beats) submitted at once through the "
            f"daemon, fake Replicate at latencies x{r['scale']:g}, {r['polling']} polling", 3)
    mk, b = r["makespan_s"], r["bound"]
    made = [p["submit_to_final_s"] for p in r["per_video"] if p["submit_to_final_s"] is not None]
    rows = [
        ("videos finished", f"{r['finished']} / {len(r['videos'])}" + (" (timed out)" if r["timed_out"] else ""),
         f"{len(r['videos'])}"),
        ("makespan: first submit -> last final_video (s)", f"{mk:.1f}" if mk else "-", ""),
        (f"lower bound (s); binding: {b['binding']}", f"{b['bound_s']:.1f}", ""),
        ("makespan / bound", f"{r['x_bound']:.2f}" if r["x_bound"] else "-", "<= 1.2"),
        ("zero-overhead schedule under the same limits (s); makespan / it",
         f"{r['simulated_s']:.1f}; " + (f"{r['x_simulated']:.2f}" if r["x_simulated"] else "-"), ""),
        ("per-video submit -> final (s): min / median / p90 / max",
         " / ".join(f"{_q(made, q):.1f}" for q in (0, 0.5, 0.9, 1)) if made else "-", ""),
        ("paid creates / minimum (distinct calls in the plans)", f"{r['paid_creates']} / {r['minimum_creates']}",
         "equal"),
        ("duplicate creates; calls never created; create requests",
         f"{r['duplicate_creates']}; {r['calls_never_created']}; {r['create_requests']}", "0; 0"),
        ("failed runs (final or retried)", str(len(r["failed_runs"])), "0"),
        ("peak daemon process tree PSS / summed RSS (MiB); processes",
         f"{r['peak_daemon_tree_pss_mib']:.0f} / {r['peak_daemon_tree_rss_mib']:.0f}; "
         f"{r['peak_daemon_tree_processes']}", ""),
        ("peak fake server PSS (MiB)", f"{r['peak_fake_server_pss_mib']:.0f}", ""),
        (f"peak segment runs at once (pools {lim['pool_slots']}) / all runs (limit {lim['run_slots']})",
         f"{r['peak_segment_runs']} / {r['peak_runs']}", ""),
        ("segment + music runs queued (s): median / max",
         " / ".join(f"{x:.1f}" if x is not None else "-" for x in r["segment_music_queued_s"].values()), ""),
        ("segment + music runs: execution minus their draws (s): median / max",
         " / ".join(f"{x:.1f}" if x is not None else "-" for x in r["work_run_overhead_s"].values()), ""),
        ("segment + music runs: launch, STARTING -> RUN_START (s): median / max",
         " / ".join(f"{x:.1f}" if x is not None else "-" for x in r["work_run_launch_s"].values()), ""),
        ("submitting every spec took (s)", f"{r['submit_s']:.1f} ({r['submit']})", ""),
        ("machine CPU busy during the fleet; load 1 min start..end",
         f"{100 * (r['cpu_busy_share'] or 0):.0f} %; {r['load_start'][0]:.1f}..{r['load_end'][0]:.1f}", ""),
    ]
    emit(table(rows, headers=["measure", "value", "target"]))
    heading("The bound's terms (module doc)", 4)
    emit(table([{"term": k, "seconds": v, "binds": "yes" if k == b["binding"] else ""} for k, v in b["terms"].items()]))
    heading("Per video", 4)
    emit(table([{"video": p["video"], "beats": p["beats"], "video_s": p["duration_s"], "calls": p["calls"],
                 "submit_to_final_s": p["submit_to_final_s"], "own_critical_path_s": p["own_critical_path_s"],
                 "simulated_end_s": p["simulated_end_s"], "max_queued_s": p["max_queued_s"], "status": p["status"]}
                for p in sorted(r["per_video"], key=lambda p: p["submit_to_final_s"] or float("inf"))]))
    if r["failed_runs"] or r["failed_videos"]:
        heading("Failures", 4)
        emit(table(r["failed_runs"]) if r["failed_runs"] else "(no failed run)")
        for v, reasons in r["failure_reasons"].items():
            emit(f"\n{v}:\n" + "\n".join(reasons))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--scale", type=float, default=DEFAULT_SCALE, help="latency scale (1.0 = real latencies)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the per-call latency draws")
    ap.add_argument("--spec-seed", type=int, default=11, help="seed of the specs' beat counts and lengths")
    ap.add_argument("--min-beats", type=int, default=2)
    ap.add_argument("--max-beats", type=int, default=12)
    ap.add_argument("--polling", choices=["scaled", "production"], default="scaled")
    ap.add_argument("--submit", choices=["inprocess", "subprocess"], default="inprocess")
    ap.add_argument("--render-scale", type=float, default=0.25,
                    help="size of the media the fake renders, x the model's output size (its CPU cost, not the "
                         "pipeline's: it shares the machine)")
    ap.add_argument("--pool-limit", type=int, default=None, help="pools' default_limit instead of dagster.yaml's")
    ap.add_argument("--cold", action="store_true", help="no warm-up video")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the fleet")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (path printed)")
    args = ap.parse_args(argv)
    if not 1 <= args.min_beats <= args.max_beats:
        ap.error("need 1 <= --min-beats <= --max-beats")

    def _terminate(signum, frame):  # SIGTERM: unwind like Ctrl-C, so the services are stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    base = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    heading("The fleet: many videos through the daemon at once", 2)
    emit(f"Started {started}; load average (1/5/15 min) at start "
         f"{' / '.join(f'{x:.2f}' for x in load_averages())}; {os.cpu_count()} cores.")
    try:
        result = run_fleet(args, base)
    except KeyboardInterrupt:
        emit("\ninterrupted: the daemon, its run workers and the fake server were stopped")
        return 130
    finally:
        if args.keep:
            emit(f"(kept {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    result["started"] = started
    report(result)
    path = save_results("fleet", result)
    emit(f"\nRaw numbers: {path.relative_to(ROOT)}")
    ok = result["finished"] == len(result["videos"]) and result["paid_creates"] == result["minimum_creates"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
