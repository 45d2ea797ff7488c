"""What the Dagster UI shows of segment partitions, for real: ``dagster-daemon`` and
``dagster-webserver`` on 127.0.0.1 (dagster_services.py) render three videos of 2, 3 and 6 beats
dropped into the inbox, and the webserver's GraphQL API answers what the UI asks.

Phantom segments (7 of the 18 (video, segment) partitions) are recorded, so:
- every segment asset's ``partitionStats`` (the lineage graph colours a node by it; the asset's
  partitions view) has 0 missing and 0 failed, and one injected chunk failure is exactly 1 failed;
- the ``render_segment`` job page's missing count (its ``assetPartitionStatuses`` merged over the
  job's assets, as the UI merges them) is 0;
- ``stitched_video`` / ``final_video`` of the earlier, shorter videos stay FRESH when the longer
  video adds segment keys (their new phantom records carry no data version);
- after a GraphQL backfill of the failed partition: 0 failed, and the video assembled once;
- a video rendered by ``pipeline render`` while the daemon runs gets no sensor runs, and its
  phantoms are recorded too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from pipeline.defs.partitions import segment_partition_key
from pipeline.orchestration.status import IN_PROGRESS, video_status
from pipeline_tests.cli_processes import start_cli
from pipeline_tests.conftest import write_spec
from pipeline_tests.dagster_services import ROOT, DagsterStack, wait_until

pytestmark = pytest.mark.timeout(1800)

SHORT, MID, LONG, CLI = "short2", "mid3", "long6", "cli1"
BEATS = {SHORT: 2, MID: 3, LONG: 6, CLI: 1}
FAILING = "004"
SEGMENT_ASSETS = ("narration", "beats", "storyboard_images", "chunk_videos")
REPO = {"repositoryLocationName": "video_pipeline", "repositoryName": "__repository__"}

STATS = """query($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path }
  partitionStats { numMaterialized numPartitions numFailed numMaterializing } } }"""
JOB_ASSETS = """query($p: PipelineSelector!) { assetNodes(pipeline: $p) { assetKey { path } isPartitioned } }"""
PARTITION_HEALTH = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  partitionKeysByDimension { name partitionKeys }
  assetPartitionStatuses { ... on MultiPartitionStatuses { primaryDimensionName ranges {
    primaryDimStartKey primaryDimEndKey secondaryDim { ... on DefaultPartitionStatuses {
      materializedPartitions materializingPartitions failedPartitions } } } } } } } }"""
STALE = """query($keys: [AssetKeyInput!], $p: String) { assetNodes(assetKeys: $keys) { assetKey { path }
  staleStatus(partition: $p) staleCauses(partition: $p) { reason } } }"""
LAUNCH_BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack } } }"""


def _beats(n: int) -> list[dict]:
    return [{"prompt": f"Shot {i + 1}: a paper boat on a puddle", "duration_s": 5} for i in range(n)]


def _spec(staging: Path, video_id: str) -> Path:
    staging.mkdir(exist_ok=True)
    return write_spec(staging / f"{video_id}.yaml", video_id=video_id, beats=_beats(BEATS[video_id]))


def _drop(stack: DagsterStack, staging: Path, *video_ids: str) -> None:
    """Move each spec into the inbox already settled (mtime in the past)."""
    for video_id in video_ids:
        spec = _spec(staging, video_id)
        old = time.time() - 30
        os.utime(spec, (old, old))
        os.replace(spec, stack.data_dir / "inbox" / spec.name)


def partition_stats(stack: DagsterStack) -> dict[str, dict]:
    """``{asset: partitionStats + missing}`` of the segment assets; missing as the UI computes it."""
    nodes = stack.graphql(STATS, {"keys": [{"path": [a]} for a in SEGMENT_ASSETS]})["assetNodes"]
    out = {}
    for node in nodes:
        s = dict(node["partitionStats"])
        s["missing"] = s["numPartitions"] - s["numMaterialized"] - s["numFailed"] - s["numMaterializing"]
        out[node["assetKey"]["path"][-1]] = s
    return out


def _cell_states(stack: DagsterStack, asset: str) -> dict[tuple[str, str], str]:
    """``{(primary key, secondary key): state}`` of every partition of ``asset``, from the
    ``assetPartitionStatuses`` the UI's partition health reads (not listed = missing)."""
    node = stack.graphql(PARTITION_HEALTH, {"key": {"path": [asset]}})["assetNodeOrError"]
    dims = {d["name"]: d["partitionKeys"] for d in node["partitionKeysByDimension"]}
    statuses = node["assetPartitionStatuses"]
    primary = statuses["primaryDimensionName"]
    [secondary] = [name for name in dims if name != primary]
    keys = dims[primary]
    states = {(p, s): "missing" for p in keys for s in dims[secondary]}
    for r in statuses["ranges"]:
        second = r["secondaryDim"]
        for p in keys[keys.index(r["primaryDimStartKey"]):keys.index(r["primaryDimEndKey"]) + 1]:
            for state, listed in (("materialized", second["materializedPartitions"]),
                                  ("failed", second["failedPartitions"]),
                                  ("materializing", second["materializingPartitions"])):
                for s in listed:
                    states[(p, s)] = state
    return states


def job_page_missing(stack: DagsterStack, job: str = "render_segment") -> tuple[int, int]:
    """(total, missing) partitions on the job's Partitions page: the job's partitioned assets'
    statuses merged, a partition missing if it is missing for any of them (AssetJobPartitionsView)."""
    nodes = stack.graphql(JOB_ASSETS, {"p": {**REPO, "pipelineName": job}})["assetNodes"]
    assets = [n["assetKey"]["path"][-1] for n in nodes if n["isPartitioned"]]
    assert set(assets) >= set(SEGMENT_ASSETS), assets
    per_asset = [_cell_states(stack, a) for a in assets if a in SEGMENT_ASSETS]
    cells = set().union(*per_asset)
    return len(cells), sum(1 for c in cells if any(states.get(c, "missing") == "missing" for states in per_asset))


def stale(stack: DagsterStack, video_id: str) -> dict[str, tuple[str, list[str]]]:
    """``{asset: (staleStatus, stale cause reasons)}`` of stitched_video and final_video of ``video_id``."""
    nodes = stack.graphql(STALE, {"keys": [{"path": ["stitched_video"]}, {"path": ["final_video"]}],
                                  "p": video_id})["assetNodes"]
    return {n["assetKey"]["path"][-1]: (n["staleStatus"], [c["reason"] for c in n["staleCauses"]]) for n in nodes}


def _settled(instance: dg.DagsterInstance) -> bool:
    return not instance.get_run_records(dg.RunsFilter(statuses=list(IN_PROGRESS)))


def _final_done(instance: dg.DagsterInstance, stack: DagsterStack, video_id: str) -> bool:
    status = video_status(instance, stack.data_dir / "manifests", video_id)
    return status.video_assets.get("final_video") == "materialized" and \
        (stack.data_dir / "videos" / f"{video_id}.mp4").is_file()


def _describe(instance: dg.DagsterInstance, stack: DagsterStack) -> str:
    lines = []
    for video_id in BEATS:
        status = video_status(instance, stack.data_dir / "manifests", video_id)
        lines.append(f"{video_id}: {status.video_assets} {[(s.segment, s.state) for s in status.segments]}")
    lines += [f"{r.run_id[:8]} {r.job_name} {r.status.value} {r.tags.get('dagster/partition')}"
              for r in instance.get_runs(limit=40)]
    return "\n".join(lines) + "\n" + stack.tails()


class _Report(list):
    """The numbers the test saw, printed as they come (pytest -s shows them, also on a failure)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def _ticked_after(instance: dg.DagsterInstance, sensor: str, since: float) -> bool:
    """Whether ``sensor`` finished a tick that started after ``since`` (Unix seconds)."""
    from dagster._core.scheduler.instigation import TickStatus

    [state] = [s for s in instance.all_instigator_state() if s.name == sensor]
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
    return any(t.timestamp > since and t.status != TickStatus.STARTED for t in ticks)


def _canceled_as_duplicate(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """True if ``run`` was canceled by the run coordinator as a second assembly of one state (or a
    second run of one sensor request)."""
    if run.status != dg.DagsterRunStatus.CANCELED:
        return False
    events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
    return any(m in (e.message or "") for e in events for m in ("one assembly per state", "one run per request"))


def _fanout_cursor(instance: dg.DagsterInstance) -> int:
    [state] = [s for s in instance.all_instigator_state() if s.name == "segment_fanout_sensor"]
    cursor = state.instigator_data.cursor if state.instigator_data else None
    return int(cursor or 0)


@pytest.fixture
def stack(tmp_path):
    with DagsterStack.create(tmp_path).running(daemon=True) as s:
        yield s


def test_phantoms_recorded_partitions_complete_failures_real_and_nothing_stale(stack, tmp_path):
    assert stack.stop_schedule("retry_failed_segments") == "STOPPED"  # the backfill below is the fix
    stack.faults.write_text(json.dumps({"fail": [f"{LONG}/{FAILING}"], "retryable": False}))
    staging = tmp_path / "staging"
    manifests = stack.data_dir / "manifests"
    report = _Report()

    with dg.DagsterInstance.from_config(str(stack.home)) as instance:
        describe = lambda: _describe(instance, stack)  # noqa: E731

        # 1. The two short videos: 2 x 3 partitions, short2's 002 is a phantom.
        _drop(stack, staging, SHORT, MID)
        wait_until(lambda: stack.check_alive() or (all(_final_done(instance, stack, v) for v in (SHORT, MID))
                                                   and _settled(instance)),
                   timeout=600, interval=2, what=f"{SHORT} and {MID} to be final", on_timeout=describe)
        stats = partition_stats(stack)
        report.append(f"after {SHORT} + {MID}: {stats}")
        for asset, s in stats.items():
            assert (s["numPartitions"], s["numMaterialized"], s["missing"], s["numFailed"]) == (6, 6, 0, 0), (asset, s)
        for video_id in (SHORT, MID):
            assert {a: v[0] for a, v in stale(stack, video_id).items()} == \
                {"stitched_video": "FRESH", "final_video": "FRESH"}, stale(stack, video_id)

        # 2. The 6-beat video adds 003-005 (phantoms of both earlier videos); its 004 fails.
        _drop(stack, staging, LONG)

        def long_settled() -> bool:
            stack.check_alive()
            status = video_status(instance, manifests, LONG)
            states = {s.segment: s.state for s in status.segments}
            return states == {f"{i:03d}": "failed" if f"{i:03d}" == FAILING else "materialized" for i in range(6)} \
                and status.video_assets.get("music") == "materialized" and _settled(instance)

        wait_until(long_settled, timeout=600, interval=2, what=f"{LONG}'s segment {FAILING} to fail",
                   on_timeout=describe)
        stats = partition_stats(stack)
        report.append(f"after {LONG} with {FAILING} failing: {stats}")
        for asset, s in stats.items():
            assert s["numPartitions"] == 18 and s["missing"] == 0 and s["numMaterializing"] == 0, (asset, s)
        assert {a: s["numFailed"] for a, s in stats.items()} == {"narration": 0, "beats": 0, "storyboard_images": 0,
                                                                "chunk_videos": 1}
        failed_cells = [c for c, state in _cell_states(stack, "chunk_videos").items() if state == "failed"]
        assert len(failed_cells) == 1 and set(failed_cells[0]) == {LONG, FAILING}, failed_cells
        total, missing = job_page_missing(stack)
        report.append(f"render_segment job page: {total} partitions, {missing} missing")
        assert (total, missing) == (18, 0)
        for video_id in (SHORT, MID):  # assembled before 003-005 existed: not stale because of them
            causes = stale(stack, video_id)
            report.append(f"{video_id} after {LONG} added keys: {causes}")
            assert causes == {"stitched_video": ("FRESH", []), "final_video": ("FRESH", [])}, causes

        # 3. Heal the fault and backfill just that partition through GraphQL, as the UI would.
        stack.faults.write_text(json.dumps({"fail": []}))
        runs_before = {r.run_id for r in instance.get_runs()}
        partition = str(segment_partition_key(LONG, int(FAILING)))
        launched = stack.graphql(LAUNCH_BACKFILL, {"p": {
            "partitionNames": [partition], "title": f"re-render {partition}",
            "assetSelection": [{"path": [a]} for a in SEGMENT_ASSETS]}})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        wait_until(lambda: stack.check_alive() or (_final_done(instance, stack, LONG) and _settled(instance)),
                   timeout=400, interval=2, what=f"the backfill of {partition} and {LONG}'s assembly",
                   on_timeout=describe)
        stats = partition_stats(stack)
        report.append(f"after the backfill: {stats}")
        for asset, s in stats.items():
            assert (s["numPartitions"], s["numMaterialized"], s["missing"], s["numFailed"]) == (18, 18, 0, 0), (asset, s)
        assert job_page_missing(stack) == (18, 0)
        new_runs = [r for r in instance.get_runs() if r.run_id not in runs_before]
        assemblies = [r for r in new_runs if r.job_name == "assemble_video"]
        assert len(assemblies) == 1 and assemblies[0].tags.get("video") == LONG, describe()
        assert assemblies[0].status == dg.DagsterRunStatus.SUCCESS
        others = [r for r in new_runs if r.job_name != "assemble_video"]  # the backfill's (an asset job's) run
        assert [(r.tags.get("dagster/partition"), r.status) for r in others] == \
            [(partition, dg.DagsterRunStatus.SUCCESS)], [(r.job_name, r.tags) for r in others]
        for video_id in (SHORT, MID, LONG):
            assert {a: v[0] for a, v in stale(stack, video_id).items()} == \
                {"stitched_video": "FRESH", "final_video": "FRESH"}, (video_id, stale(stack, video_id))

        # 4. `pipeline render` while the daemon runs: it renders its own plan, the fan-out sensor
        # requests nothing for it, and its phantoms (001-005) are recorded.
        cli = start_cli(["render", str(_spec(staging, CLI))], env=stack.env, cwd=ROOT, log_path=tmp_path / "cli.log")
        try:
            assert cli.wait(timeout=400) == 0, cli.output()
        finally:
            cli.kill()
        cli_done = time.time()
        [plan_record] = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("video_spec"), asset_partitions=[CLI]), limit=1).records
        wait_until(lambda: _fanout_cursor(instance) >= plan_record.storage_id and _settled(instance)
                   and _ticked_after(instance, "spec_inbox_sensor", cli_done + 1), timeout=120, interval=1,
                   what="the fan-out sensor to read the CLI's plan and the inbox sensor to tick after the CLI",
                   on_timeout=describe)
        runs = instance.get_runs(dg.RunsFilter(tags={"video": CLI}))
        by_sensors = [(r.job_name, r.tags.get("dagster/sensor_name")) for r in runs
                      if r.tags.get("dagster/sensor_name") in ("spec_inbox_sensor", "segment_fanout_sensor")]
        assert by_sensors == [], by_sensors  # no second plan, segment or music run for the CLI's video
        assert sorted(r.job_name for r in runs if r.job_name != "assemble_video") == \
            ["plan_video", "render_music", "render_segment"], [(r.job_name, r.tags) for r in runs]
        # One assembly of the CLI's state succeeds. The assembly sensor may also have requested one
        # (it saw the CLI's segments before the CLI created its assembly run); the run coordinator
        # then cancels that duplicate at submission, and it must say why.
        assemblies = [r for r in runs if r.job_name == "assemble_video"]
        duplicates = [r for r in assemblies if _canceled_as_duplicate(instance, r)]
        assert [r.status for r in assemblies if r not in duplicates] == [dg.DagsterRunStatus.SUCCESS], \
            [(r.run_id, r.status, r.tags) for r in assemblies]
        assert all(r.tags.get("dagster/sensor_name") == "assembly_sensor" for r in duplicates), \
            [(r.run_id, r.tags) for r in duplicates]
        report.append(f"{CLI} runs: {sorted((r.job_name, r.tags.get('pipeline/launched_by') or '') for r in runs)}")
        stats = partition_stats(stack)
        report.append(f"after `pipeline render` of {CLI}: {stats}")
        for asset, s in stats.items():
            assert (s["numPartitions"], s["numMaterialized"], s["missing"], s["numFailed"]) == (24, 24, 0, 0), (asset, s)
        assert job_page_missing(stack) == (24, 0)
