"""Dagster overhead per run: launch to first log, with the in-process CLI and with the daemon.

In-process (what ``pipeline render`` does, pipeline.orchestration.render):
- serial: ``execute_in_process`` of one cached ``render_segment`` run at a time in one process
  (every generation is a cache hit, so the run's wall time is almost all orchestration);
- forked workers: ``render_video(force=True)`` on a warm cache with --max-parallel 2, timing each
  run from the worker's ``execute_in_process`` call.
Launch = the ``execute_in_process`` call; first log = the run's PIPELINE_START event.

Daemon (what ``make dev`` does): ``dagster-daemon run`` on a temporary instance configured like the
repository's dagster.yaml (its run queue, pools, run retries and monitoring; storage in the temp
DAGSTER_HOME) with the repository's code location; ``pipeline submit`` drops the 40 s spec into the
inbox and the sensors launch every run (plan, 6 segments + music, assemble) through the queued run
coordinator and the default run launcher (one new process per run). Per run: enqueued -> starting
(queue and concurrency limits), starting -> PIPELINE_START (process launch: the first log),
PIPELINE_START -> first step, run wall; and the video's end-to-end time from submit.

Also two experiments on the same serial in-process runs: Dagster's consolidated SQLite event log
(one database instead of one per run), and no compute-log capture (NoOpComputeLogManager: the
default LocalComputeLogManager starts a ``tail -F`` and a Python watcher process for every run).

Usage: python benchmarks/bench_dagster_overhead.py [--repeat 8] [--no-daemon]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CLI_INSTANCE_YAML,
    EXAMPLES,
    INSTANCE_YAML,
    ROOT,
    VENV_BIN,
    emit,
    heading,
    save_results,
    subprocess_env,
    table,
    temp_env,
)

SPEC = EXAMPLES / "tortoise-and-hare.yaml"
VIDEO = "tortoise-and-hare"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

CONSOLIDATED_YAML = """telemetry:
  enabled: false
event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {home}/history/runs
"""


NOOP_LOGS_YAML = """telemetry:
  enabled: false
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""


def _events(instance, run_id: str) -> list[tuple[str, float, str | None]]:
    return [(e.dagster_event.event_type_value, e.timestamp, e.step_key)
            for e in instance.all_logs(run_id) if e.dagster_event is not None]


def _ts(events, kind: str) -> float | None:
    return next((ts for k, ts, _ in events if k == kind), None)


def _med(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def serial_in_process(repeat: int, label: str, data: str) -> dict[str, Any]:
    """Render the spec (local provider; into ``data``, whose generation cache may be warm), then time
    ``repeat`` cached segment runs in-process, one at a time."""
    import dagster as dg

    from pipeline.definitions import build_definitions
    from pipeline.defs.partitions import segment_partition_key
    from pipeline.orchestration.render import render_video

    defs = build_definitions(data)
    with dg.DagsterInstance.get() as instance:
        t0 = time.time()
        report = render_video(SPEC, defs=defs, instance=instance, max_parallel=2)
        render_s = time.time() - t0
        assert report.final is not None, [r.error for r in report.failed]
        job = defs.resolve_job_def("render_segment")
        samples = []
        for i in range(repeat):
            key = segment_partition_key(VIDEO, i % len(report.plan.beats))
            t0 = time.time()
            result = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False,
                                            run_config=QUIET)
            t1 = time.time()
            assert result.success
            ev = _events(instance, result.run_id)
            start, step = _ts(ev, "PIPELINE_START"), _ts(ev, "STEP_START")
            samples.append({"to_first_log_s": start - t0, "to_first_step_s": step - t0, "run_wall_s": t1 - t0,
                            "after_success_s": t1 - _ts(ev, "PIPELINE_SUCCESS")})
        storage = type(instance.event_log_storage).__name__
    return {"label": label, "storage": storage, "samples": samples, "render_s": render_s}


def forked_in_process(data: str) -> dict[str, Any]:
    """``render_video(force=True)`` on a warm cache; each worker's execute call is timestamped."""
    import dagster as dg

    import pipeline.orchestration.render as render
    from pipeline.definitions import build_definitions

    original = render.execute

    def timed_execute(*args, **kwargs):
        called = time.time()
        outcome = original(*args, **kwargs)
        outcome.outputs["_bench_called_at"] = called
        return outcome

    defs = build_definitions(data)
    render.execute = timed_execute
    try:
        with dg.DagsterInstance.get() as instance:
            first = render.render_video(SPEC, defs=defs, instance=instance, max_parallel=2)
            assert first.final is not None
            t0 = time.time()
            report = render.render_video(SPEC, defs=defs, instance=instance, max_parallel=2, force=True)
            total = time.time() - t0
            assert report.final is not None and not report.up_to_date
            rows = []
            for r in report.runs:
                ev = _events(instance, r.run_id)
                called = r.outputs.get("_bench_called_at")
                if called is None:  # executed in a forked worker: the run's creation is its launch
                    called = instance.get_run_record_by_id(r.run_id).create_timestamp.timestamp()
                start, step, end = _ts(ev, "PIPELINE_START"), _ts(ev, "STEP_START"), _ts(ev, "PIPELINE_SUCCESS")
                rows.append({"run": r.name, "job": r.job, "to_first_log_s": start - called,
                             "to_first_step_s": step - called, "run_wall_s": r.seconds,
                             "start_to_success_s": end - start})
    finally:
        render.execute = original
    return {"rows": rows, "total_s": total}


def _daemon_yaml(home: Path) -> str:
    """The repository's dagster.yaml without its storage paths (they default under ``home``)."""
    import yaml

    config = yaml.safe_load((ROOT / "dagster.yaml").read_text()) or {}
    for key in ("storage", "local_artifact_storage", "compute_logs", "run_storage", "event_log_storage",
                "schedule_storage"):
        config.pop(key, None)
    config.setdefault("telemetry", {"enabled": False})
    return yaml.safe_dump(config, sort_keys=False)


def daemon_render(timeout_s: float = 420) -> dict[str, Any]:
    import dagster as dg
    import yaml

    root = Path(os.environ["DAGSTER_HOME"]).parent
    home = Path(os.environ["DAGSTER_HOME"])
    (home / "dagster.yaml").write_text(_daemon_yaml(home))
    workspace = root / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "pipeline.definitions", "attribute": "defs", "working_directory": str(ROOT),
        "location_name": "video_pipeline"}}]}))
    env = subprocess_env(root)
    log = open(root / "daemon.log", "w")
    daemon = subprocess.Popen([str(VENV_BIN / "dagster-daemon"), "run", "-w", str(workspace)], env=env,
                              cwd=str(root), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with dg.DagsterInstance.get() as instance:
            # Wait for the daemon's first heartbeats (sensors and the run queue are live).
            t_start = time.time()
            while time.time() - t_start < 120:
                beats = instance.get_daemon_heartbeats()
                if {"SENSOR", "QUEUED_RUN_COORDINATOR"} <= set(beats):
                    break
                if daemon.poll() is not None:
                    raise RuntimeError(f"dagster-daemon exited: {(root / 'daemon.log').read_text()[-2000:]}")
                time.sleep(0.5)
            daemon_ready = time.time() - t_start
            t_submit = time.time()
            subprocess.run([str(VENV_BIN / "pipeline"), "submit", str(SPEC)], env=env, cwd=str(root), check=True,
                           capture_output=True)
            done = None
            while time.time() - t_submit < timeout_s:
                runs = instance.get_runs(filters=dg.RunsFilter(tags={"video": VIDEO}))
                failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
                if failed:
                    raise RuntimeError(f"daemon run {failed[0].job_name} failed; see {root / 'daemon.log'}")
                asm = [r for r in runs if r.job_name == "assemble_video" and r.status == dg.DagsterRunStatus.SUCCESS]
                if asm:
                    done = asm[0]
                    break
                time.sleep(0.5)
            if done is None:
                raise TimeoutError(f"the daemon did not finish the video in {timeout_s:g} s")
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"video": VIDEO}))
            rows = []
            for r in runs:
                ev = _events(instance, r.run_id)
                enq, starting = _ts(ev, "PIPELINE_ENQUEUED"), _ts(ev, "PIPELINE_STARTING")
                start, step, end = _ts(ev, "PIPELINE_START"), _ts(ev, "STEP_START"), _ts(ev, "PIPELINE_SUCCESS")
                rows.append({"job": r.job_name, "partition": r.tags.get("dagster/partition", ""),
                             "queued_s": (starting - enq) if enq and starting else None,
                             "launch_to_first_log_s": (start - starting) if starting and start else None,
                             "to_first_step_s": (step - start) if step and start else None,
                             "run_wall_s": (end - start) if end and start else None,
                             "enqueued_at": enq, "succeeded_at": end})
            rows.sort(key=lambda r: r["enqueued_at"] or 0)
            end_to_end = max(r["succeeded_at"] or 0 for r in rows) - t_submit
    finally:
        try:
            os.killpg(daemon.pid, signal.SIGINT)
            daemon.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
        log.close()
    return {"rows": rows, "end_to_end_s": end_to_end, "daemon_ready_s": daemon_ready}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--no-daemon", action="store_true")
    args = ap.parse_args(argv)
    heading("Dagster overhead per run (launch to first log)", 2)
    results: dict[str, Any] = {}

    with temp_env("overhead-serial") as root:
        data = str(root / "data")  # the first render fills its cache; the other instances reuse it
        results["serial"] = serial_in_process(args.repeat, "in-process, serial (default SQLite storage)", data)
        home = Path(os.environ["DAGSTER_HOME"])
        for key, label, yaml_text in [
            ("project", "in-process, serial (the project's storage: RunFirstSqliteStorage)",
             CLI_INSTANCE_YAML.replace("@STORAGE@", str(root / "home-project" / "storage"))),
            ("consolidated", "in-process, serial (consolidated SQLite event log)",
             CONSOLIDATED_YAML.format(home=root / "home-consolidated")),
            ("nooplogs", "in-process, serial (no compute-log capture)", NOOP_LOGS_YAML),
            ("forked", None, None),
        ]:
            instance_home = root / f"home-{key}"
            instance_home.mkdir()
            (instance_home / "dagster.yaml").write_text(yaml_text or INSTANCE_YAML)
            os.environ["DAGSTER_HOME"] = str(instance_home)
            try:
                results[key] = forked_in_process(data) if key == "forked" else \
                    serial_in_process(args.repeat, label, data)
            finally:
                os.environ["DAGSTER_HOME"] = str(home)

    rows = []
    for key in ("serial", "project", "consolidated", "nooplogs"):
        s = results[key]["samples"]
        rows.append({"mode": results[key]["label"], "runs": len(s),
                     "launch_to_first_log_s": _med(x["to_first_log_s"] for x in s),
                     "launch_to_first_step_s": _med(x["to_first_step_s"] for x in s),
                     "run_wall_s": _med(x["run_wall_s"] for x in s)})
    seg = [r for r in results["forked"]["rows"] if r["job"] == "render_segment"]
    rows.append({"mode": "in-process, forked workers (`pipeline render --force`, -j 2)", "runs": len(seg),
                 "launch_to_first_log_s": _med(r["to_first_log_s"] for r in seg),
                 "launch_to_first_step_s": _med(r["to_first_step_s"] for r in seg),
                 "run_wall_s": _med(r["run_wall_s"] for r in seg)})

    if not args.no_daemon:
        with temp_env("overhead-daemon") as root:
            try:
                results["daemon"] = daemon_render()
            except Exception as exc:  # noqa: BLE001 - report what could not be measured
                results["daemon_error"] = f"{type(exc).__name__}: {exc}"
                log = root / "daemon.log"
                if log.exists():
                    results["daemon_log_tail"] = log.read_text()[-3000:]
        if "daemon" in results:
            d = [r for r in results["daemon"]["rows"] if r["job"] == "render_segment"]
            rows.append({"mode": "daemon (sensors -> queued run coordinator -> run process)", "runs": len(d),
                         "launch_to_first_log_s": _med(r["launch_to_first_log_s"] for r in d),
                         "launch_to_first_step_s": _med((r["launch_to_first_log_s"] or 0) + (r["to_first_step_s"] or 0)
                                                        for r in d),
                         "run_wall_s": None})
    heading("Segment runs: median launch -> first log (PIPELINE_START) and -> first step", 4)
    emit(table(rows))
    emit("\nLaunch: the `execute_in_process` call (in-process) or the daemon's launch of the dequeued run "
         "(PIPELINE_STARTING: the run launcher starts a new run process). run_wall_s: launch to the end of a "
         "cached segment run (every generation a cache hit, so almost all of it is orchestration); the daemon's "
         "runs did real work (first render), see their table below.")
    heading("Forked in-process runs of a forced cached render (`pipeline render --force`, -j 2)", 4)
    emit(table([{k: v for k, v in r.items()} for r in results["forked"]["rows"]]))
    emit(f"\nTotal: {results['forked']['total_s']:.2f} s for {len(results['forked']['rows'])} runs.")
    if "daemon" in results:
        heading("Daemon: every run of one video (40 s spec, first render, local provider)", 4)
        emit(table([{k: v for k, v in r.items() if k not in ("enqueued_at", "succeeded_at")}
                    for r in results["daemon"]["rows"]]))
        emit(f"\nEnd to end (pipeline submit -> assemble succeeded): {results['daemon']['end_to_end_s']:.1f} s, "
             f"against {results['serial']['render_s']:.1f} s for the same first render in-process "
             f"(`pipeline render`, -j 2) "
             f"(sensor ticks every 5 s; queue limits from dagster.yaml). Daemon ready after "
             f"{results['daemon']['daemon_ready_s']:.1f} s.")
    elif "daemon_error" in results:
        emit(f"\nDaemon: not measured: {results['daemon_error']}")
    save_results("dagster_overhead", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
