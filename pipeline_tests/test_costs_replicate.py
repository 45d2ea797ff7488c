"""Cost tables agree with what was paid, rendering with ``--provider replicate`` against the fake
Replicate server on loopback:

- twin videos sharing beats: the first pays, the second shows those lines as reused (paid by the
  first); each video's paid total is its ledger spend; together they are the window's spend, which
  is the server's creates times the registry prices;
- the same twins rendered at the same time by two processes: each shared request is paid once,
  by one of them, and the other reuses it (a cache hit, or a prediction it waited on and adopted);
- a render that fails midway and is run again: the final table's paid total is everything the
  ledger says the video paid in both attempts, and the paid predictions no manifest uses (an
  unusable output, a failed chunk, chunks paid before the failure) are ledger lines.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import dagster as dg
import pytest

from pipeline import costs, models
from pipeline.definitions import build_definitions
from pipeline.orchestration.render import render_video
from pipeline.ledger import Ledger, default_ledger_path
from pipeline_tests.conftest import write_spec
from pipeline_tests.fake_replicate import FakeReplicate

IMAGE, VIDEO, MUSIC = models.DEFAULTS["image"], models.DEFAULTS["video"], models.DEFAULTS["audio"]
SIZE = {"width": 854, "height": 480}  # 16:9 draft resolution: Wan's 480p tier
PRICE = {ref: models.get_model(ref).price(SIZE).usd for ref in (IMAGE, VIDEO, MUSIC)}
FOX = {"prompt": "A fox runs through snow", "duration_s": 5}


def _server(**options) -> FakeReplicate:
    return FakeReplicate(**{"run_seconds": (0.02, 0.05), "render_scale": 0.25, **options})


def _use(env, monkeypatch, server: FakeReplicate) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", server.token)
    monkeypatch.setenv("REPLICATE_BASE_URL", server.base_url)
    env.defs = build_definitions(str(env.data_dir), replicate_output_hosts=[server.origin],
                                 replicate_poll_interval_s=0.02)


def _ledger_usd(ledger: Ledger, video_id: str) -> float:
    return round(sum(p.cost_usd for p in ledger.predictions(video_id=video_id)), 6)


def _final_metadata(env, video_id: str) -> dict:
    [record] = env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("final_video"), asset_partitions=[video_id]), limit=1).records
    return record.asset_materialization.metadata


def test_twin_videos_pay_once_and_the_second_reuses(env, monkeypatch, tmp_path):
    shared_beats = [FOX, {"prompt": "The fox leaps over a frozen stream", "duration_s": 5, "motion": "tracking"}]
    twin_beats = [FOX, {"prompt": "The fox curls up in its den", "duration_s": 5, "motion": "slow push-in"}]
    a = write_spec(tmp_path / "a.yaml", video_id="twin-a", aspect="16:9", seed=7, beats=shared_beats)
    b = write_spec(tmp_path / "b.yaml", video_id="twin-b", aspect="16:9", seed=7, beats=twin_beats)
    with _server() as server:
        _use(env, monkeypatch, server)
        since = time.time()
        ra = env.render(a, provider="replicate", max_parallel=2)
        assert ra.final is not None, [r.error for r in ra.failed]
        rb = env.render(b, provider="replicate", max_parallel=2)
        assert rb.final is not None, [r.error for r in rb.failed]
        until = time.time() + 1
        creates = {ref: server.create_count(ref) for ref in PRICE}
    # a: 2 images, 2 chunks, 1 track; b: only its own second beat (1 image, 1 chunk); nothing twice.
    assert creates == {IMAGE: 3, VIDEO: 3, MUSIC: 1}

    ledger = Ledger(default_ledger_path(env.data_dir))
    ca = costs.video_costs("twin-a", manifests=env.data_dir / "manifests", ledger=ledger)
    cb = costs.video_costs("twin-b", manifests=env.data_dir / "manifests", ledger=ledger)
    assert ca.finished and cb.finished

    # a paid for every line itself.
    assert [line.source for line in ca.lines] == ["manifest"] * 5
    assert all(line.paid_by == "twin-a" and line.paid_usd > 0 and line.reused_usd == 0 for line in ca.lines)
    assert ca.paid_usd == pytest.approx(2 * PRICE[IMAGE] + 2 * PRICE[VIDEO] + PRICE[MUSIC])
    assert ca.reused_usd == 0

    # b reused beat 000 and the music from a, and paid for its own beat 001.
    assert [line.source for line in cb.lines] == ["manifest"] * 5
    by_item = {(line.segment, line.stage): line for line in cb.lines}
    for key in [("000", "storyboard_images"), ("000", "chunk_videos"), (None, "music")]:
        line = by_item[key]
        assert (line.paid_usd, line.paid_by, line.cache_hit) == (0, "twin-a", True), key
        twin = next(x for x in ca.lines if (x.segment, x.stage) == key)
        assert line.reused_usd == pytest.approx(twin.paid_usd) and line.prediction_id == twin.prediction_id
    for key in [("001", "storyboard_images"), ("001", "chunk_videos")]:
        line = by_item[key]
        assert line.paid_by == "twin-b" and line.paid_usd > 0 and line.reused_usd == 0, key
    assert cb.paid_usd == pytest.approx(PRICE[IMAGE] + PRICE[VIDEO])
    assert cb.reused_usd == pytest.approx(PRICE[IMAGE] + PRICE[VIDEO] + PRICE[MUSIC])

    # Each video's paid total is exactly its ledger spend; the final manifests say the same.
    for view, report in ((ca, ra), (cb, rb)):
        assert view.paid_usd == view.ledger_usd == _ledger_usd(ledger, view.video_id)
        assert report.final.paid_usd == report.final.cost_usd == view.paid_usd
        assert report.final.reused_usd == view.reused_usd
        metadata = _final_metadata(env, view.video_id)
        assert metadata["paid_usd"].value == pytest.approx(view.paid_usd)
        assert metadata["reused_usd"].value == pytest.approx(view.reused_usd)
        assert "nan" not in metadata["cost_table"].value
    assert "twin-a" in _final_metadata(env, "twin-b")["cost_table"].value

    # Together: the window's spend, which is what the server was asked to make, at registry prices.
    window = costs.window_costs(ledger, since, until)
    assert set(window["video_id"]) == {"twin-a", "twin-b"}
    assert window["paid_usd"].sum() == pytest.approx(ca.paid_usd + cb.paid_usd, abs=1e-9)
    assert window["paid_usd"].sum() == pytest.approx(sum(n * PRICE[ref] for ref, n in creates.items()), abs=1e-9)
    assert int(window["predictions"].sum()) == sum(creates.values())


def test_resumed_render_reports_everything_the_video_paid(env, monkeypatch, tmp_path):
    leap = {"prompt": "The fox leaps over a frozen stream", "duration_s": 8, "motion": "tracking"}
    spec = write_spec(tmp_path / "resume.yaml", video_id="resumed", aspect="16:9", beats=[FOX, leap])
    seen: list[str] = []
    lock = threading.Lock()

    def fault_for(model, inp, n):
        """Fail segment 001's second chunk (a permanent error: the run fails) the first time only."""
        if model != VIDEO or "frozen stream" not in str(inp.get("prompt")):
            return None
        with lock:
            seen.append(model)
            return "fail" if len(seen) == 2 else None

    with _server(fault_for=fault_for) as server:
        _use(env, monkeypatch, server)
        # The first music prediction is paid, but its output has expired: the step retries and pays again.
        server.inject("expired_output", model=MUSIC, times=1)
        first = env.render(spec, provider="replicate", max_parallel=2)
        assert first.final is None and [r.name for r in first.failed] == ["segment 001"], first.failed
        ledger = Ledger(default_ledger_path(env.data_dir))
        partial = costs.video_costs("resumed", manifests=env.data_dir / "manifests", ledger=ledger)
        spent_first = _ledger_usd(ledger, "resumed")
        creates_before = server.create_count()

        second = env.render(spec, provider="replicate", max_parallel=2)
        assert second.final is not None, [r.error for r in second.failed]
        assert server.create_count() == creates_before + 1  # only the failed chunk was made again
        creates = {ref: server.create_count(ref) for ref in PRICE}

    # After the failure: unfinished, yet every paid prediction is counted, the chunk paid before the
    # failure (no chunk_videos manifest holds it yet) as a ledger line.
    assert not partial.finished and partial.missing_segments == ["001"]
    assert partial.paid_usd == partial.ledger_usd == spent_first > 0
    early = [line for line in partial.lines if line.source == "ledger" and line.segment == "001"
             and line.stage == "chunk_videos"]
    assert sorted(line.paid_usd for line in early) == [0, pytest.approx(PRICE[VIDEO])]

    final = second.final
    total = _ledger_usd(ledger, "resumed")
    assert final.paid_usd == final.cost_usd == pytest.approx(total, abs=1e-9)
    view = costs.video_costs("resumed", manifests=env.data_dir / "manifests", ledger=ledger)
    assert view.finished and view.paid_usd == pytest.approx(total, abs=1e-9) and view.reused_usd == 0
    # Paid: 2 images, 3 good chunks, 2 music tracks (one expired); the failed chunk cost nothing.
    assert creates == {IMAGE: 2, VIDEO: 4, MUSIC: 2}
    assert total == pytest.approx(2 * PRICE[IMAGE] + 3 * PRICE[VIDEO] + 2 * PRICE[MUSIC])

    # The chunk paid by the first attempt is a cache hit now, and still paid by this video.
    chunks = [line for line in final.costs if line.stage == "chunk_videos" and line.source == "manifest"]
    assert len(chunks) == 3 and all(line.paid_by == "resumed" and line.paid_usd > 0 for line in chunks)
    assert any(line.cache_hit for line in chunks if line.segment == "001")
    # What the rerun's own calls paid is less than what the video paid: that was the bug.
    assert sum(c.video.cost_usd for cv in second.chunk_sets for c in cv.chunks) < total

    # The failed attempts' predictions are ledger lines: the failed chunk and the expired music track.
    extra = [line for line in final.costs if line.source == "ledger"]
    assert sorted((line.stage, line.paid_usd) for line in extra) == [
        ("chunk_videos", 0.0), ("music", pytest.approx(PRICE[MUSIC]))]
    failed = next(line for line in extra if line.stage == "chunk_videos")
    assert failed.segment == "001" and "failed" in failed.note
    assert "unusable" in next(line for line in extra if line.stage == "music").note
    paid_ids = {p.prediction_id for p in ledger.predictions(video_id="resumed")}
    assert {line.prediction_id for line in final.costs} >= paid_ids
    table = _final_metadata(env, "resumed")["cost_table"].value
    assert "nan" not in table and "unusable" in table


def _render_in_child(spec: str, origin: str) -> tuple[bool, str]:
    """Render ``spec`` in this (spawned) process, like a second ``pipeline render`` would."""
    defs = build_definitions(os.environ["PIPELINE_DATA_DIR"], replicate_output_hosts=[origin],
                             replicate_poll_interval_s=0.02)
    with dg.DagsterInstance.get() as instance:
        report = render_video(spec, defs=defs, instance=instance, provider="replicate", max_parallel=2)
    return report.final is not None, "; ".join(str(r.error) for r in report.failed)


def test_concurrent_twins_pay_each_request_once(env, monkeypatch, tmp_path):
    beats = [FOX, {"prompt": "The fox leaps over a frozen stream", "duration_s": 5, "motion": "tracking"}]
    specs = {v: str(write_spec(tmp_path / f"{v}.yaml", video_id=v, aspect="16:9", seed=7, beats=beats))
             for v in ("race-a", "race-b")}
    # Slow enough predictions that the two renders overlap on the same requests.
    with _server(run_seconds=(0.3, 0.6)) as server:
        _use(env, monkeypatch, server)
        since = time.time()
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_render_in_child, spec, server.origin) for spec in specs.values()]
            results = [f.result(timeout=600) for f in futures]
        until = time.time() + 1
        creates = {ref: server.create_count(ref) for ref in PRICE}
    assert all(ok for ok, _ in results), results
    # Every request was bought once: 2 images, 2 chunks, 1 track, whoever bought them.
    assert creates == {IMAGE: 2, VIDEO: 2, MUSIC: 1}

    ledger = Ledger(default_ledger_path(env.data_dir))
    views = {v: costs.video_costs(v, manifests=env.data_dir / "manifests", ledger=ledger) for v in specs}
    for view in views.values():
        assert view.finished and [line.source for line in view.lines] == ["manifest"] * 5
        assert view.paid_usd == view.ledger_usd == _ledger_usd(ledger, view.video_id)
    a, b = views["race-a"].lines, views["race-b"].lines
    for la, lb in zip(a, b):
        assert (la.segment, la.stage, la.prediction_id) == (lb.segment, lb.stage, lb.prediction_id)
        payer, other = (la, lb) if la.paid_usd > 0 else (lb, la)
        assert payer.paid_usd > 0 and payer.reused_usd == 0 and other.paid_usd == 0, (la, lb)
        assert other.reused_usd == pytest.approx(payer.paid_usd) and other.paid_by == payer.paid_by
        assert payer.paid_by == (views["race-a"] if payer is la else views["race-b"]).video_id
    paid = views["race-a"].paid_usd + views["race-b"].paid_usd
    assert paid == pytest.approx(2 * PRICE[IMAGE] + 2 * PRICE[VIDEO] + PRICE[MUSIC])
    assert views["race-a"].reused_usd + views["race-b"].reused_usd == pytest.approx(paid)
    window = costs.window_costs(ledger, since, until)
    assert window["paid_usd"].sum() == pytest.approx(paid, abs=1e-9)
    assert window["paid_usd"].sum() == pytest.approx(sum(n * PRICE[ref] for ref, n in creates.items()), abs=1e-9)
