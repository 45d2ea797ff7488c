"""Sync mode (``sync_wait_s``, ``Prefer: wait=n``): a create is held until its prediction ends or n
seconds pass. One that ends within the wait is the create's answer -- no read of it, seen at once,
handled exactly like a polled one (ledger, cost, verification); a longer one is polled afterwards.
The held request's read timeout exceeds the wait; 0 sends no ``Prefer``; a 429 is retried as
always; a process killed (or a connection dropped) while the create is held pays once and the
prediction is adopted by lookup; the ledger lease is renewed while the create is held."""

from __future__ import annotations

import sys
import threading
import time

import httpx
import pytest

from pipeline import media
from pipeline.providers import get_provider
from pipeline.providers.replicate.client import ReplicateApi
from pipeline_tests.fake_replicate import FakeReplicate
from pipeline_tests.test_replicate_faults import FLUX, WAN, Harness

ELSEWHERE = "other-host.example:4242:777"  # another host's process: it may take a job only once its lease lapses


class Recording(httpx.BaseTransport):
    """A real HTTP transport that keeps every request it sends (method, path, headers)."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)

    def creates(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.path.endswith("/predictions")]


def reads_of(server: FakeReplicate, pid: str) -> int:
    """GETs of ``/v1/predictions/{pid}`` the server answered (polls by id)."""
    return sum(m == "GET" and p == f"/v1/predictions/{pid}" for m, p, _ in server.requests)


def lookups(server: FakeReplicate) -> int:
    return sum(m == "GET" and p.startswith("/v1/predictions?") for m, p, _ in server.requests)


def test_a_prediction_that_ends_within_the_wait_is_the_creates_answer_and_is_never_read(tmp_path):
    with FakeReplicate(run_seconds=0.3, render_scale=0.25) as server:
        h = Harness(tmp_path, server, sync_wait_s=10)
        image = h.image()
        pid = image.prediction_id
        assert reads_of(server, pid) == 0 and lookups(server) == 0  # no poll, no list: the answer was enough
        assert server.create_count() == 1 and server.create_requests == 1
        assert server.predictions[pid].status == "succeeded"
    t = image.extra["timings_s"]
    # completed_at (the fake's clock) -> the provider had it: no poll interval in between.
    assert t["seen_late_s"] < 0.5, t
    assert t["create_s"] >= 0.3  # held while it ran
    job = h.ledger.get(image.cache_key)  # the id was recorded and the job closed as for a polled one
    assert job.state == "succeeded" and job.prediction_id == pid and job.cost_usd == image.cost_usd > 0
    (record,) = h.ledger.predictions(key=image.cache_key)
    assert record.prediction_id == pid and record.status == "succeeded" and not record.adopted
    assert image.extra["obtained_by"] == "created" and image.extra["create_attempts"] == 1


def test_sync_and_polled_chunks_are_handled_identically(tmp_path):
    results = {}
    for wait in (10, 0):
        with FakeReplicate(run_seconds=0.2, render_scale=0.25) as server:
            h = Harness(tmp_path / f"wait-{wait}", server, sync_wait_s=wait)
            video = h.chunk()
            results[wait] = (video, reads_of(server, video.prediction_id), h.gen.local_path(video))
    (synced, sync_reads, sync_file), (polled, poll_reads, poll_file) = results[10], results[0]
    assert sync_reads == 0 and poll_reads >= 1
    assert synced.cost_usd == polled.cost_usd > 0
    assert media.verify_video(sync_file).frames == media.verify_video(poll_file).frames == 81
    same = {k for k in polled.extra if k != "timings_s"}
    assert same == {k for k in synced.extra if k != "timings_s"}
    for k in ("billed_units", "billed_unit", "price_usd", "price_source", "obtained_by", "create_attempts"):
        assert synced.extra[k] == polled.extra[k], k


def test_sync_mode_sees_the_end_sooner_than_polling_under_the_same_conditions(tmp_path):
    # Production polling (1 s, x1.5, 2 s cap) on a 1.2 s prediction: reads at 0, 1 and 2.5 s see the
    # end ~1 s late; the held create answers when it ends. Same machine, same load, same fake.
    late = {}
    for wait in (10, 0):
        with FakeReplicate(run_seconds=1.2, render_scale=0.25) as server:
            h = Harness(tmp_path / f"wait-{wait}", server, sync_wait_s=wait, poll_interval_s=1.0,
                        max_poll_interval_s=2.0)
            late[wait] = h.image().extra["timings_s"]["seen_late_s"]
    assert late[10] < late[0], late
    assert late[10] < 0.5, late


def test_a_prediction_longer_than_the_wait_is_polled_afterwards(tmp_path):
    with FakeReplicate(run_seconds=0.05, render_scale=0.25) as server:
        server.inject("slow", model=FLUX, seconds=2.5)
        h = Harness(tmp_path, server, sync_wait_s=1)
        image = h.image()
        pid = image.prediction_id
        assert server.predictions[pid].status == "succeeded" and server.create_count() == 1
        assert reads_of(server, pid) >= 1 and lookups(server) == 0  # polled, and not mistaken for a lost create
    t = image.extra["timings_s"]
    assert t["create_s"] >= 0.9 and t["poll_s"] > 0.5  # held ~1 s (answered 202, processing), then polled
    assert h.ledger.get(image.cache_key).state == "succeeded"


def test_prefer_header_and_the_held_creates_read_timeout(tmp_path):
    with FakeReplicate(run_seconds=1.5, render_scale=0.25) as server:
        off, on, capped = Recording(), Recording(), Recording()
        Harness(tmp_path / "off", server, sync_wait_s=0, transport=off).image(seed=1)
        # The request timeout (0.5 s) is shorter than the prediction (1.5 s): the held create still
        # gets its answer (read timeout = request timeout + wait), not a timeout and a lookup.
        image = Harness(tmp_path / "on", server, sync_wait_s=5, request_timeout_s=0.5, transport=on).image(seed=2)
        Harness(tmp_path / "capped", server, sync_wait_s=60, deadline_s=3.0, transport=capped).image(seed=3)
        assert server.create_requests == 3 and server.create_count() == 3 and lookups(server) == 0
        assert reads_of(server, image.prediction_id) == 0
    (post,) = off.creates()
    assert "prefer" not in post.headers and post.extensions["timeout"]["read"] == 2.0  # provider_options' 2 s
    (post,) = on.creates()
    assert post.headers["Prefer"] == "wait=5" and post.extensions["timeout"]["read"] == 5.5
    (post,) = capped.creates()
    assert post.headers["Prefer"] == "wait=3" and post.headers["Cancel-After"] == "5s"  # never held past the deadline


def test_an_answer_with_files_inlined_as_data_uris_is_read_by_id_instead(tmp_path, monkeypatch):
    # Replicate has answered sync creates with output files as data: URIs; the downloader takes
    # allow-listed https URLs only, so such an answer is not used: the prediction is read by id.
    create = ReplicateApi.create

    def inlining(self, *args, **kwargs):
        pred = create(self, *args, **kwargs)
        return {**pred, "output": ["data:image/webp;base64,UklGRg=="]} if pred["status"] == "succeeded" else pred

    monkeypatch.setattr(ReplicateApi, "create", inlining)
    with FakeReplicate(run_seconds=0.1, render_scale=0.25) as server:
        h = Harness(tmp_path, server, sync_wait_s=10)
        image = h.image()
        assert reads_of(server, image.prediction_id) == 1 and server.create_count() == 1
    assert h.ledger.get(image.cache_key).state == "succeeded"


@pytest.mark.parametrize("bad", [-1, 61, 2.5])
def test_sync_wait_is_whole_seconds_from_0_to_60(tmp_path, bad):
    with pytest.raises(ValueError, match="sync_wait_s"):
        get_provider("replicate", workspace_root=tmp_path, sync_wait_s=bad)


def test_a_429_on_a_sync_create_waits_and_retries_with_one_paid_create(tmp_path):
    with FakeReplicate(run_seconds=0.2, render_scale=0.25) as server:
        server.inject("rate_limit", retry_after=0.3)
        rec = Recording()
        h = Harness(tmp_path, server, sync_wait_s=10, transport=rec)
        began = time.monotonic()
        image = h.image()
        assert time.monotonic() - began >= 0.3  # the 429's wait was honoured
        assert server.create_count() == 1 and server.create_requests == 2 and lookups(server) == 0
        assert reads_of(server, image.prediction_id) == 0
    assert [r.headers["Prefer"] for r in rec.creates()] == ["wait=10", "wait=10"]
    assert image.extra["create_attempts"] == 2


def test_a_connection_dropped_while_the_create_is_held_is_adopted_not_paid_twice(tmp_path):
    with FakeReplicate(run_seconds=0.2, render_scale=0.25) as server:
        server.inject("hang_after_create", model=WAN, seconds=1.0)  # creates, holds the answer, drops it
        h = Harness(tmp_path, server, sync_wait_s=10, request_timeout_s=2.0)
        video = h.chunk()
        assert server.create_count(WAN) == 1 and server.create_requests == 1
        (created,) = server.predictions.values()
    assert video.prediction_id == created.id and video.extra["obtained_by"] == "adopted"
    assert h.ledger.get(video.cache_key).prediction_id == created.id


def test_the_ledger_lease_is_renewed_while_the_create_is_held(tmp_path):
    # A 0.6 s lease (renewed every 0.2 s by the lease thread) and a create held ~2.5 s: another
    # host's process trying to claim the job meanwhile finds it busy, well after the first lease ran out.
    with FakeReplicate(run_seconds=0.05, render_scale=0.25) as server:
        server.inject("slow", model=FLUX, seconds=2.5)
        h = Harness(tmp_path, server, sync_wait_s=10, lease_s=0.6)
        key = h.request().cache_key()
        out: dict = {}
        worker = threading.Thread(target=lambda: out.update(image=h.image()))
        worker.start()
        try:
            assert server.wait_for(lambda: server.create_count() == 1, timeout=30)
            job = h.ledger.get(key)
            assert job is not None and job.state == "intent" and job.prediction_id is None  # held: no id yet
            time.sleep(1.5)  # 2.5 leases
            assert not any(m == "POST" for m, _, _ in server.requests)  # still held
            other = h.ledger.begin(key, provider="replicate", model=FLUX, video_id="v", estimate_usd=0.0,
                                   owner=ELSEWHERE, lease_s=0.6)
            assert other.claim == "busy" and other.owner != ELSEWHERE
            assert other.lease_until > time.time()
        finally:
            worker.join(60)
        image = out["image"]
        assert server.create_count() == 1 and reads_of(server, image.prediction_id) == 0
    job = h.ledger.get(key)
    assert job.state == "succeeded" and job.owner != ELSEWHERE and job.attempts == 1


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_while_the_sync_create_is_held_the_rerun_adopts_the_prediction(tmp_path):
    from pipeline_tests.test_replicate_resume import _kill, _setup, _wan_job, resume_adopts

    with FakeReplicate(run_seconds=0.05, render_scale=0.25) as server:
        server.inject("hold", model=WAN)  # the chunk runs until released: its create stays held
        ws, proc = _setup(tmp_path, server, sync_wait_s=60)
        try:
            assert server.wait_for(lambda: server.create_count(WAN) == 1, timeout=60)
            time.sleep(0.3)
            job = _wan_job(ws)
            assert job is not None and job.state == "intent" and job.prediction_id is None
            assert not any(m == "POST" and "wan" in p for m, p, _ in server.requests)  # not answered yet
        finally:
            logs = _kill(proc)
        (pred,) = [p for p in server.predictions.values() if p.model == WAN]
        server.release()

        resume_adopts(ws, server, pred, logs)
