"""Sensor and schedule logic with an ephemeral instance and build_sensor_context: partition
requests, run requests, tags and cursors for new, repeated, changed and invalid specs; fan-out of
every real segment at once, longest first, never a phantom segment; assembly once per state (also
when the CLI assembled it), with the reason logged while a video waits; bounded scheduled retries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import segment_partition_key
from pipeline.orchestration.render import execute
from pipeline.defs.resources import PipelineResource
from pipeline.defs.schedules import failed_segment_runs, retry_failed_segments
from pipeline.defs.sensors import assembly_sensor, segment_fanout_sensor, spec_inbox_sensor
from pipeline.orchestration.planner import MAX_SCHEDULED_RETRIES
from pipeline.submissions import PROVIDER_TAG, load_submission
from pipeline_tests.conftest import EXAMPLES, write_spec


def _drop(inbox: Path, src: Path, name: str | None = None) -> Path:
    inbox.mkdir(parents=True, exist_ok=True)
    target = inbox / (name or src.name)
    target.write_bytes(src.read_bytes())
    old = time.time() - 10  # settled: not being written any more
    os.utime(target, (old, old))
    return target


def _tick(sensor, instance, pipeline, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pipeline": pipeline})
    return sensor(context)


@pytest.fixture
def setup(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        pipeline = PipelineResource(data_dir=str(tmp_path / "data"))
        yield instance, pipeline, pipeline.inbox_path


def test_inbox_new_repeated_changed_and_invalid_specs(setup, tmp_path):
    instance, pipeline, inbox = setup
    # Nothing there: nothing requested.
    empty = _tick(spec_inbox_sensor, instance, pipeline)
    assert empty.run_requests == [] and empty.dynamic_partitions_requests == []

    # New valid spec: registered, moved to processed/, partition added, video_spec requested.
    _drop(inbox, EXAMPLES / "tortoise-and-hare.yaml")
    first = _tick(spec_inbox_sensor, instance, pipeline)
    [request] = first.run_requests
    assert request.partition_key == "tortoise-and-hare" and request.job_name == "plan_video"
    sub = load_submission(pipeline.workspace, "tortoise-and-hare")
    assert request.run_key == f"tortoise-and-hare:{sub.spec_sha256[:16]}"
    assert request.tags == {"video": "tortoise-and-hare", "pipeline/spec": sub.spec_sha256[:12], PROVIDER_TAG: "local"}
    assert [r.partition_keys for r in first.dynamic_partitions_requests] == [["tortoise-and-hare"]]
    assert (inbox / "processed" / "tortoise-and-hare.yaml").exists()
    assert not (inbox / "tortoise-and-hare.yaml").exists()
    cursor = json.loads(first.cursor)
    assert set(cursor) == {"tortoise-and-hare"}

    # Idempotent across ticks: the same cursor requests nothing again.
    instance.add_dynamic_partitions("videos", ["tortoise-and-hare"])
    assert _tick(spec_inbox_sensor, instance, pipeline, first.cursor).run_requests == []

    # Identical re-drop: filed away (with a new name), nothing new started.
    _drop(inbox, EXAMPLES / "tortoise-and-hare.yaml")
    again = _tick(spec_inbox_sensor, instance, pipeline, first.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    assert len(list((inbox / "processed").glob("tortoise-and-hare*.yaml"))) == 2

    # Changed spec for the same video_id: re-plans that video (no new partition needed).
    spec = yaml.safe_load((EXAMPLES / "tortoise-and-hare.yaml").read_text())
    spec["beats"][0]["prompt"] = "A boastful hare juggles acorns"
    changed_path = tmp_path / "changed.yaml"
    changed_path.write_text(yaml.safe_dump(spec))
    _drop(inbox, changed_path, "tortoise-v2.yaml")
    changed = _tick(spec_inbox_sensor, instance, pipeline, again.cursor)
    [rerun] = changed.run_requests
    assert rerun.partition_key == "tortoise-and-hare" and rerun.run_key != request.run_key
    assert changed.dynamic_partitions_requests == []

    # Invalid spec: moved to rejected/ with the reason beside it; nothing requested.
    bad = write_spec(tmp_path / "bad.yaml", video_id="Bad Id", colour="blue")
    _drop(inbox, bad)
    rejected = _tick(spec_inbox_sensor, instance, pipeline, changed.cursor)
    assert rejected.run_requests == []
    error = (inbox / "rejected" / "bad.yaml.error.txt").read_text()
    assert "video_id" in error and "colour: unknown field" in error and "bad.yaml" in error
    assert (inbox / "rejected" / "bad.yaml").exists() and not (inbox / "bad.yaml").exists()


def test_inbox_waits_for_a_file_still_being_written(setup):
    instance, pipeline, inbox = setup
    inbox.mkdir(parents=True)
    (inbox / "fresh.yaml").write_text((EXAMPLES / "water-cycle.yaml").read_text())
    result = _tick(spec_inbox_sensor, instance, pipeline)
    assert result.run_requests == [] and (inbox / "fresh.yaml").exists()


def _plan(env_defs, instance, spec: Path, data_dir: Path) -> None:
    from pipeline.store import Workspace
    from pipeline.submissions import submit_file

    sub, _ = submit_file(Workspace.at(data_dir), spec)
    instance.add_dynamic_partitions("videos", [sub.video_id])
    assert execute(env_defs, instance, "plan_video", sub.video_id, name="plan").success


def test_fanout_requests_real_segments_and_music_only(env, tmp_path):
    # A 3-beat video first, so segments 000-002 exist; then a 1-beat video whose 001/002 are phantoms.
    _plan(env.defs, env.instance, write_spec(tmp_path / "a.yaml", video_id="three"), env.data_dir)
    pipeline = env.defs.resources["pipeline"]
    first = _tick(segment_fanout_sensor, env.instance, pipeline)
    assert [r.partition_keys for r in first.dynamic_partitions_requests] == [["000", "001", "002"]]
    # Every real segment at once (nothing serializes a video's beats), longest chain first (beat 001
    # is 6 s, the others 5 s), music after the longer half; each run keyed by the spec's storage id.
    assert [(r.job_name, str(r.partition_key)) for r in first.run_requests] == [
        ("render_segment", "001|three"), ("render_music", "three"), ("render_segment", "000|three"),
        ("render_segment", "002|three")]
    [spec_record] = env.instance.fetch_materializations(dg.AssetKey("video_spec"), limit=1).records
    plan = read_manifest(pipeline.manifests_dir, "video_spec", "three")
    for r in first.run_requests:
        assert r.tags == {"video": "three", "pipeline/spec": plan.spec_sha256[:12], PROVIDER_TAG: "local"}
        assert r.run_key.startswith("three:") and r.run_key.endswith(f":{spec_record.storage_id}")
    assert len({r.run_key for r in first.run_requests}) == 4
    assert first.cursor == str(spec_record.storage_id)
    env.instance.add_dynamic_partitions("segments", ["000", "001", "002"])

    _plan(env.defs, env.instance, write_spec(tmp_path / "b.yaml", video_id="one",
                                             beats=[{"prompt": "One shot", "duration_s": 5}]), env.data_dir)
    second = _tick(segment_fanout_sensor, env.instance, pipeline, first.cursor)
    assert second.dynamic_partitions_requests == []  # 000 exists already
    keys = [dict(r.partition_key.keys_by_dimension) for r in second.run_requests if r.job_name == "render_segment"]
    assert keys == [{"video": "one", "segment": "000"}]  # no phantom 001/002
    assert int(second.cursor) > int(first.cursor)
    # Idempotent: the same cursor sees nothing new.
    assert _tick(segment_fanout_sensor, env.instance, pipeline, second.cursor).run_requests == []


def test_assembly_waits_for_every_real_segment_then_fires_once(env, tmp_path, capsys):
    pipeline = env.defs.resources["pipeline"]
    _plan(env.defs, env.instance, write_spec(tmp_path / "a.yaml", video_id="asm"), env.data_dir)
    env.instance.add_dynamic_partitions("segments", ["000", "001", "002"])
    cursor = None
    for i in (0, 1):
        assert execute(env.defs, env.instance, "render_segment", segment_partition_key("asm", i), name="s").success
    capsys.readouterr()
    partial = _tick(assembly_sensor, env.instance, pipeline, cursor)
    assert partial.run_requests == []  # segment 002 and the music are missing: said so in the log
    assert "asm: not assembled now: segments 002 (missing); music (missing)" in capsys.readouterr().err
    assert execute(env.defs, env.instance, "render_music", "asm", name="m").success
    assert execute(env.defs, env.instance, "render_segment", segment_partition_key("asm", 2), name="s").success
    ready = _tick(assembly_sensor, env.instance, pipeline, partial.cursor)
    [request] = ready.run_requests
    newest = max(r.storage_id for asset in ("chunk_videos", "music")
                 for r in env.instance.fetch_materializations(dg.AssetKey(asset), limit=10).records)
    assert request.partition_key == "asm" and request.job_name == "assemble_video"
    assert request.run_key == f"asm:assemble:{newest}"
    assert request.tags["pipeline/assembly_state"] == str(newest) and request.tags["video"] == "asm"
    assert request.tags[PROVIDER_TAG] == "local"
    assert _tick(assembly_sensor, env.instance, pipeline, ready.cursor).run_requests == []
    # A re-materialized segment (say, a backfill) assembles again, with a new run key.
    assert execute(env.defs, env.instance, "render_segment", segment_partition_key("asm", 1), name="s").success
    [again] = _tick(assembly_sensor, env.instance, pipeline, ready.cursor).run_requests
    assert again.run_key != request.run_key
    # ... unless someone (here: the CLI path) assembled that state already: then nothing, and why.
    assert execute(env.defs, env.instance, "assemble_video", "asm", name="a", tags=dict(again.tags)).success
    capsys.readouterr()
    assert _tick(assembly_sensor, env.instance, pipeline, ready.cursor).run_requests == []
    assert "asm: not assembled now: this state was assembled already (run " in capsys.readouterr().err


def test_fanout_and_assembly_leave_a_stage_to_its_run_while_it_is_in_progress(env, tmp_path, capsys):
    """A run in progress hands off its next stage itself when it ends (pipeline.orchestration.handoff):
    the sensors hold their cursor before its records until it has ended, then act as the backstop.
    (CANCELING is a status in progress that the test can set on a finished run.)"""
    pipeline = env.defs.resources["pipeline"]
    _plan(env.defs, env.instance, write_spec(tmp_path / "a.yaml", video_id="held"), env.data_dir)
    [spec] = env.instance.fetch_materializations(dg.AssetKey("video_spec"), limit=1).records
    plan_run = env.instance.get_run_by_id(spec.run_id)
    env.instance.report_run_canceling(plan_run, "test: the plan run is still making its characters")
    capsys.readouterr()
    held = _tick(segment_fanout_sensor, env.instance, pipeline)
    assert held.run_requests == [] and held.cursor == "0"  # before the plan's record
    assert f"held: its plan run {spec.run_id[:8]} is still running" in capsys.readouterr().err
    env.instance.report_run_canceled(plan_run, "test: ended")
    fanned = _tick(segment_fanout_sensor, env.instance, pipeline, held.cursor)
    assert len(fanned.run_requests) == 4 and fanned.cursor == str(spec.storage_id)

    env.instance.add_dynamic_partitions("segments", ["000", "001", "002"])
    assert execute(env.defs, env.instance, "render_music", "held", name="m").success
    for i in (0, 1, 2):
        assert execute(env.defs, env.instance, "render_segment", segment_partition_key("held", i), name="s").success
    [last] = env.instance.fetch_materializations(dg.AssetKey("chunk_videos"), limit=1).records
    segment_run = env.instance.get_run_by_id(last.run_id)
    env.instance.report_run_canceling(segment_run, "test: the segment run is still ending")
    capsys.readouterr()
    waiting = _tick(assembly_sensor, env.instance, pipeline)
    assert waiting.run_requests == [] and int(waiting.cursor) < last.storage_id
    assert "held: segment 002 still running" in capsys.readouterr().err
    env.instance.report_run_canceled(segment_run, "test: ended")
    [request] = _tick(assembly_sensor, env.instance, pipeline, waiting.cursor).run_requests
    assert request.job_name == "assemble_video" and request.partition_key == "held"


def test_schedule_retries_failed_segments_a_bounded_number_of_times(env, tmp_path, monkeypatch):
    from pipeline.definitions import build_definitions

    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"fail": ["flaky/001"]}))
    monkeypatch.setenv("PIPELINE_LOCAL_FAULTS", str(faults))
    env.defs = build_definitions(str(env.data_dir))  # the definitions read PIPELINE_LOCAL_FAULTS (dg.EnvVar)
    pipeline = env.defs.resources["pipeline"]
    _plan(env.defs, env.instance, write_spec(tmp_path / "a.yaml", video_id="flaky"), env.data_dir)
    env.instance.add_dynamic_partitions("segments", ["000", "001", "002"])
    bad = execute(env.defs, env.instance, "render_segment", segment_partition_key("flaky", 1), name="s")
    assert not bad.success and "injected fault for segment flaky/001" in bad.error
    runs, exhausted = failed_segment_runs(env.instance, pipeline.manifests_dir, ["flaky"])
    [run] = runs
    assert (run.job, run.video_id, run.segment) == ("render_segment", "flaky", "001") and exhausted == []
    # The schedule itself wraps the same planned run in a RunRequest.
    with dg.build_schedule_context(instance=env.instance, resources={"pipeline": pipeline}) as context:
        [request] = retry_failed_segments(context)
    assert dict(request.partition_key.keys_by_dimension) == {"video": "flaky", "segment": "001"}
    assert request.run_key == run.run_key and request.tags == run.tags
    assert request.tags["pipeline/retry"] == "scheduled" and request.tags["pipeline/retry_attempt"] == "1"
    assert request.tags["video"] == "flaky" and request.tags[PROVIDER_TAG] == "local"
    for _ in range(MAX_SCHEDULED_RETRIES):  # each scheduled retry fails again
        again = execute(env.defs, env.instance, "render_segment", request.partition_key, name="retry",
                        tags=request.tags)
        assert not again.success
    runs, exhausted = failed_segment_runs(env.instance, pipeline.manifests_dir, ["flaky"])
    assert runs == [] and exhausted == ["flaky/001"]
    with dg.build_schedule_context(instance=env.instance, resources={"pipeline": pipeline}) as context:
        assert isinstance(retry_failed_segments(context), dg.SkipReason)
