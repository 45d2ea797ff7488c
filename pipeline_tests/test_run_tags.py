"""Every run of a video carries the ``video`` tag and counts against the per-video limit, however
it was launched, and a video is assembled once per state, whoever asks.

- ``VideoRunCoordinator`` on a real instance: partitioned runs without the tag get it from
  Dagster's partition tags before they are queued; a second assembly of one state is canceled.
- Through a real ``dagster-webserver`` and ``dagster-daemon`` on 127.0.0.1 (dagster_services.py):
  a spec dropped into the inbox renders by the sensors with one segment failing; ``pipeline retry``
  re-renders it while the daemon's assembly sensor runs, and exactly one ``assemble_video`` run
  executes for that state; a backfill (``launchPartitionBackfill``) of one segment and a
  ``launchRun`` of ``assemble_video`` from the UI's API carry the tag; one tag filter finds every
  run of the video (sensor, UI, backfill, CLI).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import create_run_for_test

from pipeline.defs.partitions import segment_partition_key
from pipeline.orchestration.coordinator import VideoRunCoordinator, video_for_tags
from pipeline.orchestration.status import IN_PROGRESS, video_status
from pipeline_tests.cli_processes import start_cli
from pipeline_tests.conftest import write_spec
from pipeline_tests.dagster_services import ROOT, DagsterStack, wait_until

COORDINATOR = {"module": "pipeline.orchestration.coordinator", "class": "VideoRunCoordinator",
               "config": {"dequeue_interval_seconds": 1}}
"""The run coordinator of the repository's dagster.yaml."""


def _coordinator_instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "telemetry": {"enabled": False}, "run_coordinator": COORDINATOR,
        "concurrency": {"runs": {"tag_concurrency_limits": [
            {"key": "video", "value": {"applyLimitPerUniqueValue": True}, "limit": 13}]}}}))
    return dg.DagsterInstance.from_config(str(home))


def _submit(instance: dg.DagsterInstance, job: str, tags: dict[str, str]) -> dg.DagsterRun:
    """Create a run of ``job`` with ``tags`` and submit it, as a sensor, the UI or a backfill does."""
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("video_pipeline"), "__repository__")
    run = create_run_for_test(instance, job_name=job, tags=tags, status=dg.DagsterRunStatus.NOT_STARTED,
                              remote_job_origin=origin.get_job_origin(job))
    return instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=None))


def test_repository_instance_uses_the_video_coordinator_and_limit():
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["run_coordinator"]["module"] == COORDINATOR["module"]
    assert config["run_coordinator"]["class"] == COORDINATOR["class"]
    [limit] = [t for t in config["concurrency"]["runs"]["tag_concurrency_limits"] if t["key"] == "video"]
    assert limit["value"] == {"applyLimitPerUniqueValue": True} and limit["limit"] >= 7  # a 6-beat video + music


def test_video_for_tags_covers_every_partition_shape():
    assert video_for_tags({"dagster/partition/video": "a", "dagster/partition": "001|a"}) == "a"
    assert video_for_tags({"dagster/partition": "b"}) == "b"
    assert video_for_tags({"dagster/partition": "002|c"}) == "c"
    assert video_for_tags({"dagster/asset_partition_range_start": "d", "dagster/asset_partition_range_end": "d"}) == "d"
    assert video_for_tags({"dagster/asset_partition_range_start": "d", "dagster/asset_partition_range_end": "e"}) is None
    assert video_for_tags({}) is None and video_for_tags({"video": "v", "dagster/partition": "w"}) == "v"


def test_coordinator_tags_runs_and_cancels_a_second_assembly_of_one_state(tmp_path):
    with _coordinator_instance(tmp_path / "home") as instance:
        assert isinstance(instance.run_coordinator, VideoRunCoordinator)
        segment = _submit(instance, "render_segment", {"dagster/partition": "001|vid", "dagster/partition/video": "vid",
                                                        "dagster/partition/segment": "001"})
        music = _submit(instance, "render_music", {"dagster/partition": "vid"})
        other = _submit(instance, "some_job", {"team": "x"})
        for run in (segment, music):
            assert run.tags["video"] == "vid" and run.status == dg.DagsterRunStatus.QUEUED
        assert "video" not in other.tags and other.status == dg.DagsterRunStatus.QUEUED
        assert {r.run_id for r in instance.get_runs(dg.RunsFilter(tags={"video": "vid"}))} == {segment.run_id,
                                                                                               music.run_id}
        state = {"dagster/partition": "vid", "pipeline/assembly_state": "42"}
        first = _submit(instance, "assemble_video", state)
        second = _submit(instance, "assemble_video", state)
        assert first.status == dg.DagsterRunStatus.QUEUED and second.status == dg.DagsterRunStatus.CANCELED
        [message] = [e.message for e in instance.all_logs(second.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)]
        assert first.run_id in message and "one assembly per state" in message
        assert _submit(instance, "assemble_video", {**state, "pipeline/assembly_state": "43"}).status == \
            dg.DagsterRunStatus.QUEUED  # another state
        instance.report_run_failed(instance.get_run_by_id(first.run_id), "boom")
        assert _submit(instance, "assemble_video", state).status == dg.DagsterRunStatus.QUEUED  # a failed one is redone
        # The daemon's run queue applies concurrency.runs to this coordinator (it is a QueuedRunCoordinator),
        # so the per-video limit keys on the tag it adds.
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert [(t["key"], t["limit"]) for t in limits] == [("video", 13)]


# --- through the real webserver and daemon -------------------------------------------------------

V, BAD = "tagged", "000"
BEATS = [{"prompt": "A paper boat sets off on a puddle", "duration_s": 5},
         {"prompt": "The boat spins past a fallen leaf", "duration_s": 5, "motion": "slow lateral pan"}]

LAUNCH_BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack } } }"""
LAUNCH_RUN = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message stack }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""


def _runs_of(instance: dg.DagsterInstance, video_id: str) -> dict[str, dg.DagsterRun]:
    """Every run whose Dagster partition tags name ``video_id`` (whatever tags we add)."""
    return {r.run_id: r for r in instance.get_runs()
            if r.tags.get("dagster/partition/video") == video_id or r.tags.get("dagster/partition") == video_id}


def _settled(instance: dg.DagsterInstance) -> bool:
    return not instance.get_run_records(dg.RunsFilter(statuses=list(IN_PROGRESS)))


def _assembly_tick_after(instance: dg.DagsterInstance, since: float) -> bool:
    """Whether ``assembly_sensor`` finished a tick that started after ``since`` (Unix seconds)."""
    [state] = [s for s in instance.all_instigator_state() if s.name == "assembly_sensor"]
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
    return any(t.timestamp > since and t.status != TickStatus.STARTED for t in ticks)


def _describe(instance: dg.DagsterInstance, stack: DagsterStack) -> str:
    lines = [f"{r.run_id[:8]} {r.job_name} {r.status.value} {dict(r.tags)}" for r in instance.get_runs(limit=40)]
    return "\n".join(lines) + "\n" + stack.tails()


@pytest.fixture
def stack(tmp_path):
    with DagsterStack.create(tmp_path).running(daemon=True) as s:  # the repository's dagster.yaml
        assert yaml.safe_load((s.home / "dagster.yaml").read_text())["run_coordinator"] == COORDINATOR
        yield s


@pytest.mark.timeout(600)
def test_every_run_of_a_video_is_tagged_and_a_state_is_assembled_once(stack, tmp_path):
    assert stack.stop_schedule("retry_failed_segments") == "STOPPED"  # its 10-minute tick is not under test
    stack.faults.write_text(json.dumps({"fail": [f"{V}/{BAD}"], "retryable": False}))
    spec = write_spec(tmp_path / f"{V}.yaml", video_id=V, beats=BEATS)
    old = time.time() - 30
    os.utime(spec, (old, old))
    os.replace(spec, stack.data_dir / "inbox" / spec.name)
    manifests = stack.data_dir / "manifests"

    with dg.DagsterInstance.from_config(str(stack.home)) as instance:
        describe = lambda: _describe(instance, stack)  # noqa: E731

        def first_pass() -> bool:
            stack.check_alive()
            status = video_status(instance, manifests, V)
            return {s.segment: s.state for s in status.segments} == {BAD: "failed", "001": "materialized"} and \
                status.video_assets.get("music") == "materialized" and _settled(instance)

        wait_until(first_pass, timeout=300, interval=2, what=f"{V}'s segment {BAD} to fail", on_timeout=describe)

        # `pipeline retry` re-renders the failed segment; its chunk_videos materialization wakes the
        # daemon's assembly sensor while the CLI goes on to assemble the same state itself.
        stack.faults.write_text(json.dumps({"fail": []}))
        cli = start_cli(["retry", V], env=stack.env, cwd=ROOT, log_path=tmp_path / "retry.log")
        try:
            assert cli.wait(timeout=300) == 0, cli.output()
        finally:
            cli.kill()
        cli_done = time.time()
        wait_until(lambda: _settled(instance) and _assembly_tick_after(instance, cli_done + 1), timeout=120,
                   interval=1, what="the assembly sensor to tick after the CLI's retry", on_timeout=describe)
        status = video_status(instance, manifests, V)
        state = status.assembly_state
        assert state is not None and status.final_storage_id and status.final_storage_id > state, describe()
        same_state = instance.get_runs(dg.RunsFilter(job_name="assemble_video",
                                                     tags={"video": V, "pipeline/assembly_state": str(state)}))
        executed = [r for r in same_state if r.status != dg.DagsterRunStatus.CANCELED]
        assert len(executed) == 1 and executed[0].status == dg.DagsterRunStatus.SUCCESS, describe()
        finals = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("final_video"), asset_partitions=[V], after_storage_id=state), limit=10).records
        assert len(finals) == 1 and finals[0].run_id == executed[0].run_id, describe()
        winner = "CLI" if executed[0].tags.get("pipeline/launched_by") == "cli" else "sensor"
        print(f"state {state}: assembled once, by the {winner}; {len(same_state) - 1} duplicate(s) canceled; "
              f"CLI output:\n{cli.output()}")

        # The UI's backfill of one segment partition, and its Launch run of assemble_video.
        partition = str(segment_partition_key(V, 1))
        launched = stack.graphql(LAUNCH_BACKFILL, {"p": {
            "partitionNames": [partition], "title": f"re-render {partition}",
            "assetSelection": [{"path": [a]} for a in ("beats", "storyboard_images", "chunk_videos")]}})
        assert launched["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["launchPartitionBackfill"]["backfillId"]
        wait_until(lambda: _settled(instance) and instance.get_runs(dg.RunsFilter(
            tags={"dagster/backfill": backfill_id}, statuses=[dg.DagsterRunStatus.SUCCESS])), timeout=180,
            interval=2, what=f"backfill {backfill_id}", on_timeout=describe)
        result = stack.graphql(LAUNCH_RUN, {"p": {
            "selector": {"repositoryLocationName": "video_pipeline", "repositoryName": "__repository__",
                         "jobName": "assemble_video"},
            "runConfigData": {}, "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": V}]}}})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        ui_run_id = result["run"]["runId"]
        wait_until(lambda: instance.get_run_by_id(ui_run_id).status == dg.DagsterRunStatus.SUCCESS and
                   _settled(instance), timeout=180, interval=2, what="the UI's assemble_video run", on_timeout=describe)

        # One tag filter finds every run of the video, whoever launched it.
        runs = _runs_of(instance, V)
        tagged = {r.run_id: r for r in instance.get_runs(dg.RunsFilter(tags={"video": V}))}
        assert set(tagged) == set(runs), describe()
        backfill_runs = [r for r in runs.values() if r.tags.get("dagster/backfill") == backfill_id]
        assert backfill_runs and all(r.tags.get("dagster/partition/video") == V for r in backfill_runs)
        assert instance.get_run_by_id(ui_run_id).tags["video"] == V
        sources = {"sensor" if "dagster/sensor_name" in r.tags else "backfill" if "dagster/backfill" in r.tags
                   else "cli" if r.tags.get("pipeline/launched_by") == "cli" else "ui" for r in runs.values()}
        assert sources == {"sensor", "backfill", "cli", "ui"}, describe()
        cli_runs = [r for r in runs.values() if r.tags.get("pipeline/launched_by") == "cli"]
        assert any(r.job_name == "render_segment" and r.tags.get("dagster/partition/segment") == BAD for r in cli_runs)
        for run in runs.values():  # the planner's runs also name the provider
            if "dagster/sensor_name" in run.tags or "pipeline/launched_by" in run.tags:
                assert run.tags.get("pipeline/provider") == "local", (run.job_name, run.tags)
