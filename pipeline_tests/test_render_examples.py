"""Every spec in examples/ renders end to end with the local provider, through a real Dagster
instance; assertions are on the decoded output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dagster as dg
import pytest

from pipeline import media
from pipeline.generation import read_call_log
from pipeline.manifests import load_manifest
from pipeline.spec import DRAFT_RESOLUTION, load_spec
from pipeline.store import Workspace
from pipeline_tests.conftest import EXAMPLE_SPECS, EXAMPLES
from pipeline_tests.frames import first_frame, integrated_loudness, last_frame, psnr

NAMES = [p.stem for p in EXAMPLE_SPECS]


def test_the_shared_specs_are_all_examples():
    assert {"tortoise-and-hare", "too-many-beats", "water-cycle"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_final_video_matches_the_plan(rendered_examples, name):
    env, report = rendered_examples[name]
    plan, final = report.plan, report.final
    spec = load_spec(Path("examples") / f"{name}.yaml")
    info = media.probe(final.path)  # decodes every frame and audio packet
    expected = sum(b.duration_s for b in plan.beats)
    assert abs(info.frames / info.fps - expected) <= 1 / info.fps, (info.frames, expected)
    assert (info.width, info.height) == DRAFT_RESOLUTION[spec.aspect_ratio]
    assert info.has_audio and info.audio_codec == "aac"
    assert abs(info.audio_duration_s - expected) <= 1 / info.fps
    assert abs(integrated_loudness(final.path) - media.LOUDNESS_TARGET["I"]) < 1.5
    assert Path(final.path) == env.data_dir.resolve() / "videos" / f"{plan.video_id}.mp4"


@pytest.mark.parametrize("name", NAMES)
def test_assembly_copies_streams_and_says_so(rendered_examples, name):
    """The local model's chunks match the plan: conformed by stream copy; the segments' clips are
    stitched and the finished track muxed by stream copy; the asset metadata says which path ran."""
    env, report = rendered_examples[name]
    plan, vid = report.plan, report.plan.video_id

    def latest(asset: str, partition: str) -> dict:
        [record] = env.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
        return {k: v.value for k, v in record.asset_materialization.metadata.items()}

    for cv in report.chunk_sets:
        assert cv.clip is not None
        assert {c.conformed.extra["method"] for c in cv.chunks if c.conformed} == {"stream_copy"}
        beat = plan.beats[cv.index]
        assert cv.clip.extra["frames"] == media.beat_frames(beat.start_s, beat.duration_s, plan.fps)
    stitched = latest("stitched_video", vid)
    assert stitched["method"] == "stream_copy" and stitched["segments_from_clips"] == len(plan.beats)
    assert latest("final_video", vid)["mux_method"] == "stream_copy" and report.final.mux_method == "stream_copy"
    if plan.narration is None:
        music = latest("music", vid)
        assert music["track_duration_s"] == pytest.approx(plan.duration_s, abs=1024 / 48_000)
    else:  # a narrated video's music is mixed under the voice by the soundtrack, and normalized once there
        assert latest("soundtrack", vid)["duration_s"] == pytest.approx(plan.duration_s, abs=1024 / 48_000)


@pytest.mark.parametrize("name", NAMES)
def test_one_storyboard_image_per_beat_and_chunks_per_plan(rendered_examples, name):
    env, report = rendered_examples[name]
    plan = report.plan
    vid = plan.video_id
    manifests = sorted((env.data_dir / "manifests" / "storyboard_images" / vid).glob("*.json"))
    assert [p.stem for p in manifests] == plan.segment_keys
    shas = {load_manifest(p.read_bytes()).image.sha256 for p in manifests}
    assert len(shas) == len(plan.beats)
    calls = [c for c in read_call_log(Workspace.at(env.data_dir)) if c.get("video_id") == vid]
    assert sorted(c["segment"] for c in calls if c["stage"] == "storyboard_images") == plan.segment_keys
    for beat in plan.beats:
        cv = load_manifest((env.data_dir / "manifests" / "chunk_videos" / vid / f"{beat.segment}.json").read_bytes())
        assert len(cv.chunks) == math.ceil(beat.duration_s / 5.0)
        assert [c.plan.chunk_type for c in cv.chunks] == ["reference_image"] + ["continuous"] * (len(cv.chunks) - 1)


@pytest.mark.parametrize("name", NAMES)
def test_each_continuous_chunk_starts_on_the_previous_last_frame(rendered_examples, name):
    env, report = rendered_examples[name]
    ws = Workspace.at(env.data_dir)
    store_path = lambda m: Path(m.uri[len("file://"):])  # noqa: E731
    checked = 0
    for cv in report.chunk_sets:
        first = first_frame(store_path(cv.chunks[0].video))
        board = media.probe(store_path(cv.storyboard), decode=False)
        assert board.width == first.shape[1]
        for prev, nxt in zip(cv.chunks, cv.chunks[1:]):
            assert nxt.start_image_sha256 == prev.last_frame.sha256
            assert psnr(last_frame(store_path(prev.video)), first_frame(store_path(nxt.video))) > 30
            checked += 1
    beats_with_chains = sum(1 for b in report.plan.beats if b.duration_s > 5)
    assert checked >= beats_with_chains
    assert ws.root.exists()


def test_too_many_beats_is_truncated_to_six(rendered_examples, tmp_path):
    env, report = rendered_examples["too-many-beats"]
    plan = report.plan
    assert len(plan.beats) == 6
    assert [b.start_s for b in plan.beats] == [0, 5, 10, 15, 20, 25]
    assert plan.truncation.original_count == 12 and plan.truncation.truncated_count == 6
    lines = [json.loads(x) for x in (env.data_dir / "logs" / "beat_truncation.log").read_text().splitlines()]
    mine = [x for x in lines if x["video_id"] == "city-timelapse"]
    assert len(mine) == 1
    assert set(mine[0]) == {"timestamp", "video_id", "original_count", "truncated_count"}
    assert (mine[0]["original_count"], mine[0]["truncated_count"]) == (12, 6)
    [record] = env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("video_spec"), asset_partitions=["city-timelapse"]), limit=1).records
    md = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert md["truncated"] is True and md["beats"] == 6


def test_runs_are_recorded_in_the_instance(rendered_examples):
    env, report = rendered_examples["tortoise-and-hare"]
    records = env.instance.get_run_records(dg.RunsFilter(tags={"video": "tortoise-and-hare"}))
    jobs = sorted(r.dagster_run.job_name for r in records)
    assert jobs.count("render_segment") == 6
    assert {"plan_video", "render_music", "assemble_video"} <= set(jobs)
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    key = dg.MultiPartitionKey({"video": "tortoise-and-hare", "segment": "002"})
    event = env.instance.get_latest_materialization_event(dg.AssetKey("chunk_videos"))
    assert event is not None
    mats = env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("chunk_videos"), asset_partitions=[key]), limit=10).records
    assert len(mats) == 1


def test_rerun_reuses_everything(env):
    """Renders the example again and again, so in an instance of its own: the shared
    ``rendered_examples`` are only read (other workers assert on them at the same time)."""
    first = env.render(EXAMPLES / "tortoise-and-hare.yaml", max_parallel=2)
    assert first.final is not None, [r.error for r in first.failed]
    before = len(read_call_log(Workspace.at(env.data_dir)))
    runs_before = len(env.instance.get_run_records(dg.RunsFilter(tags={"video": "tortoise-and-hare"})))
    same = env.render(Path("examples/tortoise-and-hare.yaml"), max_parallel=2)
    assert same.up_to_date and same.runs == [] and same.final.video.sha256 == first.final.video.sha256
    assert len(env.instance.get_run_records(dg.RunsFilter(tags={"video": "tortoise-and-hare"}))) == runs_before
    again = env.render(Path("examples/tortoise-and-hare.yaml"), max_parallel=2, force=True)
    assert again.final is not None and not again.up_to_date
    assert again.final.video.sha256 == first.final.video.sha256
    assert len(read_call_log(Workspace.at(env.data_dir))) == before  # nothing generated again
    assert all(c.video.cache_hit for cv in again.chunk_sets for c in cv.chunks)
