"""The run planner (pipeline.orchestration.planner) as pure functions over plans, submissions and
statuses: tags, run keys, order, no phantom segment, nothing serialized, bounded retries, what a
video waits on, one assembly per state, the up-to-date rule. Then the status side it relies on,
in a real instance: a phantom record for a real segment counts as missing, and the CLI's retry
does not assemble a state that was assembled already."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from pipeline.defs.partitions import segment_partition_key
from pipeline.manifests import FinalManifest, PlannedBeat, VideoPlan
from pipeline.orchestration import planner
from pipeline.orchestration.planner import PlannedRun, RunSummary, Waiting
from pipeline.orchestration.render import execute, retry_video
from pipeline.orchestration.status import SegmentStatus, VideoStatus, is_phantom, video_status
from pipeline.spec import MusicSpec
from pipeline.submissions import PROVIDER_TAG, Submission
from pipeline_tests.conftest import write_spec

SHA = "ab" * 32
DURATIONS = (5.0, 8.0, 5.0, 10.0)


def _plan(video_id: str = "vid", durations=DURATIONS, provider: str = "replicate", sha: str = SHA) -> VideoPlan:
    beats, start = [], 0.0
    for i, d in enumerate(durations):
        beats.append(PlannedBeat(index=i, prompt=f"beat {i}", duration_s=d, start_s=start))
        start += d
    return VideoPlan(video_id=video_id, title="t", target_duration_s=start, duration_s=start, aspect_ratio="16:9",
                     width=854, height=480, fps=24, style="s", music=MusicSpec(prompt="m", bpm=100), seed=1,
                     provider=provider, beats=beats, planned_by="spec", spec_sha256=sha, source="t.yaml")


def _submission(video_id: str = "vid", provider: str = "replicate", sha: str = SHA) -> Submission:
    return Submission(video_id=video_id, provider=provider, source="t.yaml", spec={}, spec_sha256=sha,
                      submitted_at="2026-11-21T00:00:00Z")


def _seg(segment: str, state: str = "materialized", storage_id: int | None = 10, run: str | None = None) -> SegmentStatus:
    states = {a: state for a in ("beats", "storyboard_images", "chunk_videos")}
    done = state == "materialized"
    return SegmentStatus(segment, states, latest_run_id=run, chunk_videos_storage_id=storage_id if done else None)


def _status(plan: VideoPlan | None = None, segs=None, music: str = "materialized", music_id: int | None = 20,
            final_id: int | None = None) -> VideoStatus:
    plan = plan or _plan()
    segs = segs if segs is not None else [_seg(b.segment, storage_id=11 + b.index) for b in plan.beats]
    return VideoStatus(plan.video_id, plan, 5, segs, {"music": music}, music_id if music == "materialized" else None,
                       final_id, latest_runs={"music": "musicrun"})


def test_video_tags_name_the_video_version_and_provider():
    plan = _plan()
    expected = {"video": "vid", "pipeline/spec": SHA[:12], PROVIDER_TAG: "replicate"}
    assert planner.video_tags(plan) == expected
    assert planner.video_tags(_submission()) == expected == _submission().run_tags()
    assert planner.video_tags("other", **{"pipeline/retry": "cli"}) == {"video": "other", "pipeline/retry": "cli"}
    assert planner.video_of_partition("003|vid") == "vid" and planner.video_of_partition("vid") == "vid"


def test_plan_run_is_keyed_by_the_registered_version():
    run = planner.plan_run(_submission())
    assert (run.job, run.partition_key, run.run_key) == ("plan_video", "vid", f"vid:{SHA[:16]}")
    assert run.tags[PROVIDER_TAG] == "replicate" and run.tags["video"] == "vid"


def test_fanout_requests_every_real_segment_at_once_longest_first_plus_music():
    runs = planner.fanout_runs(_plan(), 42)
    assert [(r.job, r.partition_key) for r in runs] == [
        ("render_segment", "003|vid"), ("render_segment", "001|vid"), ("render_music", "vid"),
        ("render_segment", "000|vid"), ("render_segment", "002|vid")]
    assert all(r.run_key.endswith(":42") for r in runs) and len({r.run_key for r in runs}) == 5
    assert all(r.tags == planner.video_tags(_plan()) for r in runs)
    # The partition key text is Dagster's (dimension names sorted: segment|video).
    assert runs[0].partition_key == str(segment_partition_key("vid", 3))
    # A subset (the CLI's retry) keeps the order; phantom keys are never planned.
    subset = planner.fanout_runs(_plan(), "cli", segments=["000", "003", "007"], music=False, **{"pipeline/retry": "cli"})
    assert [r.segment for r in subset] == ["003", "000"] and all(r.tags["pipeline/retry"] == "cli" for r in subset)


def test_retry_runs_are_bounded_per_segment_and_version():
    status = _status(segs=[_seg("000"), _seg("001", "failed"), _seg("002", "failed"), _seg("003", "in_progress")])
    runs, exhausted = planner.retry_runs([status], {"vid": {"001": 1, "002": 3}})
    [run] = runs
    assert (run.job, run.segment, run.run_key) == ("render_segment", "001", f"vid:001:retry:{SHA[:12]}:2")
    assert run.tags["pipeline/retry"] == "scheduled" and run.tags["pipeline/retry_attempt"] == "2"
    assert run.tags[PROVIDER_TAG] == "replicate" and exhausted == ["vid/002"]
    unplanned = VideoStatus("new", None, None)
    assert planner.retry_runs([unplanned], {}) == ([], [])


def test_assembly_waits_and_says_on_what():
    status = _status(segs=[_seg("000"), _seg("001"), _seg("002", "failed", run="r2"), _seg("003", "in_progress", run="r4")],
                     music="missing")
    waiting = planner.assembly_run(status)
    assert isinstance(waiting, Waiting) and waiting.blocked
    assert str(waiting) == "segments 002 (failed), 003 (running); music (missing)"
    running = planner.assembly_run(_status(segs=[_seg("000"), _seg("001", "in_progress", run="r1")], music="in_progress"))
    assert isinstance(running, Waiting) and not running.blocked and running.runs == ("r1", "musicrun")
    assert str(planner.assembly_run(VideoStatus("v", None, None))) == "video_spec (not materialized)"


def test_one_assembly_per_state():
    status = _status()  # segments at storage ids 11-14, music at 20: the state is 20
    run = planner.assembly_run(status, **{"pipeline/launched_by": "cli"})
    assert isinstance(run, PlannedRun) and (run.job, run.partition_key, run.run_key) == ("assemble_video", "vid",
                                                                                         "vid:assemble:20")
    assert run.tags["pipeline/assembly_state"] == "20" and run.tags["video"] == "vid"
    assert run.tags[PROVIDER_TAG] == "replicate" and run.tags["pipeline/launched_by"] == "cli"
    busy = RunSummary("r" * 32, "assemble_video", "STARTED", in_progress=True, succeeded=False)
    done = RunSummary("d" * 32, "assemble_video", "SUCCESS", in_progress=False, succeeded=True)
    failed = RunSummary("f" * 32, "assemble_video", "FAILURE", in_progress=False, succeeded=False)
    waiting = planner.assembly_run(status, [busy])
    assert isinstance(waiting, Waiting) and not waiting.blocked and waiting.runs == (busy.run_id,)
    assert "already in progress (run rrrrrrrr, started)" in str(waiting)
    assert planner.assembly_run(status, [done]).assembled_by == done
    assert isinstance(planner.assembly_run(status, [failed]), PlannedRun)  # a failed assembly may be redone
    assert "up to date" in str(planner.assembly_run(_status(final_id=21)))
    newer_input = _status(segs=[_seg("000", storage_id=30), _seg("001"), _seg("002"), _seg("003")], final_id=21)
    assert planner.assembly_run(newer_input).run_key == "vid:assemble:30"


def test_up_to_date_needs_the_registered_version_every_input_and_the_file(tmp_path):
    video = tmp_path / "vid.mp4"
    video.write_bytes(b"x")
    final = FinalManifest.model_construct(video_id="vid", path=str(video))
    status = _status(final_id=21)
    assert planner.up_to_date(status, final, _submission())
    assert not planner.up_to_date(status, final, _submission(sha="cd" * 32))  # another spec/provider/models
    assert not planner.up_to_date(status, final, None)
    assert not planner.up_to_date(_status(final_id=19), final, _submission())  # music newer than the final
    assert not planner.up_to_date(_status(segs=[_seg("000"), _seg("001", "missing")], final_id=21), final,
                                  _submission())
    video.unlink()
    assert not planner.up_to_date(status, final, _submission())


def test_is_phantom_reads_raw_and_dagster_metadata():
    assert is_phantom({"phantom": True}) and is_phantom({"phantom": dg.MetadataValue.bool(True)})
    assert is_phantom({"phantom": "true"}) and not is_phantom({"phantom": False}) and not is_phantom(None)
    assert not is_phantom({"phantom": dg.MetadataValue.text("no")}) and not is_phantom({})


def _render_plan(env, tmp_path, video_id: str, beats: int) -> VideoPlan:
    from pipeline.defs.partitions import ensure_partitions
    from pipeline.store import Workspace
    from pipeline.submissions import submit_file

    spec = write_spec(tmp_path / f"{video_id}.yaml", video_id=video_id,
                      beats=[{"prompt": f"Shot {i}", "duration_s": 5} for i in range(beats)])
    submit_file(Workspace.at(env.data_dir), spec)
    env.instance.add_dynamic_partitions("videos", [video_id])
    planned = execute(env.defs, env.instance, "plan_video", video_id, name="plan", want=("video_spec",))
    ensure_partitions(env.instance, planned.outputs["video_spec"])
    return planned.outputs["video_spec"]


def test_a_phantom_record_for_a_real_segment_counts_as_missing(env, tmp_path):
    _render_plan(env, tmp_path, "grow", 2)
    for i in (0, 1):
        assert execute(env.defs, env.instance, "render_segment", segment_partition_key("grow", i), name="s").success
    # Segment 001's newest record says phantom (as if recorded while the video had one beat): missing.
    for asset in ("beats", "storyboard_images", "chunk_videos"):
        env.instance.report_runless_asset_event(dg.AssetMaterialization(
            asset, partition=str(segment_partition_key("grow", 1)),
            metadata={"phantom": True, "reason": "not a beat of grow"}))
    status = video_status(env.instance, env.data_dir / "manifests", "grow")
    assert {s.segment: s.state for s in status.segments} == {"000": "materialized", "001": "missing"}
    assert status.failed_or_missing == ["001"] and status.assembly_state is None
    assert "segments 001 (missing)" in str(planner.assembly_run(status))
    # A phantom record of a segment beyond the plan is not looked at (the plan has 2 beats).
    env.instance.report_runless_asset_event(dg.AssetMaterialization(
        "chunk_videos", partition=str(segment_partition_key("grow", 2)), metadata={"phantom": True}))
    assert [s.segment for s in video_status(env.instance, env.data_dir / "manifests", "grow").segments] == ["000", "001"]


def test_cli_retry_does_not_assemble_a_state_twice(env, tmp_path):
    report = env.render(write_spec(tmp_path / "once.yaml", video_id="once",
                                   beats=[{"prompt": "A lamp", "duration_s": 5}]), max_parallel=2)
    assert report.final is not None
    runs = env.instance.get_runs(dg.RunsFilter(tags={"video": "once"}))
    assert {r.job_name for r in runs} == {"plan_video", "render_segment", "render_music", "assemble_video"}
    for r in runs:  # the CLI's runs carry the planner's tags
        assert r.tags[PROVIDER_TAG] == "local" and r.tags["pipeline/launched_by"] == "cli"
    [assembly] = [r for r in runs if r.job_name == "assemble_video"]
    assert assembly.tags["pipeline/assembly_state"]
    again = retry_video("once", defs=env.defs, instance=env.instance)
    assert again.final is not None and again.final.video.sha256 == report.final.video.sha256
    [outcome] = again.runs
    assert outcome.run_id == assembly.run_id and "assembled already" in outcome.note
    assert len(env.instance.get_runs(dg.RunsFilter(tags={"video": "once"}))) == len(runs)  # nothing ran
    with pytest.raises(LookupError):
        retry_video("never-planned", defs=env.defs, instance=env.instance)


def test_render_registers_with_the_spec_or_deployment_provider(env, tmp_path, monkeypatch):
    from pipeline.definitions import build_definitions
    from pipeline.orchestration.render import render_video
    from pipeline.submissions import load_submission

    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    defs = build_definitions(str(env.data_dir), default_provider="replicate")
    workspace = defs.resources["pipeline"].workspace
    beats = [{"prompt": "A kite", "duration_s": 5}]
    # No provider in the spec: the deployment's default, replicate (without a token its calls fail).
    plain = render_video(write_spec(tmp_path / "d.yaml", video_id="by-default", beats=beats), defs=defs,
                         instance=env.instance)
    assert load_submission(workspace, "by-default").provider == "replicate" and plain.final is None
    assert plain.plan.provider == "replicate" and sorted(r.name for r in plain.failed) == ["music", "segment 000"]
    assert all("REPLICATE_API_TOKEN" in r.error for r in plain.failed)
    # The spec's own provider beats the deployment default.
    local = render_video(write_spec(tmp_path / "l.yaml", video_id="by-spec", beats=beats, provider="local"),
                         defs=defs, instance=env.instance)
    assert load_submission(workspace, "by-spec").provider == "local" and local.final is not None
    assert Path(local.final.path).exists() and local.plan.provider == "local"


def test_cli_cancels_a_queued_assembly_no_daemon_will_start_and_assembles_itself(env, tmp_path):
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.test_utils import create_run_for_test

    assert env.render(write_spec(tmp_path / "q.yaml", video_id="queued",
                                 beats=[{"prompt": "A lamp", "duration_s": 5}]), max_parallel=1).final is not None
    # A new state (segment 000 re-materialized), and a queued assembly of it left by a stopped daemon.
    assert execute(env.defs, env.instance, "render_segment", segment_partition_key("queued", 0), name="s").success
    state = video_status(env.instance, env.data_dir / "manifests", "queued").assembly_state
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("video_pipeline"), "__repository__")
    stuck = create_run_for_test(env.instance, job_name="assemble_video", status=dg.DagsterRunStatus.QUEUED,
                                tags={"video": "queued", "dagster/partition": "queued",
                                      "pipeline/assembly_state": str(state)},
                                remote_job_origin=origin.get_job_origin("assemble_video"))
    report = retry_video("queued", defs=env.defs, instance=env.instance)
    assert report.final is not None
    [outcome] = report.runs
    assert outcome.success and outcome.run_id != stuck.run_id and outcome.note is None
    assert env.instance.get_run_by_id(stuck.run_id).status == dg.DagsterRunStatus.CANCELED
    done = env.instance.get_run_by_id(outcome.run_id)
    assert done.tags["pipeline/assembly_state"] == str(state) and done.tags["pipeline/retry"] == "cli"
