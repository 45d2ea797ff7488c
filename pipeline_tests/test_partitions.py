"""Partition behaviour in a real Dagster instance: phantom segments, fan-in validation, and
re-materializing one segment."""

from __future__ import annotations

import dagster as dg
import yaml

from pipeline.defs.partitions import segment_partition_key
from pipeline.orchestration.render import execute
from pipeline.generation import read_call_log
from pipeline.store import Workspace
from pipeline_tests.conftest import write_spec


def _materializations(env, asset: str, key) -> int:
    return len(env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(key)]), limit=100).records)


def _calls(env, video_id: str) -> list[dict]:
    return [c for c in read_call_log(Workspace.at(env.data_dir)) if c.get("video_id") == video_id]


def test_phantom_segment_does_nothing(env, tmp_path):
    # "tiny" has 3 beats, so segments 000-002 exist; "solo" has one beat: its 001 and 002 are phantoms.
    assert env.render(write_spec(tmp_path / "tiny.yaml"), max_parallel=2).final is not None
    solo = write_spec(tmp_path / "solo.yaml", video_id="solo",
                      beats=[{"prompt": "A single lighthouse at night", "duration_s": 5}])
    report = env.render(solo, max_parallel=2)
    assert report.final is not None and len(report.plan.beats) == 1
    calls_before = _calls(env, "solo")

    phantom = segment_partition_key("solo", 2)
    # The render recorded the phantom (one runless record per asset, phantom: true); running the
    # phantom partition adds nothing to it.
    for asset in ("beats", "storyboard_images", "chunk_videos"):
        assert _materializations(env, asset, phantom) == 1
    outcome = execute(env.defs, env.instance, "render_segment", phantom, name="phantom")
    assert outcome.success
    for asset in ("beats", "storyboard_images", "chunk_videos"):
        assert _materializations(env, asset, phantom) == 1
    assert _calls(env, "solo") == calls_before  # no provider call, not even a cached one logged
    assert not (env.data_dir / "manifests" / "chunk_videos" / "solo" / "002.json").exists()
    logs = env.instance.all_logs(outcome.run_id)
    assert any("phantom" in (e.user_message or "") for e in logs)

    # The phantom-only storyboard step, requested on its own, does nothing either.
    job = env.defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("storyboard_images")})
    result = job.execute_in_process(instance=env.instance, partition_key=phantom, raise_on_error=False)
    assert result.success and _materializations(env, "storyboard_images", phantom) == 1

    # Fan-in ignores phantom segments: stitching "solo" again works and uses one segment.
    again = execute(env.defs, env.instance, "assemble_video", "solo", name="assemble", want=("stitched_video",))
    assert again.success and again.outputs["stitched_video"].segments == ["000"]


def test_missing_real_segment_fails_fan_in_naming_it(env, tmp_path):
    spec = write_spec(tmp_path / "gap.yaml", video_id="gap")
    from pipeline.defs.partitions import ensure_partitions
    from pipeline.submissions import submit_file

    submit_file(Workspace.at(env.data_dir), spec)
    env.instance.add_dynamic_partitions("videos", ["gap"])
    planned = execute(env.defs, env.instance, "plan_video", "gap", name="plan", want=("video_spec",))
    ensure_partitions(env.instance, planned.outputs["video_spec"])
    for i in (0, 2):
        assert execute(env.defs, env.instance, "render_segment", segment_partition_key("gap", i), name="s").success
    assert execute(env.defs, env.instance, "render_music", "gap", name="music").success
    outcome = execute(env.defs, env.instance, "assemble_video", "gap", name="assemble")
    assert not outcome.success
    assert "segments 001 have no chunk_videos" in outcome.error
    assert _materializations(env, "stitched_video", "gap") == 0
    assert not (env.data_dir / "videos" / "gap.mp4").exists()


def test_rematerializing_one_segment_regenerates_only_it(env, tmp_path):
    path = write_spec(tmp_path / "tiny.yaml")
    first = env.render(path, max_parallel=2)
    assert first.final is not None
    # Unchanged: re-materializing a segment is free (all cache hits, no provider call).
    n = len(_calls(env, "tiny"))
    again = execute(env.defs, env.instance, "render_segment", segment_partition_key("tiny", 1), name="again",
                    want=("chunk_videos",))
    assert again.success and all(c.video.cache_hit for c in again.outputs["chunk_videos"].chunks)
    assert len(_calls(env, "tiny")) == n

    # Change beat 1's prompt and re-plan: the old segment 001 no longer fits, the others still do.
    spec = yaml.safe_load(path.read_text())
    spec["beats"][1]["prompt"] = "The kite string snaps and the kite tumbles into a lake"
    path.write_text(yaml.safe_dump(spec))
    from pipeline.submissions import submit_file

    submit_file(Workspace.at(env.data_dir), path)
    assert execute(env.defs, env.instance, "plan_video", "tiny", name="plan").success
    stale = execute(env.defs, env.instance, "assemble_video", "tiny", name="assemble")
    assert not stale.success and "segments 001 were rendered from another version" in stale.error

    redo = execute(env.defs, env.instance, "render_segment", segment_partition_key("tiny", 1), name="redo")
    assert redo.success
    new_calls = _calls(env, "tiny")[n:]
    assert new_calls and {c["segment"] for c in new_calls} == {"001"}
    assert {c["stage"] for c in new_calls} == {"storyboard_images", "chunk_videos", "last_frame", "conform",
                                               "segment_clip"}
    for i in (0, 2):
        assert _materializations(env, "chunk_videos", segment_partition_key("tiny", i)) == 1
    final = execute(env.defs, env.instance, "assemble_video", "tiny", name="assemble", want=("final_video",))
    assert final.success
    assert final.outputs["final_video"].video.sha256 != first.final.video.sha256
