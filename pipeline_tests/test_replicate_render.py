"""A full render with ``--provider replicate`` against the fake Replicate server on loopback:
a valid final video whose cost table equals the registry prices times the usage."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from pipeline import media, models
from pipeline.orchestration.render import render_video
from pipeline.ledger import Ledger, default_ledger_path
from pipeline_tests.conftest import write_spec
from pipeline_tests.fake_replicate import FakeReplicate


def test_full_render_with_replicate_costs_registry_prices(replicate_env, tmp_path):
    env, server = replicate_env
    spec = write_spec(tmp_path / "rep.yaml", video_id="rep-video", aspect="16:9",
                      beats=[{"prompt": "A fox runs through snow", "duration_s": 5},
                             {"prompt": "The fox leaps over a frozen stream", "duration_s": 8, "motion": "tracking"}])
    report = render_video(spec, defs=env.defs, instance=env.instance, provider="replicate", max_parallel=2)
    assert report.final is not None, [r.error for r in report.failed]
    plan, final = report.plan, report.final
    video = models.get_model(models.DEFAULTS["video"])
    assert plan.provider == "replicate" and plan.fps == video.fps  # the model's frame rate drives the plan
    assert [len(cv.chunks) for cv in report.chunk_sets] == [1, 2]  # 5 s and 8 s beats, 5 s chunks

    info = media.probe(final.path)
    assert abs(info.frames / info.fps - 13) <= 1 / info.fps
    assert (info.width, info.height) == (854, 480) and info.has_audio
    assert abs(info.audio_duration_s - 13) <= 1 / info.fps

    # One paid create per storyboard, per chunk and for the music; nothing else.
    chunks = sum(len(cv.chunks) for cv in report.chunk_sets)
    assert server.create_count() == len(plan.beats) + chunks + 1

    # The cost table is registry price x usage, line by line, and sums to the total.
    for line in final.costs:
        assert line.provider == "replicate"
        model = models.get_model(line.model.split(":")[0])
        price = model.prices[model.tier({"width": 854, "height": 480})] if "default" not in model.prices \
            else model.prices["default"]
        if price.unit == "image":
            assert line.cost_usd == pytest.approx(price.usd)
        elif price.unit in ("video", "audio"):
            assert line.cost_usd == pytest.approx(price.usd)
        elif price.unit.endswith("second"):
            assert line.cost_usd == pytest.approx(price.usd * line.units, abs=1e-4)
    assert final.cost_usd == pytest.approx(sum(c.cost_usd for c in final.costs))
    assert final.cost_usd > 0
    ledger = Ledger(default_ledger_path(env.data_dir))
    assert ledger.spent_usd("rep-video") == pytest.approx(final.cost_usd, abs=1e-6)

    # The cost table is in final_video's metadata, with a total row.
    [record] = env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("final_video"), asset_partitions=["rep-video"]), limit=1).records
    table = record.asset_materialization.metadata["cost_table"].value
    assert "total" in table and "replicate" in table

    # The token is nowhere: not in the Dagster instance (event log, run storage, compute logs), nor in data/.
    home = Path(os.environ["DAGSTER_HOME"])
    leaks = [p for root in (home, env.data_dir) for p in root.rglob("*")
             if p.is_file() and server.token.encode() in p.read_bytes()]
    assert leaks == []

    # A rerun buys nothing: every call is a cache hit and the server sees no new create. The cost
    # table still reports what this video paid (once, in the first render) and reuses nothing.
    creates = server.create_count()
    again = render_video(spec, defs=env.defs, instance=env.instance, provider="replicate", max_parallel=2,
                         force=True)
    assert again.final is not None
    assert again.final.paid_usd == pytest.approx(final.paid_usd) and again.final.reused_usd == 0
    assert server.create_count() == creates


def test_planning_a_brief_is_costed_once(tmp_path):
    from pipeline import stages
    from pipeline.providers import get_provider
    from pipeline.store import Workspace
    from pipeline.submissions import submit_file
    from pipeline_tests.conftest import EXAMPLES
    from pipeline_tests.fake_replicate import provider_options

    with FakeReplicate(run_seconds=(0.01, 0.02)) as server:
        ws = Workspace.at(tmp_path / "data")
        provider = get_provider("replicate", **provider_options(server, ws.root))
        submission, _ = submit_file(ws, EXAMPLES / "water-cycle.yaml", provider="replicate")
        plan = stages.plan_video(submission, provider)
        assert plan.planned_by.startswith("planner:meta/") and plan.planning_cost_usd > 0
        assert abs(sum(b.duration_s for b in plan.beats) - 45) < 1e-6
        again = stages.plan_video(submission, provider)  # the ledger holds the plan: no new call, no cost
        assert again.planning_cost_usd == 0 and again.beats == plan.beats
        assert server.create_count() == 1
