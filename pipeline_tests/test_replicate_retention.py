"""Replicate removes an API prediction's input, output and logs an hour after it finishes
(``data_removed: true``). Adopting a paid prediction, or resuming one after a crash, past that gives a
clear message (when it finished, what it cost, which video paid); the ledger keeps the spend, and the
request is bought again only as the ``expired`` rule allows (once)."""

from __future__ import annotations

import httpx
import pytest

from pipeline.generation import GenerationRequest
from pipeline.ledger import Ledger
from pipeline.models import get_model
from pipeline.providers import ProviderError
from pipeline.providers.replicate import image_data_uri
from pipeline_tests.fake_replicate import FakeReplicate
from pipeline_tests.test_replicate_faults import WAN, Harness

PRICE = get_model(WAN).price({"width": 854, "height": 480}).usd


def test_adopting_a_paid_prediction_after_retention_says_it_is_gone_what_it_cost_and_who_paid(tmp_path):
    with FakeReplicate(run_seconds=0.02, render_scale=0.25) as server:
        ledger = tmp_path / "ledger.sqlite"
        first = Harness(tmp_path / "a", server, ledger_path=ledger).chunk()
        (pred,) = server.predictions.values()
        server.advance_clock(3601)  # an hour after it finished: data_removed
        other = Harness(tmp_path / "b", server, ledger_path=ledger)  # another data dir, the same ledger
        with pytest.raises(ProviderError) as err:
            other.chunk()
        msg = str(err.value)
        assert "Replicate removed its output an hour after it finished" in msg
        assert f"completed_at {server.prediction_json(pred)['completed_at']}" in msg
        assert f"cost ${PRICE:.4f}, paid by v" in msg and "a retry buys it once more" in msg
        assert err.value.retryable is True
        led = Ledger(ledger)
        assert led.get(first.cache_key).cost_usd == pytest.approx(PRICE)  # the spend stays
        assert round(sum(p.cost_usd for p in led.predictions(video_id="v")), 6) == pytest.approx(PRICE)
        again = other.chunk()  # the expired rule: bought once more
        assert server.create_count(WAN) == 2 and again.prediction_id != pred.id
        assert round(sum(p.cost_usd for p in led.predictions(video_id="v")), 6) == pytest.approx(2 * PRICE)
        server.advance_clock(3601)
        with pytest.raises(ProviderError, match="Not buying a third time") as err:
            Harness(tmp_path / "c", server, ledger_path=ledger).chunk()
        assert err.value.retryable is False and "removed its output an hour after it finished" in str(err.value)
        assert server.create_count(WAN) == 2


def test_resuming_an_in_flight_prediction_after_retention_says_it_is_gone(tmp_path):
    with FakeReplicate(run_seconds=0.02, render_scale=0.25) as server:
        h = Harness(tmp_path, server)
        # A run created the chunk's prediction, recorded its id, and died before using it.
        r = httpx.post(f"{server.base_url}/v1/models/{WAN}/predictions", timeout=30,
                       headers={"Authorization": f"Bearer {server.token}"},
                       json={"input": {"prompt": "the fox runs", "image": image_data_uri(h.start)}})
        pid = r.json()["id"]
        assert server.wait_for(lambda: server.predictions[pid].done.is_set(), timeout=30)
        assert server.predictions[pid].status == "succeeded", server.predictions[pid].error
        req = GenerationRequest(media_type="video", provider="replicate", model=WAN, prompt="the fox runs", seed=1,
                                params={"width": 854, "height": 480, "fps": 16, "duration_s": 5.0},
                                inputs={"start_image": "0" * 64}, labels={"video_id": "v", "segment": "000"})
        job = h.ledger.begin(req.cache_key(), provider="replicate", model=WAN, video_id="v", estimate_usd=PRICE)
        h.ledger.set_in_flight(req.cache_key(), pid, owner=job.owner)
        server.advance_clock(3601)
        with pytest.raises(ProviderError) as err:
            h.chunk()
        msg = str(err.value)
        assert f"{WAN} prediction {pid} succeeded but its output is unusable (expired)" in msg
        assert "Replicate removed its output an hour after it finished (completed_at" in msg
        assert f"cost ${PRICE:.4f}, paid by v" in msg and "a retry buys it once more" in msg
        job = h.ledger.get(req.cache_key())
        assert job.state == "failed" and job.cost_usd == pytest.approx(PRICE) and job.unusable["expired"]["count"] == 1
        assert server.create_count(WAN) == 1  # the direct create above; nothing bought yet
        h.chunk()  # bought again (once)
        assert server.create_count(WAN) == 2
