"""Operate it from Dagster, for real: ``dagster-daemon`` and ``dagster-webserver`` on 127.0.0.1
with a temporary instance. Three specs dropped into the inbox render by themselves (inbox, fan-out
and assembly sensors, queued runs); one segment fails (fault injection in the local provider).
After healing the fault, a backfill of just that partition, launched through the webserver's
GraphQL API, re-renders that segment only, and the assembly sensor finishes the video."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import segment_partition_key
from pipeline.orchestration.status import IN_PROGRESS, video_status
from pipeline.generation import read_call_log
from pipeline.manifests import ChunkVideosManifest
from pipeline.store import Workspace
from pipeline_tests.conftest import write_spec
from pipeline_tests.dagster_services import DagsterStack, wait_until

pytestmark = pytest.mark.timeout(540)

GOOD = ("daemon-good-a", "daemon-good-b")
BAD, BAD_SEGMENT = "daemon-bad", "001"
# Small on purpose (every run is a few processes on a 2-core machine): one beat per good video,
# two for the bad one, so the test also shows the bad video's healthy segment is left alone.
BEATS = [{"prompt": "A paper boat sets off on a puddle", "duration_s": 5},
         {"prompt": "The boat spins past a fallen leaf", "duration_s": 5, "motion": "slow lateral pan"}]
BEATS_BY_VIDEO = {GOOD[0]: BEATS[:1], GOOD[1]: BEATS[1:], BAD: BEATS}
SEGMENT_STAGES = {"storyboard_images", "chunk_videos", "last_frame", "conform", "segment_clip"}
ASSEMBLY_STAGES = {"stitched_video", "final_video"}

LAUNCH_BACKFILL = """
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PartitionKeysNotFoundError { message }
    ... on PartitionSetNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message stack }
  }
}"""

BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill { id status partitionNames assetSelection { path } }
    ... on PythonError { message }
  }
}"""


@pytest.fixture
def stack(tmp_path):
    with DagsterStack.create(tmp_path).running(daemon=True) as stack:
        yield stack


def _drop_specs(stack: DagsterStack, staging: Path) -> None:
    """Write each spec aside, then move it into the inbox already settled (mtime in the past)."""
    staging.mkdir()
    for video_id in (*GOOD, BAD):
        spec = write_spec(staging / f"{video_id}.yaml", video_id=video_id, beats=BEATS_BY_VIDEO[video_id])
        old = time.time() - 30
        os.utime(spec, (old, old))
        os.replace(spec, stack.data_dir / "inbox" / spec.name)


def _describe(instance: dg.DagsterInstance, stack: DagsterStack) -> str:
    lines = []
    for video_id in (*GOOD, BAD):
        status = video_status(instance, stack.data_dir / "manifests", video_id)
        lines.append(f"{video_id}: spec={status.spec_storage_id} assets={status.video_assets} "
                     f"segments={[(s.segment, s.state, s.latest_run_status) for s in status.segments]}")
    for record in instance.get_run_records(limit=50):
        run = record.dagster_run
        lines.append(f"run {run.run_id[:8]} {run.job_name} {run.status.value} {run.tags.get('dagster/partition')}")
    return "\n".join(lines) + "\n" + stack.tails()


def _final_done(instance: dg.DagsterInstance, stack: DagsterStack, video_id: str) -> bool:
    status = video_status(instance, stack.data_dir / "manifests", video_id)
    return status.video_assets.get("final_video") == "materialized" and \
        (stack.data_dir / "videos" / f"{video_id}.mp4").is_file()


def _in_progress(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(statuses=list(IN_PROGRESS)))]


def test_daemon_renders_inbox_and_backfill_regenerates_only_the_failed_segment(stack, tmp_path):
    started = time.monotonic()
    # The retry schedule (every 10 min) would re-request the failed segment by itself; this test
    # is about the manual backfill, so switch it off, as an operator would in the UI.
    assert stack.stop_schedule("retry_failed_segments") == "STOPPED"
    stack.faults.write_text(json.dumps({"fail": [f"{BAD}/{BAD_SEGMENT}"], "retryable": False}))
    _drop_specs(stack, tmp_path / "staging")
    manifests = stack.data_dir / "manifests"
    workspace = Workspace.at(stack.data_dir)

    with dg.DagsterInstance.from_config(str(stack.home)) as instance:
        describe = lambda: _describe(instance, stack)  # noqa: E731

        def first_pass_settled() -> bool:
            stack.check_alive()
            if not all(_final_done(instance, stack, v) for v in GOOD):
                return False
            bad = video_status(instance, manifests, BAD)
            states = {s.segment: s.state for s in bad.segments}
            return states == {"000": "materialized", BAD_SEGMENT: "failed"} and \
                bad.video_assets.get("music") == "materialized" and not _in_progress(instance)

        wait_until(first_pass_settled, timeout=300, interval=2, on_timeout=describe,
                   what="the good videos to be final and the bad segment to fail")
        first_pass_s = time.monotonic() - started

        # The bad segment's run failed (no step retries for a permanent error, no run retry for a
        # step failure), its chunks were never generated, and its video was not assembled.
        bad = video_status(instance, manifests, BAD)
        [failed_seg] = [s for s in bad.segments if s.segment == BAD_SEGMENT]
        assert failed_seg.latest_run_status == dg.DagsterRunStatus.FAILURE.value
        failed_run = instance.get_run_by_id(failed_seg.latest_run_id)
        assert failed_run.job_name == "render_segment"
        assert not instance.all_logs(failed_run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert not instance.get_run_records(dg.RunsFilter(tags={"dagster/parent_run_id": failed_run.run_id}))
        assert bad.video_assets["final_video"] == "missing" and bad.video_assets["stitched_video"] == "missing"
        assert not (stack.data_dir / "videos" / f"{BAD}.mp4").exists()
        calls_before = read_call_log(workspace)
        assert not [c for c in calls_before if c.get("video_id") == BAD and c.get("segment") == BAD_SEGMENT
                    and c.get("stage") == "chunk_videos"]
        for video_id in GOOD:
            assert any(c.get("video_id") == video_id and c.get("stage") == "final_video" for c in calls_before)
        runs_before = {r.dagster_run.run_id for r in instance.get_run_records()}

        # Heal the fault, then backfill just that (video, segment) partition of the segment assets
        # through the webserver's GraphQL API, as the UI's "Materialize selected" would.
        stack.faults.write_text(json.dumps({"fail": []}))
        partition = str(segment_partition_key(BAD, int(BAD_SEGMENT)))
        launched = stack.graphql(LAUNCH_BACKFILL, {"backfillParams": {
            "partitionNames": [partition],
            "assetSelection": [{"path": ["beats"]}, {"path": ["storyboard_images"]}, {"path": ["chunk_videos"]}],
            "title": f"re-render {BAD}/{BAD_SEGMENT}",
        }})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def backfill_status() -> str:
            result = stack.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
            assert result["__typename"] == "PartitionBackfill", result
            assert result["partitionNames"] == [partition]
            return result["status"]

        def healed() -> bool:
            stack.check_alive()
            return _final_done(instance, stack, BAD) and backfill_status() in ("COMPLETED", "COMPLETED_SUCCESS") \
                and not _in_progress(instance)

        wait_until(healed, timeout=150, interval=2, on_timeout=describe,
                   what=f"backfill {backfill_id} to complete and {BAD} to be assembled")

        # Provider calls since the backfill: only the failed segment's generations, then that
        # video's stitch and mux (ffmpeg). No other segment or video generated anything.
        calls_after = read_call_log(workspace)[len(calls_before):]
        assert calls_after, "the backfill generated nothing"
        for call in calls_after:
            assert call.get("video_id") == BAD, call
            if call.get("stage") in ASSEMBLY_STAGES:
                assert call["provider"] == "ffmpeg" and "segment" not in call, call
            else:
                assert call.get("segment") == BAD_SEGMENT and call.get("stage") in SEGMENT_STAGES, call
        by_stage: dict[str, int] = {}
        for call in calls_after:
            by_stage[call["stage"]] = by_stage.get(call["stage"], 0) + 1
        chunk_set = read_manifest(manifests, "chunk_videos", partition)
        assert isinstance(chunk_set, ChunkVideosManifest)
        assert by_stage.get("chunk_videos") == len(chunk_set.chunks), by_stage  # each chunk once
        # The storyboard image was generated before the fault hit the first chunk: a cache hit now.
        assert by_stage.get("storyboard_images", 0) == 0, by_stage
        assert by_stage.get("stitched_video") == 1, by_stage
        # One mux; final_video's previews (poster, animated strip, contact sheet) at most once each.
        finals = [c.get("item", c["model"]) for c in calls_after if c["stage"] == "final_video"]
        assert finals.count("mux-copy-v1") == 1 and len(finals) == len(set(finals)), finals

        # Runs since the backfill: the backfill's run for that one partition and one assembly.
        new_runs = [r.dagster_run for r in instance.get_run_records() if r.dagster_run.run_id not in runs_before]
        segment_runs = [r for r in new_runs if r.job_name != "assemble_video"]
        assembly_runs = [r for r in new_runs if r.job_name == "assemble_video"]
        for run in segment_runs:
            assert run.tags.get("dagster/partition/video") == BAD, (run.job_name, run.tags)
            assert run.tags.get("dagster/partition/segment") == BAD_SEGMENT, (run.job_name, run.tags)
        backfill_runs = [r for r in segment_runs if r.tags.get("dagster/backfill") == backfill_id]
        assert len(backfill_runs) == 1 and backfill_runs[0].status == dg.DagsterRunStatus.SUCCESS, \
            [(r.run_id, r.status, r.tags) for r in segment_runs]
        assert len(assembly_runs) == 1 and assembly_runs[0].tags.get("dagster/partition") == BAD
        assert assembly_runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert _final_done(instance, stack, BAD)
        for video_id in GOOD:  # untouched
            assert _final_done(instance, stack, video_id)
        healed_s = time.monotonic() - started - first_pass_s
        print(f"first pass {first_pass_s:.0f} s, backfill and assembly {healed_s:.0f} s")
