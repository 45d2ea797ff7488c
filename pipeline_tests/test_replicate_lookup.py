"""Looking up an earlier create (after an ambiguous failure or a crash) matches what Replicate
really echoes: official models show another model name and a ``dp-``/``hidden`` version, so the
match is on the input (normalized) and a creation-time window, not on the model string."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.models import get_model
from pipeline.providers.replicate.client import parse_time
from pipeline_tests.fake_replicate import MUSICGEN_VERSION, FakeReplicate
from pipeline_tests.test_replicate_faults import FLUX, WAN, Harness

LLAMA = "meta/meta-llama-3-70b-instruct"


def pred(model: str, version: str, inp: dict) -> dict:
    return {"id": "p1", "model": model, "version": version, "input": inp, "status": "succeeded"}


def test_version_hash():
    from pipeline.providers.replicate.predictions import is_version_hash

    assert is_version_hash(MUSICGEN_VERSION)
    assert not any(is_version_hash(v) for v in ("hidden", "dp-" + "a" * 32, "", None, MUSICGEN_VERSION[:-1]))


def test_matches_ignores_the_official_echo_and_compares_only_real_versions(tmp_path):
    with FakeReplicate() as server:
        m = Harness(tmp_path, server).provider.predictions
    inp = {"prompt": "a fox"}
    llama, flux = get_model(LLAMA), get_model(FLUX)
    assert m.matches(pred("replicate/lifeboat-70b", "dp-" + "0" * 32, inp), llama, inp)  # was False: exact model
    assert m.matches(pred("replicate-internal/flux-schnell", "hidden", inp), flux, inp)
    assert not m.matches(pred("replicate/lifeboat-70b", "hidden", {"prompt": "a hen"}), llama, inp)
    assert not m.matches(pred(WAN, "hidden", inp), flux, inp)  # another model of the registry
    assert not m.matches({**pred(FLUX, "hidden", {}), "data_removed": True}, flux, inp)  # nothing to compare
    pinned = [x for x in (get_model("meta/musicgen"),) if x.version]
    for musicgen in pinned:
        assert m.matches(pred("meta/musicgen", musicgen.version, inp), musicgen, inp)
        assert m.matches(pred("meta/musicgen", "hidden", inp), musicgen, inp)  # not a hash: not compared
        assert not m.matches(pred("meta/musicgen", "f" * 64, inp), musicgen, inp)  # another real version


@pytest.mark.parametrize("official_echo", [False, True])
def test_an_ambiguous_create_is_adopted_whatever_the_official_echo(tmp_path, official_echo):
    with FakeReplicate(run_seconds=0.02, render_scale=0.25, official_echo=official_echo) as server:
        h = Harness(tmp_path, server, request_timeout_s=0.4)
        server.inject("drop_connection", model=WAN)
        video = h.chunk()
        (created,) = server.predictions.values()
        assert server.prediction_json(created)["model"] == ("replicate-internal/wan-2.2-i2v-fast" if official_echo
                                                           else WAN)
        assert video.prediction_id == created.id and video.extra["obtained_by"] == "adopted"
        assert server.create_count(WAN) == 1 and server.create_requests == 1


def test_the_lookup_lists_a_bounded_creation_window(tmp_path):
    with FakeReplicate(run_seconds=0.02, render_scale=0.25) as server:
        h = Harness(tmp_path, server, request_timeout_s=0.4, lookup_skew_s=120.0)
        server.inject("drop_connection", model=FLUX)
        image = h.image()
        assert image.extra["obtained_by"] == "adopted"
        lists = [p for m, p, _ in server.requests if m == "GET" and p.startswith("/v1/predictions?")]
        query = parse_qs(urlsplit(lists[0]).query)
        job = h.ledger.get(image.cache_key)
        after, before = parse_time(query["created_after"][0]), parse_time(query["created_before"][0])
        assert after == pytest.approx(job.intent_at - 120.0, abs=1e-3)
        assert before is not None and 0 < before - job.intent_at < 120.0 + 30.0


def test_a_matching_prediction_outside_the_window_is_not_adopted(tmp_path):
    with FakeReplicate(run_seconds=0.02, render_scale=0.25) as server:
        h = Harness(tmp_path, server, lookup_skew_s=5.0)
        inp = {"prompt": "a fox"}
        server.seed_predictions(1, source="api", model=FLUX, input=inp, ago_s=-600.0)  # "created" 10 min ahead
        server.seed_predictions(1, source="api", model=FLUX, input=inp, ago_s=600.0)  # 10 min before the intent
        assert h.provider.predictions.lookup(get_model(FLUX), inp, since=time.time()) is None
        (ok,) = server.seed_predictions(1, source="api", model=FLUX, input=inp, ago_s=1.0)
        assert h.provider.predictions.lookup(get_model(FLUX), inp, since=time.time()) == ok
