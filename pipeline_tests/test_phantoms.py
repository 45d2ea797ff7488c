"""Phantom segments are recorded, not left missing (pipeline/orchestration/phantoms.py): the pure
rule; the fan-out sensor's runless materializations for added videos, added segment keys and
re-plans (longer, shorter), none twice; the CLI render records them too and its plans get no
sensor runs, and the inbox sensor does not plan a registration a `pipeline` process is rendering;
Dagster's own partition status and staleness on a real (SQLite) instance; fan-in still refuses a
real segment that is missing after a re-plan."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from pipeline.defs.partitions import per_segment, segment_partition_key
from pipeline.defs.sensors import segment_fanout_sensor, spec_inbox_sensor
from pipeline.orchestration.phantoms import PHANTOM_ASSETS, PlanShape, wanted_phantoms
from pipeline.orchestration.render import execute
from pipeline.orchestration.render_lock import video_lock
from pipeline.orchestration.status import is_phantom, video_status
from pipeline.store import Workspace
from pipeline.submissions import submit_file
from pipeline_tests.conftest import write_spec

BEAT = {"prompt": "A paper boat drifts on a puddle", "duration_s": 5}


def _beats(n: int, variant: str = "") -> list[dict]:
    return [{"prompt": f"Shot {i} of a paper boat on a puddle{variant}", "duration_s": 5} for i in range(n)]


def _plan(env, tmp_path: Path, video_id: str, beats: int, variant: str = "") -> None:
    """Register a spec of ``beats`` 5 s beats and run plan_video for it (as the inbox sensor's run would)."""
    spec = write_spec(tmp_path / f"{video_id}{variant.strip()}.yaml", video_id=video_id, beats=_beats(beats, variant))
    sub, _ = submit_file(Workspace.at(env.data_dir), spec)
    env.instance.add_dynamic_partitions("videos", [sub.video_id])
    assert execute(env.defs, env.instance, "plan_video", video_id, name="plan").success


def _tick(env, cursor: str | None, sensor=segment_fanout_sensor) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=env.instance, cursor=cursor,
                                      resources={"pipeline": env.defs.resources["pipeline"]})
    return sensor(context)


def _apply(env, result: dg.SensorResult) -> None:
    """What the sensor daemon does with a result: report the asset events, then add the partitions."""
    for event in result.asset_events:
        env.instance.report_runless_asset_event(event)
    for request in result.dynamic_partitions_requests:
        env.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def _recorded(result: dg.SensorResult) -> list[tuple[str, str, str]]:
    """(asset, video, segment) of each phantom event in ``result``, in report order."""
    out = []
    for event in result.asset_events:
        assert isinstance(event, dg.AssetMaterialization) and is_phantom(event.metadata)
        dims = event.partition.keys_by_dimension
        out.append((event.asset_key.path[-1], dims["video"], dims["segment"]))
    return out


def _expected(pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    return [(asset, video, seg) for asset in PHANTOM_ASSETS for video, seg in sorted(pairs)]


def _segment_runs(result: dg.SensorResult) -> list[str]:
    return sorted(str(r.partition_key) for r in result.run_requests if r.job_name == "render_segment")


def _materialized_partitions(env, asset: str) -> tuple[set[str], set[str]]:
    """(materialized, failed) partition keys of ``asset`` as Dagster's partition status has them."""
    value = get_and_update_asset_status_cache_value(env.instance, dg.AssetKey(asset), per_segment)
    return (set(value.deserialize_materialized_partition_subsets(per_segment).get_partition_keys()),
            set(value.deserialize_failed_partition_subsets(per_segment).get_partition_keys()))


def test_wanted_phantoms_rule():
    three, one, five = PlanShape("three", 3, "a" * 64), PlanShape("one", 1, "b" * 64), PlanShape("five", 5, "c" * 64)
    keys = ["000", "001", "002"]
    # A new 1-beat video: its phantoms among every key; the other videos have none among its key.
    assert sorted(wanted_phantoms([one], [three, one], keys)) == [("one", "001"), ("one", "002")]
    # A new 5-beat video: none of its own; the others' among the keys it uses (003, 004 are new).
    wanted = wanted_phantoms([five], [three, one, five], keys + ["003", "004"])
    assert sorted(wanted) == [("one", "001"), ("one", "002"), ("one", "003"), ("one", "004"),
                              ("three", "003"), ("three", "004")]
    assert wanted[("three", "004")] is three
    assert three.reason("004") == "video three has 3 beats (segments 000-002); segment 004 is not part of it"
    assert one.reason("002") == "video one has 1 beat (segment 000); segment 002 is not part of it"
    assert not three.is_real("003") and three.is_real("002") and not three.is_real("x")


def test_fanout_records_phantoms_of_added_videos_keys_and_replans_once(env, tmp_path):
    # A 3-beat video: keys 000-002, all real, nothing to record.
    _plan(env, tmp_path, "three", 3)
    first = _tick(env, None)
    assert first.asset_events == [] and len(_segment_runs(first)) == 3
    _apply(env, first)

    # A 1-beat video: its 001 and 002 are phantoms, recorded in the same result as its runs.
    _plan(env, tmp_path, "one", 1)
    second = _tick(env, first.cursor)
    assert _recorded(second) == _expected([("one", "001"), ("one", "002")])
    assert _segment_runs(second) == ["000|one"]
    [event, *_] = second.asset_events
    one = env.instance.fetch_materializations(dg.AssetKey("video_spec"), limit=1).records[0].asset_materialization
    assert {k: getattr(v, "value", v) for k, v in event.metadata.items()} == {
        "phantom": True, "spec_sha256": one.metadata["spec_sha256"].value,
        "reason": "video one has 1 beat (segment 000); segment 001 is not part of it"}
    # As Dagster tags a run's materialization of a (video, segment); no data version (module doc).
    assert event.tags == {"dagster/partition/video": "one", "dagster/partition/segment": "001"}
    _apply(env, second)

    # A 5-beat video adds 003 and 004: the earlier videos' phantoms among them, in the same result.
    _plan(env, tmp_path, "five", 5)
    third = _tick(env, second.cursor)
    assert [r.partition_keys for r in third.dynamic_partitions_requests] == [["003", "004"]]
    assert _recorded(third) == _expected([("one", "003"), ("one", "004"), ("three", "003"), ("three", "004")])
    _apply(env, third)
    for asset in PHANTOM_ASSETS:
        for record in env.instance.fetch_materializations(dg.AssetKey(asset), limit=100).records:
            assert "dagster/data_version" not in (record.asset_materialization.tags or {})

    # Every partition that is not a real segment is recorded: 15 - 9 real = 6 phantoms per asset.
    for asset in PHANTOM_ASSETS:
        materialized, failed = _materialized_partitions(env, asset)
        assert len(materialized) == 6 and not failed, asset
    # Repeated ticks (here: every plan read again from the start) record nothing twice.
    again = _tick(env, None)
    assert again.asset_events == [] and len(_segment_runs(again)) == 9

    # Re-planned shorter (5 -> 2 beats): its dropped segments 002-004 are phantoms now.
    _plan(env, tmp_path, "five", 2, variant=" v2")
    shorter = _tick(env, third.cursor)
    assert _recorded(shorter) == _expected([("five", "002"), ("five", "003"), ("five", "004")])
    assert _segment_runs(shorter) == ["000|five", "001|five"]
    _apply(env, shorter)

    # Re-planned longer (1 -> 4 beats): 001-003 are real now and get no phantom record; its one
    # remaining phantom (004) is recorded again for the new plan version; nothing else changes.
    _plan(env, tmp_path, "one", 4, variant=" v2")
    longer = _tick(env, shorter.cursor)
    assert _recorded(longer) == _expected([("one", "004")])
    assert _segment_runs(longer) == ["000|one", "001|one", "002|one", "003|one"]
    _apply(env, longer)
    assert _tick(env, longer.cursor).asset_events == []

    # The now-real segments' latest record is a phantom: the pipeline's status says missing, and
    # fan-in refuses to stitch while one of them has not been rendered.
    status = video_status(env.instance, env.data_dir / "manifests", "one")
    assert {s.segment: s.state for s in status.segments} == {
        "000": "missing", "001": "missing", "002": "missing", "003": "missing"}
    # Dagster cannot unmaterialize a partition: it shows the now-real segment materialized, and
    # stale (video_spec has a newer materialization) until its run, requested above, renders it.
    now_real = str(segment_partition_key("one", 1))
    assert now_real in _materialized_partitions(env, "chunk_videos")[0]
    assert _stale(env, "chunk_videos", now_real) == StaleStatus.STALE
    assert _stale(env, "chunk_videos", str(segment_partition_key("one", 4))) == StaleStatus.FRESH  # a phantom
    for i in (0, 1, 2):
        assert execute(env.defs, env.instance, "render_segment", segment_partition_key("one", i), name="s").success
    assert execute(env.defs, env.instance, "render_music", "one", name="music").success
    outcome = execute(env.defs, env.instance, "assemble_video", "one", name="assemble")
    assert not outcome.success and "segments 003 have no chunk_videos" in outcome.error
    status = video_status(env.instance, env.data_dir / "manifests", "one")
    assert [s.segment for s in status.segments if s.state != "materialized"] == ["003"]


def _stale(env, asset: str, video_id: str) -> StaleStatus:
    resolver = CachingStaleStatusResolver(env.instance, env.defs.resolve_asset_graph(),
                                          LoadingContextForTest(env.instance))
    return resolver.get_status(dg.AssetKey(asset), video_id)


def test_cli_render_records_phantoms_and_its_plans_get_no_sensor_runs(env, tmp_path):
    one = write_spec(tmp_path / "one.yaml", video_id="one", beats=[BEAT])
    assert env.render(one, max_parallel=2).final is not None
    for asset in ("stitched_video", "final_video"):
        assert _stale(env, asset, "one") == StaleStatus.FRESH

    # A longer video rendered by the CLI adds 001 and 002: "one"'s phantoms there are recorded.
    assert env.render(write_spec(tmp_path / "three.yaml", video_id="three", beats=_beats(3)),
                      max_parallel=2).final is not None
    expected = {str(segment_partition_key(v, i)) for v in ("one", "three") for i in range(3)}
    for asset in PHANTOM_ASSETS:
        materialized, failed = _materialized_partitions(env, asset)
        assert materialized == expected and not failed, asset
        phantoms = [r for r in env.instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
                    if is_phantom(r.asset_materialization.metadata)]
        assert sorted(r.partition_key for r in phantoms) == ["001|one", "002|one"]
        assert all("dagster/data_version" not in (r.asset_materialization.tags or {}) for r in phantoms)
    # The earlier video is not stale for it: phantom records carry no data version.
    for asset in ("stitched_video", "final_video"):
        assert _stale(env, asset, "one") == StaleStatus.FRESH, asset
        assert _stale(env, asset, "three") == StaleStatus.FRESH, asset

    # The daemon's fan-out sensor reading these CLI plans requests no runs and records nothing again,
    # and its inbox sensor does not plan the versions the CLI registered and planned.
    result = _tick(env, None)
    assert result.run_requests == [] and result.asset_events == []
    inbox = _tick(env, None, spec_inbox_sensor)
    assert inbox.run_requests == [] and set(json.loads(inbox.cursor)) == {"one", "three"}
    # Rendering again (up to date) records nothing either.
    count = {a: len(env.instance.fetch_materializations(dg.AssetKey(a), limit=100).records) for a in PHANTOM_ASSETS}
    assert env.render(one, max_parallel=2).up_to_date
    assert count == {a: len(env.instance.fetch_materializations(dg.AssetKey(a), limit=100).records)
                     for a in PHANTOM_ASSETS}

    # A CLI re-plan of "one" with more beats: the sensor still requests nothing (the CLI renders them).
    spec = yaml.safe_load(one.read_text())
    spec["beats"] = _beats(2, " again")
    spec["duration_s"] = 10
    one.write_text(yaml.safe_dump(spec))
    assert env.render(one, max_parallel=2).final is not None
    assert _tick(env, result.cursor).run_requests == []
    status = video_status(env.instance, env.data_dir / "manifests", "one")
    assert [s.state for s in status.segments] == ["materialized", "materialized"]


def test_inbox_sensor_leaves_a_video_to_the_pipeline_process_rendering_it(env, tmp_path):
    # `pipeline render` registers the spec while holding the video's render lock, then plans it.
    workspace = Workspace.at(env.data_dir)
    submit_file(workspace, write_spec(tmp_path / "busy.yaml", video_id="busy", beats=[BEAT]))
    with video_lock(workspace, "busy"):
        held = _tick(env, None, spec_inbox_sensor)
        assert held.run_requests == [] and json.loads(held.cursor) == {}  # looked at again next tick
    [request] = _tick(env, held.cursor, spec_inbox_sensor).run_requests
    assert request.job_name == "plan_video" and request.partition_key == "busy"
