"""A prediction that ends without output is recorded at what Replicate bills for it
(``models.charge_for``): canceled at the deadline while running, a GPU-second model (musicgen) bills
the seconds it ran; aborted (its Cancel-After deadline passed before it started) bills nothing."""

from __future__ import annotations

import threading

import pytest

from pipeline.generation import GenerationRequest
from pipeline.models import get_model
from pipeline.providers import ProviderError
from pipeline_tests.fake_replicate import FakeReplicate
from pipeline_tests.test_replicate_faults import Harness

MUSICGEN = "meta/musicgen"


def music(h: Harness):
    req = GenerationRequest(media_type="audio", provider="replicate", model=MUSICGEN, prompt="calm strings",
                            seed=1, params={"duration_s": 8.0, "bpm": 70}, labels={"video_id": "v", "segment": "music"})
    return req, lambda: h.gen.generate(req, lambda s: h.provider.render_music(req, s))


def test_a_gpu_second_prediction_canceled_at_the_deadline_while_running_records_its_run_time(tmp_path):
    with FakeReplicate(run_seconds=0.05, render_scale=0.25) as server:
        h = Harness(tmp_path, server, deadline_s={"audio": 1.5})
        server.inject("never_finish", model=MUSICGEN)  # runs until canceled
        req, run = music(h)
        with pytest.raises(ProviderError, match="deadline; canceled it") as err:
            run()
        assert err.value.retryable is True
        (pred,) = server.predictions.values()
        assert pred.status == "canceled" and pred.started_at is not None and pred.id in server.cancels
        ran_s = pred.metrics["predict_time"]
        assert 0.5 < ran_s < 5.0
        usd = round(ran_s * get_model(MUSICGEN).price({}).usd, 6)
        assert usd > 0
        job = h.ledger.get(req.cache_key())
        assert job.state == "canceled" and job.cost_usd == pytest.approx(usd)
        (row,) = h.ledger.predictions(key=req.cache_key())
        assert row.prediction_id == pred.id and row.status == "canceled" and row.cost_usd == pytest.approx(usd)
        assert round(sum(p.cost_usd for p in h.ledger.predictions(video_id="v")), 6) == pytest.approx(usd)
        assert f"billed ${job.cost_usd:.4f}" in str(err.value)


def test_an_aborted_prediction_records_nothing(tmp_path):
    with FakeReplicate(run_seconds=0.05, render_scale=0.25) as server:
        h = Harness(tmp_path, server, deadline_s={"audio": 60.0})
        server.inject("queued", model=MUSICGEN)  # waits for hardware: never starts
        req, run = music(h)
        errors: list[BaseException] = []

        def go():
            try:
                run()
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        t = threading.Thread(target=go)
        t.start()
        assert server.wait_for(lambda: len(server.predictions) == 1, timeout=30)
        (pred,) = server.predictions.values()
        server.advance_clock(61.0)  # past its Cancel-After (60 s): the server aborts it
        server.sweep_deadlines()
        t.join(30)
        assert pred.status == "aborted" and pred.started_at is None
        (exc,) = errors
        assert isinstance(exc, ProviderError) and exc.retryable and "ended aborted without output" in str(exc) and str(exc).endswith("(not billed)")
        job = h.ledger.get(req.cache_key())
        assert job.state == "canceled" and job.cost_usd == 0
        (row,) = h.ledger.predictions(key=req.cache_key())
        assert row.status == "aborted" and row.cost_usd == 0
