"""The handoff (``pipeline.orchestration.handoff``): a finishing plan run queues its video's segment
and music runs, and the segment or music run that makes the video ready queues its assembly, as
the sensors would but without waiting for their tick.

- The run coordinator queues one run per sensor request (sensor name + run key): a racing
  duplicate is canceled naming the first, a run submitted twice is queued once, a re-execution is
  not checked.
- Who may hand off: not the CLI's in-process runs, not runs without a code location, not with
  ``PIPELINE_HANDOFF=0``.
- Through a real ``dagster-daemon``: with the fan-out and assembly sensors stopped (so only a
  handoff can queue those runs), a spec dropped into the inbox renders to its final video; every
  segment, music and assembly run names the run that queued it, and each request was queued once.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from pipeline.orchestration.handoff import HANDOFF_TAG, handoff_blocker
from pipeline.orchestration.status import IN_PROGRESS, video_status
from pipeline_tests.conftest import write_spec
from pipeline_tests.dagster_services import BIN, ROOT, DagsterStack, wait_until
from pipeline_tests.test_run_tags import _coordinator_instance, _submit

REQUEST = {"dagster/partition": "001|vid", "dagster/partition/video": "vid", "dagster/partition/segment": "001",
           "dagster/sensor_name": "segment_fanout_sensor", "dagster/run_key": "vid:001:7"}


def _canceled_message(instance: dg.DagsterInstance, run_id: str) -> str:
    [message] = [e.message for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_CANCELED)]
    return message


def test_coordinator_queues_one_run_per_sensor_request(tmp_path):
    with _coordinator_instance(tmp_path / "home") as instance:
        first = _submit(instance, "render_segment", REQUEST)
        assert first.status == dg.DagsterRunStatus.QUEUED
        # The same request again (a handoff and the sensor's tick racing): canceled, naming the first.
        second = _submit(instance, "render_segment", REQUEST)
        assert second.status == dg.DagsterRunStatus.CANCELED
        message = _canceled_message(instance, second.run_id)
        assert first.run_id in message and "vid:001:7" in message and "one run per request" in message
        # The first run submitted a second time (the sensor found it before it was queued): queued once.
        again = instance.run_coordinator.submit_run(dg.SubmitRunContext(first, workspace=None))
        assert again.status == dg.DagsterRunStatus.QUEUED
        assert len(instance.all_logs(first.run_id, of_type=dg.DagsterEventType.PIPELINE_ENQUEUED)) == 1
        # Another run key, another sensor, a re-execution: each queued.
        assert _submit(instance, "render_segment", {**REQUEST, "dagster/run_key": "vid:001:8"}).status == \
            dg.DagsterRunStatus.QUEUED
        assert _submit(instance, "render_segment", {**REQUEST, "dagster/sensor_name": "other"}).status == \
            dg.DagsterRunStatus.QUEUED
        assert _submit(instance, "render_segment", {**REQUEST, "dagster/parent_run_id": first.run_id}).status == \
            dg.DagsterRunStatus.QUEUED
        # Once the first failed, the request may be queued again (a sensor would not, a person may).
        instance.report_run_failed(instance.get_run_by_id(first.run_id), "boom")
        assert _submit(instance, "render_segment", REQUEST).status == dg.DagsterRunStatus.QUEUED


def test_coordinator_settles_racing_submissions_of_one_request(tmp_path):
    """Eight threads submit eight runs of one request at once: exactly one is queued."""
    with _coordinator_instance(tmp_path / "home") as instance:
        origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("video_pipeline"), "__repository__")
        runs = [create_run_for_test(instance, job_name="render_segment", tags=REQUEST,
                                    status=dg.DagsterRunStatus.NOT_STARTED,
                                    remote_job_origin=origin.get_job_origin("render_segment")) for _ in range(8)]
        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(lambda r: instance.run_coordinator.submit_run(dg.SubmitRunContext(r, None)), runs))
        statuses = sorted(r.status.value for r in done)
        assert statuses == ["CANCELED"] * 7 + ["QUEUED"], statuses


def test_who_may_hand_off(tmp_path, monkeypatch):
    with _coordinator_instance(tmp_path / "home") as instance:
        origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("video_pipeline"), "__repository__")
        queued = create_run_for_test(instance, job_name="plan_video", remote_job_origin=origin.get_job_origin("x"))
        # create_run_for_test gives no code origin: like execute_in_process, nothing to launch it with.
        assert "code location" in handoff_blocker(instance, queued)
        cli = create_run_for_test(instance, job_name="plan_video", tags={"pipeline/launched_by": "cli"})
        assert "pipeline render" in handoff_blocker(instance, cli)
        monkeypatch.setenv("PIPELINE_HANDOFF", "0")
        assert handoff_blocker(instance, queued) == "PIPELINE_HANDOFF=0"
    with dg.instance_for_test() as plain:  # DefaultRunCoordinator: runs are launched, not queued
        run = create_run_for_test(plain, job_name="plan_video")
        monkeypatch.delenv("PIPELINE_HANDOFF")
        assert handoff_blocker(plain, run) is not None


# --- through the real daemon, with the sensors that would do it stopped -----------------------------

VIDEO = "handed-off"
BEATS = [{"prompt": "A paper boat sets off on a puddle", "duration_s": 5},
         {"prompt": "The boat spins past a fallen leaf", "duration_s": 5, "motion": "slow lateral pan"}]


def _stop_sensors(stack: DagsterStack, *names: str) -> None:
    """``dagster sensor stop NAME`` for each of ``names`` (in parallel), before the daemon starts."""
    procs = [subprocess.Popen([str(BIN / "dagster"), "sensor", "stop", name, "-w", str(stack.workspace)], cwd=ROOT,
                              env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in names]
    for name, proc in zip(names, procs):
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"dagster sensor stop {name}:\n{out}"


@pytest.mark.timeout(540)
def test_handoffs_render_a_video_with_the_fanout_and_assembly_sensors_stopped(tmp_path):
    stack = DagsterStack.create(tmp_path)
    try:
        _stop_sensors(stack, "segment_fanout_sensor", "assembly_sensor")
        stack.start_daemon(wait=True)
        spec = write_spec(tmp_path / f"{VIDEO}.yaml", video_id=VIDEO, beats=BEATS)
        old = time.time() - 30
        os.utime(spec, (old, old))
        os.replace(spec, stack.data_dir / "inbox" / spec.name)
        with dg.DagsterInstance.from_config(str(stack.home)) as instance:
            def describe() -> str:
                runs = [f"{r.run_id[:8]} {r.job_name} {r.status.value} {dict(r.tags)}" for r in instance.get_runs()]
                return "\n".join(runs) + "\n" + stack.tails()

            def final() -> bool:
                stack.check_alive()
                status = video_status(instance, stack.data_dir / "manifests", VIDEO)
                return status.video_assets.get("final_video") == "materialized" and not \
                    instance.get_runs(dg.RunsFilter(statuses=list(IN_PROGRESS)))

            wait_until(final, timeout=360, interval=1, on_timeout=describe, what=f"{VIDEO}'s final video")
            assert (stack.data_dir / "videos" / f"{VIDEO}.mp4").stat().st_size > 0
            runs = instance.get_runs()
            by_job: dict[str, list[dg.DagsterRun]] = {}
            for run in runs:
                by_job.setdefault(run.job_name, []).append(run)
            assert {j: len(rs) for j, rs in by_job.items()} == \
                {"plan_video": 1, "render_segment": 2, "render_music": 1, "assemble_video": 1}, describe()
            [plan] = by_job["plan_video"]
            assert HANDOFF_TAG not in plan.tags and plan.tags["dagster/sensor_name"] == "spec_inbox_sensor"
            for run in by_job["render_segment"] + by_job["render_music"]:
                assert run.status == dg.DagsterRunStatus.SUCCESS
                assert run.tags[HANDOFF_TAG] == plan.run_id, run.tags  # queued by the plan run
                assert run.tags["dagster/sensor_name"] == "segment_fanout_sensor" and run.tags["dagster/run_key"]
                assert run.tags["video"] == VIDEO
            [assembly] = by_job["assemble_video"]
            makers = {r.run_id for r in by_job["render_segment"] + by_job["render_music"]}
            assert assembly.tags[HANDOFF_TAG] in makers and assembly.status == dg.DagsterRunStatus.SUCCESS
            assert assembly.tags["dagster/sensor_name"] == "assembly_sensor"
            # Each was queued as soon as its stage ended: no sensor tick (5 s loop) in between.
            ended = {r.run_id: instance.get_run_record_by_id(r.run_id).end_time for r in runs}
            for run in by_job["render_segment"] + by_job["render_music"] + [assembly]:
                maker_end = ended[run.tags[HANDOFF_TAG]]
                queued_at = instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
                assert maker_end is None or queued_at <= maker_end + 0.5, (run.job_name, queued_at, maker_end)
    finally:
        stack.stop()
