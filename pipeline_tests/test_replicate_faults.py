"""Every fault of the fake Replicate server leads to the right outcome (retried and succeeded, or a
clear error), with the server's count of created predictions equal to the paid attempts expected."""

from __future__ import annotations

import logging
import time

import pytest
from PIL import Image

from pipeline import media, stages
from pipeline.generation import GenerationRequest, Generator
from pipeline.ledger import BudgetExceededError, Ledger
from pipeline.providers import ProviderError, get_provider
from pipeline.spec import parse_spec
from pipeline.store import Workspace
from pipeline.submissions import submit_spec
from pipeline_tests.fake_replicate import FakeReplicate, fake_replicate, provider_options  # noqa: F401

FLUX = "black-forest-labs/flux-schnell"
WAN = "wan-video/wan-2.2-i2v-fast"


class Harness:
    """One provider + generator on a fresh data directory, calling single generations."""

    def __init__(self, root, server: FakeReplicate, **options):
        self.root, self.server = root, server
        self.ws = Workspace.at(root)
        self.gen = Generator(self.ws)
        self.provider = get_provider("replicate", **provider_options(server, root, **options))
        self.ledger = Ledger(options.get("ledger_path") or root / "ledger.sqlite")
        self.start = root / "start.png"
        self._scratches = 0
        if not self.start.exists():
            root.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (854, 480), (40, 90, 160)).save(self.start)

    def request(self, seed: int = 1, budget: float | None = None, video: str = "v") -> GenerationRequest:
        return GenerationRequest(media_type="image", provider="replicate", model=FLUX, prompt="a fox at dawn", seed=seed,
                                 params={"width": 854, "height": 480}, labels={"video_id": video, "segment": "000"},
                                 max_cost_usd=budget)

    def scratch(self):
        self._scratches += 1
        path = self.root / f"scratch-{self._scratches}"
        path.mkdir(parents=True)
        return path

    def image(self, seed: int = 1, budget: float | None = None, video: str = "v"):
        req = self.request(seed, budget, video)
        return self.gen.generate(req, lambda s: self.provider.render_image(req, s))

    def chunk(self, seed: int = 1, budget: float | None = None):
        req = GenerationRequest(media_type="video", provider="replicate", model=WAN, prompt="the fox runs", seed=seed,
                                params={"width": 854, "height": 480, "fps": 16, "duration_s": 5.0},
                                inputs={"start_image": "0" * 64}, labels={"video_id": "v", "segment": "000"},
                                max_cost_usd=budget)
        return self.gen.generate(req, lambda s: self.provider.render_chunk(req, self.start, s))

    def stored_media(self) -> list:
        return [p for p in self.ws.media.rglob("*") if p.is_file()] if self.ws.media.exists() else []


@pytest.fixture
def h(tmp_path, fake_replicate):
    return Harness(tmp_path, fake_replicate)


def test_429_honours_retry_after_then_succeeds_with_one_paid_create(tmp_path):
    with FakeReplicate(latency=(0.005, 0.02), run_seconds=0.02) as server:  # latency drawn per request
        h = Harness(tmp_path, server)
        server.inject("rate_limit", times=2, retry_after=0.25, model=FLUX)
        started = time.monotonic()
        image = h.image()
        assert time.monotonic() - started >= 0.5  # waited Retry-After twice, not the 10 ms backoff
        assert server.create_count(FLUX) == 1 and server.create_requests == 3
        assert image.prediction_id and image.extra["create_attempts"] == 3


def test_429_that_never_clears_is_a_retryable_error_with_nothing_paid(tmp_path, fake_replicate):
    h = Harness(tmp_path, fake_replicate, max_create_attempts=3)
    fake_replicate.inject("rate_limit", times=None, retry_after=0.01)
    with pytest.raises(ProviderError, match="after 3 attempts: HTTP 429") as err:
        h.image()
    assert err.value.retryable is True
    assert fake_replicate.create_count() == 0 and fake_replicate.create_requests == 3
    assert h.stored_media() == []
    assert h.ledger.jobs("v")[0].state == "failed"  # nothing was created: the budget reservation is released
    assert h.ledger.committed_usd("v") == 0


def test_500_before_create_is_looked_up_then_created_once(h):
    h.server.inject("server_error", status=500)
    image = h.image()
    assert h.server.create_count() == 1 and h.server.create_requests == 2
    assert any(m == "GET" and p.startswith("/v1/predictions?") for m, p, _ in h.server.requests)  # looked up first
    assert image.extra["obtained_by"] == "created"


@pytest.mark.parametrize("fault, options", [
    ("server_error", {"status": 503, "after_create": True}),
    ("drop_connection", {}),
    ("hang_after_create", {"seconds": 3.0}),  # the client times out after 1.4 s (0.4 s + the 1 s sync wait)
])
def test_ambiguous_create_failures_adopt_the_prediction_instead_of_paying_again(tmp_path, fake_replicate, fault,
                                                                                options):
    h = Harness(tmp_path, fake_replicate, request_timeout_s=0.4, sync_wait_s=1)
    fake_replicate.inject(fault, model=WAN, **options)
    video = h.chunk()
    assert fake_replicate.create_count(WAN) == 1 and fake_replicate.create_requests == 1
    (created,) = fake_replicate.predictions.values()
    assert video.prediction_id == created.id and video.extra["obtained_by"] == "adopted"
    assert media.verify_video(h.gen.local_path(video)).frames == 81
    assert h.ledger.get(video.cache_key).prediction_id == created.id


def test_unreadable_prediction_list_after_an_ambiguous_create_does_not_create_blindly(tmp_path, fake_replicate):
    h = Harness(tmp_path, fake_replicate, request_timeout_s=0.2)  # lookups retry for 3 x the request timeout
    h.server.inject("drop_connection")
    h.server.inject("list_error", times=None)
    with pytest.raises(ProviderError, match="not creating another one") as err:
        h.image()
    assert err.value.retryable is True and h.server.create_count() == 1
    # The rerun (list readable again) adopts it.
    h.server.clear_faults()
    assert h.image().extra["obtained_by"] == "adopted" and h.server.create_count() == 1


def test_invalid_input_is_permanent_and_not_retried(h):
    h.server.inject("invalid_input", detail="- input.prompt: flagged by the content policy")
    with pytest.raises(ProviderError, match="HTTP 422.*content policy") as err:
        h.image()
    assert err.value.retryable is False
    assert h.server.create_requests == 1 and h.server.create_count() == 0
    assert h.ledger.jobs("v")[0].state == "failed"


def test_failed_prediction_is_a_permanent_error_with_its_message(h):
    h.server.inject("fail", error="NSFW content detected (E005)", model=WAN)
    with pytest.raises(ProviderError, match="failed: NSFW content detected") as err:
        h.chunk()
    assert err.value.retryable is False and h.server.create_count() == 1
    job = h.ledger.jobs("v")[0]
    assert job.state == "failed" and job.cost_usd == 0
    assert h.stored_media() == []
    # Retrying after a failure pays for exactly one more call.
    video = h.chunk()
    assert h.server.create_count() == 2 and video.extra["obtained_by"] == "created"


def test_aborted_prediction_is_accepted_as_terminal_and_retryable(h):
    h.server.inject("abort")
    with pytest.raises(ProviderError, match="ended aborted") as err:
        h.image()
    assert err.value.retryable is True and h.server.create_count() == 1
    assert h.ledger.jobs("v")[0].state == "canceled"


def test_prediction_that_never_finishes_is_canceled_at_the_deadline(tmp_path, fake_replicate):
    h = Harness(tmp_path, fake_replicate, deadline_s={"video": 0.4})
    fake_replicate.inject("never_finish")
    started = time.monotonic()
    with pytest.raises(ProviderError, match="did not finish within its 0.4 s deadline; canceled") as err:
        h.chunk()
    assert time.monotonic() - started < 3
    assert err.value.retryable is True and fake_replicate.create_count() == 1
    (pred,) = fake_replicate.predictions.values()
    assert fake_replicate.cancels == [pred.id] and pred.status == "canceled"
    assert h.ledger.jobs("v")[0].state == "canceled"


@pytest.mark.parametrize("fault, message", [
    ("corrupt_output", "does not decode"),
    ("expired_output", "expired or gone"),
])
def test_unusable_output_is_a_clear_error_and_its_cost_still_counts(h, fault, message):
    h.server.inject(fault, model=WAN)
    with pytest.raises(ProviderError, match=message) as err:
        h.chunk()
    assert err.value.retryable is True and h.server.create_count(WAN) == 1
    assert h.stored_media() == []  # nothing unverified reaches the store
    job = h.ledger.jobs("v")[0]
    assert job.state == "failed" and h.ledger.spent_usd("v") == pytest.approx(0.05)


def test_transient_poll_and_download_errors_are_retried_without_a_new_create(tmp_path, fake_replicate):
    h = Harness(tmp_path, fake_replicate, sync_wait_s=0)  # polled: in sync mode the create's answer has it
    h.server.inject("get_error", times=3, status=500)
    h.server.inject("download_error", times=2, status=503)
    video = h.chunk()
    assert h.server.create_count() == 1 and media.verify_video(h.gen.local_path(video)).frames == 81
    assert sum(1 for m, p, s in h.server.requests if p.startswith("/v1/predictions/") and s == 500) == 3


def test_outputs_only_come_from_allow_listed_hosts_and_within_the_size_cap(tmp_path, fake_replicate):
    h = Harness(tmp_path / "a", fake_replicate, allowed_hosts=["replicate.delivery"])
    with pytest.raises(ProviderError, match="not an allow-listed output host") as err:
        h.image(seed=1)
    assert err.value.retryable is False
    # A bare host name allows https only; the fake serves http.
    h = Harness(tmp_path / "b", fake_replicate, allowed_hosts=["127.0.0.1"])
    with pytest.raises(ProviderError, match="refusing to download from http://127.0.0.1"):
        h.image(seed=2)
    h = Harness(tmp_path / "c", fake_replicate, max_download_bytes=2000)
    with pytest.raises(ProviderError, match="2000-byte cap"):
        h.image(seed=3)
    assert fake_replicate.create_count() == 3


def test_budget_refuses_a_call_before_making_it(tmp_path, fake_replicate):
    h = Harness(tmp_path, fake_replicate)
    with pytest.raises(BudgetExceededError, match="max_cost_usd"):
        h.image(budget=0.002)  # one flux-schnell image costs $0.003
    assert fake_replicate.create_requests == 0
    h.image(seed=1, budget=0.006)
    h.image(seed=2, budget=0.006)
    with pytest.raises(BudgetExceededError):
        h.image(seed=3, budget=0.006)
    assert fake_replicate.create_count() == 2

    # Through the stages: a spec budget of $0.06 pays for the storyboard and the chunk, not the music.
    ws = Workspace.at(tmp_path / "spec")
    data = {"video_id": "tight", "title": "Tight", "duration_s": 5, "aspect_ratio": "16:9", "style": "flat",
            "music": {"prompt": "calm", "bpm": 80}, "max_cost_usd": 0.06,
            "beats": [{"prompt": "a lighthouse at night", "duration_s": 5}]}
    sub = submit_spec(ws, parse_spec(data), source="t", provider="replicate")[0]
    provider = get_provider("replicate", **provider_options(fake_replicate, ws.root))
    gen = Generator(ws)
    plan = stages.plan_video(sub, provider)
    beat = stages.plan_beat(plan, plan.beats[0], provider)
    assert beat.max_cost_usd == 0.06
    stages.render_chunks(beat, stages.render_storyboard(beat, provider, gen), provider, gen)
    with pytest.raises(BudgetExceededError, match=r"tight: refusing a stability-ai/stable-audio-2.5 call"):
        stages.render_music(plan, provider, gen)
    assert fake_replicate.create_count() == 4
    # The run-level budget (provider option) applies too; the lower one wins.
    strict = get_provider("replicate", **provider_options(fake_replicate, ws.root, max_cost_usd=0.01))
    beat2 = beat.model_copy(update={"seed": beat.seed + 1})
    with pytest.raises(BudgetExceededError):
        stages.render_storyboard(beat2, strict, gen)


def test_the_api_token_never_appears_in_logs_errors_metadata_or_files(tmp_path, fake_replicate, caplog):
    server = fake_replicate
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    h = Harness(tmp_path, server, request_timeout_s=0.4, deadline_s={"image": 0.3, "video": 20.0})
    server.inject("rate_limit", times=1, retry_after=0.01)
    server.inject("drop_connection", model=WAN)
    server.inject("get_error", times=1)
    manifests = [h.image(seed=1), h.chunk(seed=1)]
    for fault, call in (("fail", h.image), ("never_finish", h.image), ("corrupt_output", h.chunk),
                        ("invalid_input", h.image)):
        server.inject(fault)
        with pytest.raises(ProviderError) as err:
            call(seed=10 + len(errors))
        errors.append(f"{err.value!s} {err.value!r}")
    # A wrong token: the error must not echo it either.
    bad = get_provider("replicate", **provider_options(server, tmp_path / "bad", api_token="r8_WRONGwrongWRONG123"))
    req = GenerationRequest(media_type="image", provider="replicate", model=FLUX, prompt="x", params={"width": 64,
                                                                                                     "height": 64})
    with pytest.raises(ProviderError, match="HTTP 401") as err:
        bad.render_image(req, tmp_path)
    errors.append(f"{err.value!s} {err.value!r}")
    assert server.auth_failures == 1

    haystacks = [caplog.text, *errors, repr(h.provider), *(m.model_dump_json() for m in manifests)]
    assert len(caplog.text) > 1000  # the logs did record the calls
    for text in haystacks:
        assert server.token not in text and "r8_WRONGwrongWRONG123" not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert server.token.encode() not in data and b"r8_WRONGwrongWRONG123" not in data, path


def test_creates_send_the_polling_deadline_as_cancel_after(tmp_path, fake_replicate):
    from pipeline.providers.replicate.client import cancel_after

    assert [cancel_after(s) for s in (1800, 600, 3600, 90, 45.2, 0.4)] == ["30m", "10m", "1h", "90s", "46s", "1s"]
    h = Harness(tmp_path, fake_replicate, deadline_s={"image": 90.0, "video": 1800.0})
    for manifest, seconds in ((h.image(), 90), (h.chunk(), 1800)):
        pred = fake_replicate.predictions[manifest.prediction_id]
        assert pred.deadline_at - pred.created_at == pytest.approx(seconds)


def test_a_prediction_nobody_polls_ends_at_its_cancel_after_deadline(fake_replicate):
    import httpx

    server = fake_replicate
    server.inject("never_finish")
    r = httpx.post(f"{server.base_url}/v1/models/{FLUX}/predictions", json={"input": {"prompt": "x"}}, timeout=60,
                   headers={"Authorization": f"Bearer {server.token}", "Cancel-After": "5s"})  # the minimum
    assert r.status_code == 201
    pred = server.predictions[r.json()["id"]]
    assert server.wait_for(lambda: pred.status in ("canceled", "aborted"), timeout=120)
    assert server.deadline_cancels == [pred.id] and server.cancels == []  # the server did it, not a client
    assert pred.completed_at - pred.created_at >= 5.0
    bad = httpx.post(f"{server.base_url}/v1/models/{FLUX}/predictions", json={"input": {"prompt": "x"}}, timeout=60,
                     headers={"Authorization": f"Bearer {server.token}", "Cancel-After": "soon"})
    assert bad.status_code == 422
