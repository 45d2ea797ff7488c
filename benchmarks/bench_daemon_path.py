"""The operated path: ``pipeline submit`` -> final video through the Dagster daemon, against
``pipeline render`` and against the critical-path bound.

Local provider (the 40 s demo spec, examples/tortoise-and-hare.yaml), for each instance
configuration below and ``--repeat`` times: a fresh temporary DAGSTER_HOME and data directory
(pipeline_tests.dagster_services: the instance configured like the chosen dagster.yaml, storage in
the temporary home), ``dagster-daemon run`` on the repository's workspace.yaml, a warm-up video (a
1-beat spec, so the daemon, its code server and the fork server are running, as on a daemon that has
been up for a while; ``--cold`` skips it), then ``pipeline submit SPEC`` and a wait until
``final_video`` is materialized. The time is split into hops from the runs' event timestamps:
the submit command, the inbox sensor's tick, each run's queue wait (enqueued -> starting), launch
(starting -> RUN_START: the run launcher) and execution, the fan-out and assembly sensors' ticks.
The same spec is rendered with ``pipeline render`` (fresh data dir and instance, wall time of the
command, Python start-up included) for the ratio.

Configurations:
- ``before``: dagster.yaml as of commit 9687ed2 (default run launcher, run queue every 5 s,
  3 runs per video, pools of 4 at run granularity, run monitoring every 30 s).
- ``default-launcher``: today's dagster.yaml with Dagster's DefaultRunLauncher (isolates the launcher).
- ``forkserver``: today's dagster.yaml (ForkServerRunLauncher), with handoffs.
- ``no-handoff``: the same with ``PIPELINE_HANDOFF=0``: every stage waits for its sensor's tick.
- ``forkserver+defs`` (``--preload-experiment``): the same, with ``pipeline.definitions`` added to the
  fork server's preload (the project does not do this: code edits would need a daemon restart).
- ``op-granularity`` (``--granularity-experiment``): today's dagster.yaml with pools at op granularity.

Replicate (``--replicate``): the makespan benchmark's spec (benchmarks/specs.py, ``mixed-12`` by
default) against the fake Replicate server (its own process, per-call latencies drawn as in
bench_makespan.py, at ``--replicate-scale``, 1.0 = real latencies) through the daemon: a copy of
the spec saying ``provider: replicate`` goes through ``pipeline submit`` and the inbox, like the
local one. The provider polls on its production schedule (the daemon's processes are not
patched), so only scale 1.0 compares with bench_makespan's ``--real-latency``.
``--replicate-cli`` also renders the same spec with ``render_video`` in-process (bench_makespan's
harness, production polling) for the daemon/CLI comparison.

Usage: python benchmarks/bench_daemon_path.py [--repeat 3] [--configs before,forkserver]
       [--cold] [--preload-experiment] [--granularity-experiment]
       [--replicate [--replicate-spec mixed-12] [--replicate-scale 1.0] [--replicate-cli]] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    EXAMPLES,
    INSTANCE_YAML,
    ROOT,
    VENV_BIN,
    TreeSampler,
    emit,
    heading,
    load_averages,
    save_results,
    scratch_dir,
    subprocess_env,
    table,
)

SPEC = EXAMPLES / "tortoise-and-hare.yaml"
VIDEO = "tortoise-and-hare"
WARMUP_VIDEO = "bench-warmup"

BEFORE_YAML = """# dagster.yaml at commit 9687ed2 (storage sections are replaced by the benchmark)
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  pools:
    granularity: run
    default_limit: 4
  runs:
    max_concurrent_runs: 6
    tag_concurrency_limits:
      - key: video
        value:
          applyLimitPerUniqueValue: true
        limit: 3
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 30
sensors:
  use_threads: true
  num_workers: 2
"""

LAUNCHER = {"module": "pipeline.orchestration.launcher", "class": "ForkServerRunLauncher"}
CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"source": "before", "overrides": {}},
    "default-launcher": {"overrides": {"run_launcher": None}},
    "forkserver": {"overrides": {}},
    "no-handoff": {"overrides": {}, "env": {"PIPELINE_HANDOFF": "0"}},
    "forkserver+defs": {"overrides": {"run_launcher": {**LAUNCHER, "config": {
        "extra_preload_modules": ["pipeline.definitions"]}}}},
    "op-granularity": {"overrides": "op"},
    "local-runs-2": {"overrides": "local-2"},
    "local-runs-3": {"overrides": "local-3"},
    "fast-sensors": {"overrides": {}, "workspace": "fast-sensors"},
    "fast-sensors+1s-loop": {"overrides": {}, "workspace": "fast-sensors", "daemon": "1s-loop"},
    "fast-sensors+capped-polling": {"overrides": {}, "workspace": "fast-sensors-capped-polling"},
}
LABELS = {
    "before": "before (commit 9687ed2: default launcher, queue 5 s, 3 runs/video, pools 4)",
    "default-launcher": "today's dagster.yaml, Dagster's DefaultRunLauncher",
    "forkserver": "today's dagster.yaml (ForkServerRunLauncher)",
    "no-handoff": "today's dagster.yaml without handoffs (PIPELINE_HANDOFF=0: the sensors queue every stage)",
    "forkserver+defs": "ForkServerRunLauncher + pipeline.definitions preloaded (experiment)",
    "op-granularity": "today's dagster.yaml, pools at op granularity (experiment)",
    "local-runs-2": "ForkServerRunLauncher + at most 2 local-provider runs at once (experiment)",
    "local-runs-3": "ForkServerRunLauncher + at most 3 local-provider runs at once (experiment)",
    "fast-sensors": "ForkServerRunLauncher + sensors' minimum_interval_seconds 1 instead of 5 (experiment)",
    "fast-sensors+1s-loop": "... + the sensor daemon looping every 1 s instead of 5 (experiment, patched daemon)",
    "fast-sensors+capped-polling": "ForkServerRunLauncher + sensors every 1 s + replicate polling capped at 2 s "
                                   "(experiment)",
}

FAST_SENSORS_MODULE = '''"""The pipeline's definitions with every sensor's minimum interval set to 1 s (benchmark experiment,
generated by benchmarks/bench_daemon_path.py; pipeline/defs/sensors.py uses 5 s)."""
import dagster as dg
from dagster._core.definitions.sensor_definition import resolve_jobs_from_targets_for_with_attributes

from pipeline.definitions import defs as _defs

CAP_POLLING = {cap}

def _every(sensor: dg.SensorDefinition, seconds: int) -> dg.SensorDefinition:
    job_name, job, jobs = resolve_jobs_from_targets_for_with_attributes(sensor, None)
    return dg.SensorDefinition.dagster_internal_init(
        name=sensor.name, evaluation_fn=sensor._raw_fn, minimum_interval_seconds=seconds,
        description=sensor.description, job_name=job_name, jobs=jobs, job=job,
        default_status=sensor.default_status, asset_selection=sensor.asset_selection,
        required_resource_keys=sensor._raw_required_resource_keys, tags=sensor._tags,
        metadata=sensor._metadata, target=None, owners=sensor._owners)


if CAP_POLLING:  # the replicate provider polls at most 2 s apart (its default cap is 10 s)
    import pipeline.defs.resources as _resources

    _original = _resources.get_provider

    def _get_provider(name, **options):
        if name == "replicate":
            options = {**options, "max_poll_interval_s": 2.0}
        return _original(name, **options)

    _resources.get_provider = _get_provider

defs = dg.Definitions(assets=_defs.assets, jobs=_defs.jobs, schedules=_defs.schedules,
                      sensors=[_every(s, 1) for s in _defs.sensors], resources=_defs.resources,
                      executor=_defs.executor)
'''

LOOP_1S_DAEMON = ("import sys; import dagster._daemon.sensor as s; s.MIN_INTERVAL_LOOP_TIME = 1; "
                  "from dagster._daemon.cli import main; sys.argv[0] = 'dagster-daemon'; sys.exit(main())")


def _workspace(name: str, root: Path) -> Path | None:
    """The workspace for configuration ``name`` (None: the repository's)."""
    import yaml

    kind = CONFIGS[name].get("workspace")
    if kind is None:
        return None
    code = root / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "bench_fast_sensors.py").write_text(
        FAST_SENSORS_MODULE.replace("{cap}", str(kind == "fast-sensors-capped-polling")))
    path = root / "workspace.yaml"
    path.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "bench_fast_sensors", "attribute": "defs", "working_directory": str(code),
        "location_name": "video_pipeline_fast_sensors"}}]}))
    return path


def _daemon_command(name: str) -> list[str] | None:
    return [sys.executable, "-c", LOOP_1S_DAEMON] if CONFIGS[name].get("daemon") == "1s-loop" else None


def sensor_tick_intervals(instance) -> dict[str, float]:
    """Median seconds between consecutive ticks of each sensor (all ticks so far)."""
    from dagster._core.scheduler.instigation import InstigatorType

    out = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        ticks = sorted(t.timestamp for t in instance.get_ticks(state.instigator_origin_id, state.selector_id,
                                                               limit=1000))
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        if gaps:
            out[state.instigator_name] = statistics.median(gaps)
    return out


def _safe(name: str) -> str:
    """``name`` for a temporary directory's name. (A "+" in the data directory's path breaks the
    media store: its file URIs come back percent-encoded, "%2B", and the file is not found.)"""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def _overrides(name: str) -> tuple[dict[str, Any], Path | None]:
    import yaml

    cfg = CONFIGS[name]
    source = None
    if cfg.get("source") == "before":
        source = scratch_dir("before-yaml") / "dagster.yaml"
        source.write_text(BEFORE_YAML)
    overrides = cfg["overrides"]
    if overrides == "op":
        concurrency = (yaml.safe_load((ROOT / "dagster.yaml").read_text()) or {})["concurrency"]
        concurrency["pools"]["granularity"] = "op"
        overrides = {"concurrency": concurrency}
    elif isinstance(overrides, str) and overrides.startswith("local-"):
        concurrency = (yaml.safe_load((ROOT / "dagster.yaml").read_text()) or {})["concurrency"]
        limits = [t for t in concurrency["runs"]["tag_concurrency_limits"] if t["key"] != "pipeline/provider"]
        limits.append({"key": "pipeline/provider", "value": "local", "limit": int(overrides.split("-")[1])})
        concurrency["runs"]["tag_concurrency_limits"] = limits
        overrides = {"concurrency": concurrency}
    return dict(overrides), source


# --- timing a video from its runs' events ---------------------------------------------------------

def _events(instance, run_id: str) -> dict[str, Any]:
    """First timestamp of each event type in run ``run_id``, the final_video materialization
    time, and the launcher's fork-server boot time if it reported one."""
    import re

    first: dict[str, float] = {}
    out: dict[str, Any] = {}
    for e in instance.all_logs(run_id):
        ev = e.dagster_event
        if ev is None:
            continue
        first.setdefault(ev.event_type_value, e.timestamp)
        if ev.event_type_value == "ASSET_MATERIALIZATION" and ev.asset_key and ev.asset_key.path == ["final_video"]:
            out["final_materialized"] = e.timestamp
        if ev.event_type_value == "ENGINE_EVENT" and "fork server started first" in (e.message or ""):
            m = re.search(r"started first, in ([0-9.]+) s", e.message)
            if m:
                out["fork_server_boot_s"] = float(m.group(1))
    out.update(first)
    return out


def _video_runs(instance, video_id: str) -> list[dict[str, Any]]:
    import dagster as dg

    rows = []
    for r in instance.get_runs(dg.RunsFilter(tags={"video": video_id})):
        ev = _events(instance, r.run_id)
        rows.append({"job": r.job_name, "partition": r.tags.get("dagster/partition", ""), "status": r.status.value,
                     "enqueued": ev.get("PIPELINE_ENQUEUED"), "starting": ev.get("PIPELINE_STARTING"),
                     "start": ev.get("PIPELINE_START"), "end": ev.get("PIPELINE_SUCCESS") or ev.get("PIPELINE_FAILURE"),
                     "first_step": ev.get("STEP_START"), "final_materialized": ev.get("final_materialized"),
                     "fork_server_boot_s": ev.get("fork_server_boot_s")})
    return rows


def _why(instance, run_id: str) -> str:
    """The failure and engine-error messages of run ``run_id`` (with the innermost error)."""
    lines = []
    for e in instance.all_logs(run_id):
        ev = e.dagster_event
        if ev is None or ev.event_type_value not in ("STEP_FAILURE", "PIPELINE_FAILURE", "ENGINE_EVENT"):
            continue
        err = getattr(ev.event_specific_data, "error", None)
        while err is not None and err.cause is not None:
            err = err.cause
        if ev.event_type_value != "ENGINE_EVENT" or err is not None:
            lines.append(f"{ev.event_type_value} {ev.step_key or ''}: {e.message or ev.message or ''}"
                         + (f" -- {err.message.strip()}" if err is not None else ""))
    return "\n".join(lines[-6:])


def _wait_final(stack, instance, video_id: str, timeout: float) -> list[dict[str, Any]]:
    import dagster as dg

    from pipeline_tests.dagster_services import wait_until

    def done():
        stack.check_alive()
        runs = instance.get_runs(dg.RunsFilter(tags={"video": video_id}))
        bad = [r for r in runs if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
        if bad:
            raise RuntimeError(f"{video_id}: run {bad[0].job_name} {bad[0].tags.get('dagster/partition')} "
                               f"{bad[0].status.value}:\n{_why(instance, bad[0].run_id)}")
        return any(r.job_name == "assemble_video" and r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

    wait_until(done, timeout=timeout, interval=0.25, what=f"{video_id}'s final video", on_timeout=stack.tails)
    return _video_runs(instance, video_id)


def hops(runs: list[dict[str, Any]], t_submit: float, t_submitted: float) -> dict[str, Any]:
    """Split submit -> final_video materialized into consecutive intervals (they add up)."""
    plan = next(r for r in runs if r["job"] == "plan_video")
    work = [r for r in runs if r["job"] in ("render_segment", "render_music")]
    asm = next(r for r in runs if r["job"] == "assemble_video" and r["status"] == "SUCCESS")
    last = max(work, key=lambda r: r["end"])
    first_work = min(r["enqueued"] for r in work)
    final = asm["final_materialized"] or asm["end"]
    segs = [r for r in work if r["job"] == "render_segment"]
    out = {
        "submit command": t_submitted - t_submit,
        "inbox sensor tick -> plan run enqueued": plan["enqueued"] - t_submitted,
        "plan run: queued": plan["starting"] - plan["enqueued"],
        "plan run: launch (starting -> RUN_START)": plan["start"] - plan["starting"],
        "plan run: execution": plan["end"] - plan["start"],
        "plan run end -> segment runs enqueued (fan-out sensor; handoff: < 0)": first_work - plan["end"],
        "segment + music runs: first enqueued -> last succeeded": last["end"] - first_work,
        "last run end -> assemble run enqueued (assembly sensor; handoff: < 0)": asm["enqueued"] - last["end"],
        "assemble run: queued": asm["starting"] - asm["enqueued"],
        "assemble run: launch (starting -> RUN_START)": asm["start"] - asm["starting"],
        "assemble run: execution to final_video materialized": final - asm["start"],
    }
    total = final - t_submit
    detail = {
        "segment runs: median queued_s": statistics.median(r["starting"] - r["enqueued"] for r in segs),
        "segment runs: max queued_s": max(r["starting"] - r["enqueued"] for r in segs),
        "segment runs: median launch_s": statistics.median(r["start"] - r["starting"] for r in segs),
        "segment runs: median execution_s": statistics.median(r["end"] - r["start"] for r in segs),
        "all runs: median launch_s": statistics.median(r["start"] - r["starting"] for r in runs if r["start"]),
    }
    return {"total_s": total, "hops": out, "detail": detail, "critical_run": last["partition"] or last["job"]}


# --- one daemon render -----------------------------------------------------------------------------

def _submit_file(stack, spec: Path) -> None:
    subprocess.run([str(VENV_BIN / "pipeline"), "submit", str(spec)], env=stack.env, cwd=str(stack.root), check=True,
                   capture_output=True)


def daemon_render(config: str, *, warm_up: bool, timeout: float = 900.0) -> dict[str, Any]:
    """A fresh instance with ``config``, the daemon, [a warm-up video], then the demo spec."""
    import dagster as dg

    from pipeline_tests.dagster_services import DagsterStack
    from specs import write_spec

    root = Path(tempfile.mkdtemp(prefix=f"bench-daemon-{_safe(config)}-"))
    overrides, source = _overrides(config)
    stack = DagsterStack.create(root, instance_overrides=overrides, instance_source=source,
                                workspace=_workspace(config, root), extra_env=CONFIGS[config].get("env"))
    result: dict[str, Any] = {"config": config}
    try:
        t0 = time.time()
        daemon = stack.start_daemon(wait=True, command=_daemon_command(config))
        result["daemon_ready_s"] = time.time() - t0
        with dg.DagsterInstance.from_config(str(stack.home)) as instance:
            if warm_up:
                spec = write_spec(root / "warmup.yaml", WARMUP_VIDEO, [5])
                t0 = time.time()
                _submit_file(stack, spec)
                warm_runs = _wait_final(stack, instance, WARMUP_VIDEO, timeout)
                result["warm_up_s"] = time.time() - t0
                boots = [r["fork_server_boot_s"] for r in warm_runs if r.get("fork_server_boot_s")]
                result["fork_server_boot_s"] = boots[0] if boots else None
            la_start = load_averages()
            with TreeSampler(daemon.proc.pid, interval=0.2) as memory:  # daemon, code server, runs
                t_submit = time.time()
                _submit_file(stack, SPEC)
                t_submitted = time.time()
                runs = _wait_final(stack, instance, VIDEO, timeout)
            la_end = load_averages()
            ticks = sensor_tick_intervals(instance)
        result["peak_tree_pss_mib"] = memory.peak_pss_kb / 1024
        result["peak_tree_rss_mib"] = memory.peak_rss_kb / 1024
        result["peak_processes"] = memory.peak_procs
        result.update(hops(runs, t_submit, t_submitted))
        for name, gap in ticks.items():
            result["detail"][f"{name}: median s between ticks"] = gap
        boots = [r["fork_server_boot_s"] for r in runs if r.get("fork_server_boot_s")]
        if boots:
            result["fork_server_boot_s"] = boots[0]
        result["runs"] = runs
        result["load_start"], result["load_end"] = la_start, la_end
    finally:
        stack.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return result


def cli_render() -> dict[str, Any]:
    """``pipeline render SPEC`` in a fresh instance and data directory; wall seconds."""
    import shutil

    root = Path(tempfile.mkdtemp(prefix="bench-daemon-cli-"))
    try:
        (root / "dagster_home").mkdir()
        (root / "dagster_home" / "dagster.yaml").write_text(INSTANCE_YAML)
        (root / "data").mkdir()
        env = subprocess_env(root)
        la_start = load_averages()
        t0 = time.perf_counter()
        proc = subprocess.run([str(VENV_BIN / "pipeline"), "render", str(SPEC)], env=env, cwd=str(root),
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"pipeline render failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        la_end = load_averages()
        import dagster as dg

        with dg.DagsterInstance.from_config(str(root / "dagster_home")) as instance:
            runs = _video_runs(instance, VIDEO)
        segs = [r for r in runs if r["job"] == "render_segment" and r["start"] and r["end"]]
        work = [r for r in runs if r["job"] in ("render_segment", "render_music") and r["start"] and r["end"]]
        return {"wall_s": wall, "load_start": la_start, "load_end": la_end,
                "segment_execution_s": statistics.median(r["end"] - r["start"] for r in segs) if segs else None,
                "segment_phase_s": (max(r["end"] for r in work) - min(r["start"] for r in work)) if work else None}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- replicate through the daemon ------------------------------------------------------------------

def replicate_daemon_render(config: str, spec: Path, workload, *, seed: int, scale: float,
                            timeout: float = 1800.0) -> dict[str, Any]:
    """Render ``spec`` with the replicate provider through the daemon against a fresh fake server."""
    import shutil

    import dagster as dg
    import yaml

    from _server import ServerProcess
    from _workload import critical_path
    from pipeline.generation import read_call_log
    from pipeline.store import Workspace
    from pipeline_tests.dagster_services import DagsterStack
    from specs import write_spec

    root = Path(tempfile.mkdtemp(prefix=f"bench-daemon-rep-{_safe(config)}-"))
    overrides, source = _overrides(config)
    video_id = yaml.safe_load(spec.read_text())["video_id"]
    try:
        with ServerProcess(seed=seed, scale=scale, failed=[], fault_kind=None, fault_options={}) as server:
            stack = DagsterStack.create(root, instance_overrides=overrides, instance_source=source,
                                        workspace=_workspace(config, root), extra_env={**CONFIGS[config].get("env", {}),
                "REPLICATE_API_TOKEN": server.token, "REPLICATE_BASE_URL": server.base_url,
                "REPLICATE_OUTPUT_HOSTS": server.origin})
            try:
                stack.start_daemon(wait=True, command=_daemon_command(config))
                with dg.DagsterInstance.from_config(str(stack.home)) as instance:
                    warm = write_spec(root / "warmup.yaml", WARMUP_VIDEO, [5])
                    _submit_file(stack, warm)  # local provider: warms the daemon without touching the fake
                    _wait_final(stack, instance, WARMUP_VIDEO, 600)
                    data = yaml.safe_load(spec.read_text())
                    data["provider"] = "replicate"
                    replicate_spec = root / spec.name
                    replicate_spec.write_text(yaml.safe_dump(data, sort_keys=False))
                    la_start = load_averages()
                    t_submit = time.time()
                    _submit_file(stack, replicate_spec)
                    t_submitted = time.time()
                    runs = _wait_final(stack, instance, video_id, timeout)
                    la_end = load_averages()
                calls = [c for c in read_call_log(Workspace.at(stack.data_dir)) if c.get("video_id") == video_id]
                stats = server.stats()
            finally:
                stack.stop()
        keys = {p["key"] for p in stats["predictions"]}
        if keys != set(workload.keys):
            raise RuntimeError(f"the fake saw other calls than the workload predicts: "
                               f"unknown {sorted(keys - set(workload.keys))[:3]}, missing {sorted(set(workload.keys) - keys)[:3]}")
        stitch = sum(c["seconds"] for c in calls if c.get("stage") == "stitched_video")  # any stitch method
        mux = sum(c["seconds"] for c in calls if c.get("stage") == "final_video")  # stream copy or loudnorm
        out = hops(runs, t_submit, t_submitted)
        bound = critical_path(workload, stitch, mux)
        out.update({"config": config, "bound_s": bound, "x_bound": out["total_s"] / bound, "stitch_s": stitch,
                    "mux_s": mux, "creates": stats["creates"], "load_start": la_start, "load_end": la_end,
                    "runs": runs})
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def replicate_cli_render(spec: Path, workload, *, seed: int, scale: float) -> dict[str, Any]:
    """The same spec with render_video in-process (bench_makespan's harness), production polling."""
    from bench_makespan import run_pipeline

    la_start = load_averages()
    r = run_pipeline(spec, workload, seed=seed, scale=scale, polling="production",
                     max_parallel=len(workload.beats) + 1)
    return {"makespan_s": r["makespan_s"], "bound_s": r["bound_s"], "x_bound": r["makespan_s"] / r["bound_s"],
            "load_start": la_start, "load_end": load_averages()}


# --- main ------------------------------------------------------------------------------------------

def _fmt_load(la) -> str:
    return f"{la[0]:.2f}"


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--configs", default="before,default-launcher,forkserver",
                    help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--cold", action="store_true", help="no warm-up video: the demo spec is the daemon's first")
    ap.add_argument("--preload-experiment", action="store_true", help="add the forkserver+defs configuration")
    ap.add_argument("--granularity-experiment", action="store_true", help="add the op-granularity configuration")
    ap.add_argument("--sensor-experiment", action="store_true",
                    help="add the fast-sensors and fast-sensors+1s-loop configurations")
    ap.add_argument("--no-cli", action="store_true", help="skip the pipeline render reference")
    ap.add_argument("--replicate", action="store_true", help="also the replicate render through the daemon")
    ap.add_argument("--replicate-only", action="store_true", help="only the replicate render")
    ap.add_argument("--replicate-spec", default="mixed-12", choices=["mixed-12", "mixed-60"])
    ap.add_argument("--replicate-scale", type=float, default=1.0)
    ap.add_argument("--replicate-configs", default="before,forkserver")
    ap.add_argument("--replicate-cli", action="store_true", help="also render_video in-process on the same spec")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1 repetition of before and forkserver, no replicate")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if args.quick:
        args.repeat, configs = 1, ["before", "forkserver"]
    if args.preload_experiment:
        configs.append("forkserver+defs")
    if args.granularity_experiment:
        configs.append("op-granularity")
    if args.sensor_experiment:
        configs += ["fast-sensors", "fast-sensors+1s-loop"]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r}")
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_at_start": load_averages()}
    heading("The daemon path: pipeline submit -> final video", 2)
    emit(f"Started {results['started']}; load average (1/5/15 min) at start "
         f"{' / '.join(f'{x:.2f}' for x in results['load_at_start'])}; 2 cores.")

    if not args.replicate_only:
        renders: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
        cli: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for rep in range(args.repeat):  # interleaved, so slow drifts in background load hit every config
            for c in configs:
                try:
                    r = daemon_render(c, warm_up=not args.cold)
                except Exception as exc:  # noqa: BLE001 - a failed render is reported, not measured
                    failures.append({"config": c, "rep": rep + 1, "error": f"{type(exc).__name__}: {exc}"})
                    emit(f"  rep {rep + 1} {c}: FAILED ({type(exc).__name__}: {exc})")
                    continue
                renders[c].append(r)
                emit(f"  rep {rep + 1} {c}: {r['total_s']:.1f} s (load {_fmt_load(r['load_start'])} -> "
                     f"{_fmt_load(r['load_end'])})")
            if not args.no_cli:
                r = cli_render()
                cli.append(r)
                emit(f"  rep {rep + 1} pipeline render: {r['wall_s']:.1f} s (load {_fmt_load(r['load_start'])})")
        results["daemon"] = renders
        results["cli"] = cli
        results["failures"] = failures
        configs = [c for c in configs if renders[c]]
        cli_med = statistics.median(r["wall_s"] for r in cli) if cli else None

        heading(f"40 s demo spec, local provider: submit -> final_video materialized ({args.repeat} runs each"
                + (", cold daemon" if args.cold else ", warm daemon") + ")", 3)
        rows = []
        for c in configs:
            totals = [r["total_s"] for r in renders[c]]
            med = statistics.median(totals)
            rows.append({"configuration": LABELS[c], "median_s": med, "min-max_s": _spread(totals),
                         "x_pipeline_render": (med / cli_med) if cli_med else None,
                         "segment_launch_s (median)": statistics.median(
                             r["detail"]["segment runs: median launch_s"] for r in renders[c]),
                         "peak_daemon_tree_pss_mib": statistics.median(r["peak_tree_pss_mib"] for r in renders[c]),
                         "segment_phase_s": statistics.median(
                             r["hops"]["segment + music runs: first enqueued -> last succeeded"] for r in renders[c]),
                         "segment_execution_s": statistics.median(
                             r["detail"]["segment runs: median execution_s"] for r in renders[c]),
                         "load_1min (start..end)": ", ".join(f"{r['load_start'][0]:.1f}..{r['load_end'][0]:.1f}"
                                                            for r in renders[c])})
        if cli:
            walls = [r["wall_s"] for r in cli]
            rows.append({"configuration": "`pipeline render` (in-process, -j 2, fresh data dir; wall incl. start-up)",
                         "median_s": cli_med, "min-max_s": _spread(walls), "x_pipeline_render": 1.0,
                         "segment_launch_s (median)": None, "peak_daemon_tree_pss_mib": None,
                         "segment_phase_s": statistics.median(r["segment_phase_s"] for r in cli),
                         "segment_execution_s": statistics.median(r["segment_execution_s"] for r in cli),
                         "load_1min (start..end)": ", ".join(f"{r['load_start'][0]:.1f}..{r['load_end'][0]:.1f}"
                                                            for r in cli)})
        emit(table(rows))
        if failures:
            emit("\nFailed renders (not in the medians): " + "; ".join(
                f"{f['config']} rep {f['rep']}: {f['error'].splitlines()[0]}" for f in failures))

        heading("Where the time goes (median of each hop over the runs; the hops add up to the total)", 4)
        names = list(renders[configs[0]][0]["hops"])
        hop_rows = []
        for name in names + ["total_s"]:
            row = {"hop": name}
            for c in configs:
                vals = [r["hops"][name] if name != "total_s" else r["total_s"] for r in renders[c]]
                row[c] = statistics.median(vals)
            hop_rows.append(row)
        detail_names = list(dict.fromkeys(n for c in configs for r in renders[c] for n in r["detail"]))
        for name in detail_names:
            row = {"hop": f"({name})"}
            for c in configs:
                vals = [r["detail"][name] for r in renders[c] if name in r["detail"]]
                row[c] = statistics.median(vals) if vals else None
            hop_rows.append(row)
        boots = {c: [r.get("fork_server_boot_s") for r in renders[c] if r.get("fork_server_boot_s")] for c in configs}
        if any(boots.values()):
            row = {"hop": "(fork server boot, once per daemon start: in the warm-up)"}
            for c in configs:
                row[c] = statistics.median(boots[c]) if boots[c] else None
            hop_rows.append(row)
        emit(table(hop_rows))

    if args.replicate or args.replicate_only:
        from _workload import workload_for_spec
        from specs import makespan_specs

        spec = makespan_specs(scratch_dir("daemon-specs"))[args.replicate_spec]
        workload = workload_for_spec(str(spec), seed=args.seed, scale=args.replicate_scale,
                                     scratch=str(scratch_dir("daemon-wl")))
        rep_rows, rep_results = [], {}
        for c in [c for c in args.replicate_configs.split(",") if c]:
            r = replicate_daemon_render(c, spec, workload, seed=args.seed, scale=args.replicate_scale)
            rep_results[c] = r
            emit(f"  replicate {c}: {r['total_s']:.1f} s, bound {r['bound_s']:.1f} s, x{r['x_bound']:.2f}")
            rep_rows.append({"path": f"daemon, {LABELS[c]}", "makespan_s": r["total_s"], "bound_s": r["bound_s"],
                             "x_bound": r["x_bound"], "paid_creates": r["creates"],
                             "load_1min (start..end)": f"{r['load_start'][0]:.1f}..{r['load_end'][0]:.1f}"})
        if args.replicate_cli:
            r = replicate_cli_render(spec, workload, seed=args.seed, scale=args.replicate_scale)
            rep_results["cli"] = r
            rep_rows.append({"path": "`render_video` in-process (pipeline render --provider replicate -j beats+1)",
                             "makespan_s": r["makespan_s"], "bound_s": r["bound_s"], "x_bound": r["x_bound"],
                             "paid_creates": None,
                             "load_1min (start..end)": f"{r['load_start'][0]:.1f}..{r['load_end'][0]:.1f}"})
        results["replicate"] = rep_results
        heading(f"Replicate render through the daemon: `{args.replicate_spec}` against the fake server, "
                f"latencies x{args.replicate_scale:g}, production polling", 3)
        emit(table(rep_rows))
        daemon_cfgs = [c for c in rep_results if c != "cli"]
        if daemon_cfgs:
            heading("Where the time goes (replicate, daemon)", 4)
            names = list(rep_results[daemon_cfgs[0]]["hops"])
            hop_rows = [{"hop": n, **{c: rep_results[c]["hops"][n] for c in daemon_cfgs}} for n in names]
            hop_rows.append({"hop": "total_s", **{c: rep_results[c]["total_s"] for c in daemon_cfgs}})
            hop_rows.append({"hop": "(critical-path bound)", **{c: rep_results[c]["bound_s"] for c in daemon_cfgs}})
            for n in rep_results[daemon_cfgs[0]]["detail"]:
                hop_rows.append({"hop": f"({n})", **{c: rep_results[c]["detail"][n] for c in daemon_cfgs}})
            emit(table(hop_rows))

    results["load_at_end"] = load_averages()
    emit(f"\nLoad average at the end: {' / '.join(f'{x:.2f}' for x in results['load_at_end'])}.")
    save_results("daemon_path", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
