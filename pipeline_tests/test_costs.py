"""Cost tables: manifests stay loadable, lines are reconciled with the ledger (paid vs reused, ledger
lines), tables render without ``nan`` and with "000" segment keys, time windows add up, and a local
render's table is all zeros in the Dagster metadata."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from rich.console import Console

from pipeline import cost_report, costs
from pipeline.ledger import Ledger
from pipeline.manifests import (
    ChunkManifest,
    ChunkPlan,
    ChunkVideosManifest,
    CostLine,
    FinalManifest,
    MediaManifest,
    MusicManifest,
    load_manifest,
)
from pipeline_tests.conftest import write_spec


def _medium(kind: str, *, pid: str | None, key: str, price: float, paid_by: str | None, cache_hit: bool,
            cost: float = 0.0) -> MediaManifest:
    return MediaManifest(media_type=kind, uri=f"file:///{key}", sha256=key * 4, bytes=1, provider="replicate",
                         model={"image": "img", "video": "vid", "audio": "mus"}[kind], prediction_id=pid,
                         cost_usd=cost, cache_hit=cache_hit, cache_key=key, price_usd=price, paid_by=paid_by,
                         duration_s=None if kind == "image" else 5.0)


def _pay(ledger: Ledger, key: str, video: str | None, pid: str, cost: float, *, state: str = "succeeded",
         status: str = "succeeded", labels: dict | None = None, model: str = "vid") -> None:
    ledger.begin(key, provider="replicate", model=model, video_id=video, estimate_usd=cost, labels=labels or {})
    ledger.set_in_flight(key, pid)
    ledger.finish(key, state, cost_usd=cost, status=status)


def test_manifests_written_before_the_cost_fields_still_load():
    media = {"kind": "media", "media_type": "video", "uri": "file:///x", "sha256": "ab" * 32, "bytes": 3,
             "provider": "replicate", "model": "vid", "prediction_id": "p1", "cost_usd": 0.05, "cache_hit": False,
             "cache_key": "k", "created_at": "2024-01-01T00:00:00+00:00", "extra": {}}
    old = load_manifest(json.dumps(media))
    assert isinstance(old, MediaManifest) and old.price_usd == 0.05 and old.paid_by is None
    line = {"stage": "music", "segment": None, "item": "music track", "provider": "replicate", "model": "mus",
            "units": 13.0, "unit": "audio s", "cost_usd": 0.2, "cache_hit": False}
    final = load_manifest(json.dumps({"kind": "final", "video_id": "v", "video": media, "path": "/v.mp4", "beats": 1,
                                      "chunks": 1, "cost_usd": 0.2, "costs": [line]}))
    assert isinstance(final, FinalManifest)
    assert final.paid_usd == 0.2 and final.reused_usd == 0.0
    assert final.costs[0].paid_usd == 0.2 and final.costs[0].cost_usd == 0.2 and final.costs[0].source == "manifest"
    # Round trip of the new fields.
    again = load_manifest(final.model_dump_json())
    assert again == final


def test_lines_are_reconciled_with_the_ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    _pay(ledger, "k-board", "b", "p-board", 0.003, model="img")                        # paid by the twin
    _pay(ledger, "k-c0", "a", "p-c0", 0.05, labels={"stage": "chunk_videos", "segment": "000"})
    _pay(ledger, "k-c1", "a", "p-c1-failed", 0.0, state="failed", status="failed",
         labels={"stage": "chunk_videos", "segment": "001"})
    _pay(ledger, "k-c1", "a", "p-c1", 0.05, labels={"stage": "chunk_videos", "segment": "001"})
    _pay(ledger, "k-music", "a", "p-music-expired", 0.2, state="failed", status="succeeded", model="mus",
         labels={"stage": "music"})
    _pay(ledger, "k-music", "a", "p-music", 0.2, model="mus", labels={"stage": "music"})
    _pay(ledger, "k-old", "a", "p-old", 0.05, labels={"stage": "chunk_videos", "segment": "002"})

    board = _medium("image", pid="p-board", key="k-board", price=0.003, paid_by="b", cache_hit=True)
    c0 = _medium("video", pid="p-c0", key="k-c0", price=0.05, paid_by="a", cache_hit=True)  # paid by a killed attempt
    c1 = _medium("video", pid="p-c1", key="k-c1", price=0.05, paid_by="a", cache_hit=False, cost=0.05)
    plan = ChunkPlan(index=0, chunk_type="reference_image", generate_s=5, keep_s=5)
    chunk = lambda m: ChunkManifest(plan=plan, video=m, start_image_sha256="s", last_frame=board)  # noqa: E731
    sets = [ChunkVideosManifest(video_id="a", index=0, fingerprint="f", duration_s=5, storyboard=board,
                                chunks=[chunk(c0)]),
            ChunkVideosManifest(video_id="a", index=1, fingerprint="f", duration_s=5, storyboard=board,
                                chunks=[chunk(c1), chunk(c0)])]  # the same output used twice
    music = MusicManifest(video_id="a", audio=_medium("audio", pid="p-music", key="k-music", price=0.2, paid_by="a",
                                                      cache_hit=False, cost=0.2))
    lines = costs.manifest_lines("a", chunk_sets=sets, music=music)
    # From the manifests alone: c0 is paid by this video although this run's call cost nothing.
    assert [(line.paid_usd, line.reused_usd) for line in lines] == [
        (0.0, 0.003), (0.05, 0.0), (0.0, 0.003), (0.05, 0.0), (0.05, 0.0), (0.2, 0.0)]

    out = costs.reconcile("a", lines, ledger)
    manifest_part = [line for line in out if line.source == "manifest"]
    assert [(line.segment, line.paid_usd, line.reused_usd, line.paid_by) for line in manifest_part] == [
        ("000", 0.0, 0.003, "b"), ("000", 0.05, 0.0, "a"),
        ("001", 0.0, 0.003, "b"), ("001", 0.05, 0.0, "a"), ("001", 0.0, 0.05, "a"),
        (None, 0.2, 0.0, "a")]
    assert "earlier run" in manifest_part[1].note and "same output" in manifest_part[4].note
    extra = {line.prediction_id: line for line in out if line.source == "ledger"}
    assert set(extra) == {"p-c1-failed", "p-music-expired", "p-old"}
    assert extra["p-c1-failed"].paid_usd == 0 and "failed" in extra["p-c1-failed"].note
    assert extra["p-c1-failed"].stage == "chunk_videos" and extra["p-c1-failed"].segment == "001"
    assert extra["p-music-expired"].paid_usd == 0.2 and "unusable" in extra["p-music-expired"].note
    assert extra["p-old"].paid_usd == 0.05 and "not used" in extra["p-old"].note
    paid, reused = costs.totals(out)
    assert paid == pytest.approx(sum(p.cost_usd for p in ledger.predictions(video_id="a")), abs=1e-9)
    assert paid == pytest.approx(0.55) and reused == pytest.approx(0.056)
    # Reconciling again (e.g. from a final manifest) recomputes the ledger lines, never doubles them.
    assert costs.reconcile("a", out, ledger) == out
    # The twin's view: its own board paid, nothing else of a's counted.
    b = costs.reconcile("b", [lines[0].model_copy(update={"paid_usd": 0.003, "reused_usd": 0.0, "paid_by": "b"})],
                        ledger)
    assert costs.totals(b) == (0.003, 0.0)


def test_tables_render_without_nan_and_with_string_segment_keys():
    lines = [CostLine(stage="storyboard_images", segment="000", item="storyboard image", provider="local",
                      model="local/img", units=1, unit="image", cache_hit=False),
             CostLine(stage="chunk_videos", segment="010", item="chunk 0", provider="local", model="local/vid",
                      units=5.0, unit="video s", cache_hit=True),
             CostLine(stage="music", segment=None, item="music track", provider="replicate", model="mus",
                      units=None, unit=None, reused_usd=0.2, paid_by="other", cache_hit=None),
             CostLine(stage="music", segment=None, item="prediction p (succeeded)", provider="replicate", model="mus",
                      paid_usd=0.000051, paid_by="v", source="ledger")]
    df = costs.cost_frame(lines)
    assert str(df["segment"].dtype) == "string" and list(df["segment"].fillna("")) == ["000", "010", "", ""]
    assert str(df["paid_usd"].dtype) == "float64" and str(df["cache_hit"].dtype) == "boolean"
    text = costs.markdown(df)
    assert "nan" not in text.lower() and "None" not in text and "<NA>" not in text
    rows = [r.split("|")[1:-1] for r in text.splitlines()[2:]]
    assert [r[1].strip() for r in rows] == ["000", "010", "", "", ""]
    assert rows[-1][0].strip() == "total" and rows[-1][7].strip() == "0.000051" and rows[-1][8].strip() == "0.2000"
    assert rows[0][10].strip() == "no" and rows[1][10].strip() == "yes" and rows[2][10].strip() == ""


def test_window_costs_add_up_and_filter_by_time(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    _pay(ledger, "k1", "a", "p1", 0.05)
    _pay(ledger, "k2", "b", "p2", 0.003, model="img")
    _pay(ledger, "k3", None, "p3", 0.001, model="llm")
    created = {p.prediction_id: p.created_at for p in ledger.predictions()}
    everything = costs.window_costs(ledger)
    assert list(everything["video_id"].fillna("")) == ["", "a", "b"]
    assert everything["paid_usd"].sum() == pytest.approx(0.054)
    assert list(everything["predictions"]) == [1, 1, 1]
    later = costs.window_costs(ledger, since=created["p2"])
    assert set(later["video_id"].fillna("")) == {"", "b"} and later["paid_usd"].sum() == pytest.approx(0.004)
    before = costs.window_costs(ledger, until=created["p2"])  # half-open: p2 itself is excluded
    assert list(before["video_id"]) == ["a"]
    text = cost_report.window_text(everything, None, None)
    assert "nan" not in text and "| total" in text and "0.0540" in text

    # `pipeline cost --since/--until`: the window's table; bad times and mixed modes are usage errors.
    console = Console(record=True, width=200)
    assert cost_report.cost_command(console, data_dir=tmp_path, manifests=tmp_path / "manifests",
                                    since=str(created["p2"]), as_markdown=True) == 0
    out = console.export_text()
    assert "| b " in out and "| a " not in out and "0.0040" in out
    console = Console(record=True, width=200)
    assert cost_report.cost_command(console, data_dir=tmp_path, manifests=tmp_path, since="whenever") == 2
    assert cost_report.cost_command(console, data_dir=tmp_path, manifests=tmp_path, video_id="a", since="1h") == 2
    assert cost_report.cost_command(console, data_dir=tmp_path, manifests=tmp_path, video_id="nope") == 1
    errors = console.export_text()
    assert "not a time" in errors and "not both" in errors and "no video_spec manifest" in errors


def test_parse_when():
    now = 1_700_000_000.0
    assert cost_report.parse_when("now", now=now) == now
    assert cost_report.parse_when("24h", now=now) == now - 86400
    assert cost_report.parse_when("90m", now=now) == now - 5400
    assert cost_report.parse_when("1699990000", now=now) == 1699990000.0
    assert cost_report.parse_when("2023-11-14T22:13:20Z") == now
    assert cost_report.parse_when("2023-11-14T22:13:20") == now  # no zone: UTC
    with pytest.raises(ValueError, match="not a time"):
        cost_report.parse_when("yesterday-ish")


def test_local_render_costs_nothing_and_reads_well(env, tmp_path):
    spec = write_spec(tmp_path / "tiny.yaml", video_id="cost-local")
    report = env.render(spec, max_parallel=2)
    assert report.final is not None, [r.error for r in report.failed]
    final = report.final
    assert final.paid_usd == 0 and final.reused_usd == 0 and final.cost_usd == 0
    assert [c.segment for c in final.costs if c.stage == "storyboard_images"] == ["000", "001", "002"]
    assert all(c.paid_usd == 0 and c.reused_usd == 0 and c.paid_by is None for c in final.costs)

    [record] = env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("final_video"), asset_partitions=["cost-local"]), limit=1).records
    metadata = record.asset_materialization.metadata
    assert metadata["paid_usd"].value == 0 and metadata["reused_usd"].value == 0
    table = metadata["cost_table"].value
    assert "nan" not in table.lower() and "None" not in table
    segments = [r.split("|")[2].strip() for r in table.splitlines()[2:]]
    assert segments[:2] == ["000", "000"] and "001" in segments and "002" in segments
    assert table.splitlines()[-1].split("|")[1].strip() == "total"
    records = metadata["costs"].value.records
    assert [r.data["segment"] for r in records][:2] == ["000", "000"]
    assert all(v is not None and v != "nan" for r in records for v in r.data.values())

    # The CLI's view from the stored manifests: the same lines, all zero; the ledger never existed.
    assert costs.open_ledger(env.data_dir) is None
    view = costs.video_costs("cost-local", manifests=env.data_dir / "manifests", ledger=None)
    assert view.finished and view.paid_usd == 0 and view.reused_usd == 0 and view.ledger_usd is None
    assert view.lines == final.costs
    assert "paid $0.0000" in cost_report.totals_line(view)
    # A final manifest written before lines had cache keys: the lines are rebuilt from the segments.
    path = env.data_dir / "manifests" / "final_video" / "cost-local.json"
    data = json.loads(path.read_text())
    data["costs"] = [{k: line[k] for k in ("stage", "segment", "item", "provider", "model", "units", "unit",
                                           "cache_hit")} | {"cost_usd": line["paid_usd"]} for line in data["costs"]]
    path.write_text(json.dumps({k: v for k, v in data.items() if k not in ("paid_usd", "reused_usd")}))
    rebuilt = costs.video_costs("cost-local", manifests=env.data_dir / "manifests", ledger=None)
    assert rebuilt.finished and rebuilt.lines == final.costs

    console = Console(record=True, width=250)
    assert cost_report.cost_command(console, data_dir=env.data_dir, manifests=env.data_dir / "manifests",
                                    video_id="cost-local") == 0
    out = console.export_text()
    assert "costs of cost-local (final video)" in out and "│ 001 " in out and "nan" not in out
    assert "paid $0.0000, reused $0.0000" in out and "no ledger" not in out
