"""The fake Replicate server behaves like Replicate where tests depend on it: data removal after the
retention window, official models echoing another model/version (a knob), ``Cancel-After`` deadlines
(aborted vs canceled, and what each is charged), sliding-window rate limits with Replicate's 429,
``Prefer: wait``, a list with stable cursors that includes web predictions, and the control endpoints
of a server in its own process. (Schema conformance: test_replicate_conformance.py.)"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from pipeline_tests.fake_replicate import MUSICGEN_VERSION, FakeReplicate, FakeServerProcess
from pipeline_tests.fake_replicate.limits import RateLimiter, parse_duration

FLUX = "black-forest-labs/flux-schnell"
LLAMA = "meta/meta-llama-3-70b-instruct"


class Client:
    """Authenticated calls to a fake server."""

    def __init__(self, server):
        self.server = server
        self.http = httpx.Client(base_url=server.base_url, timeout=60,
                                 headers={"Authorization": f"Bearer {server.token}"})

    def create(self, ref: str = FLUX, inp: dict | None = None, **headers: str) -> httpx.Response:
        return self.http.post(f"/v1/models/{ref}/predictions", json={"input": inp or {"prompt": "a fox"}},
                              headers=headers)

    def get(self, pid: str) -> dict:
        return self.http.get(f"/v1/predictions/{pid}").json()

    def done(self, pid: str, timeout: float = 30) -> dict:
        end = time.monotonic() + timeout
        while (p := self.get(pid))["status"] not in ("succeeded", "failed", "canceled", "aborted"):
            assert time.monotonic() < end, p
            time.sleep(0.02)
        return p


@pytest.fixture
def server():
    with FakeReplicate(run_seconds=0.05, render_scale=0.1) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = Client(server)
    yield c
    c.http.close()


def test_api_predictions_lose_their_data_an_hour_after_they_finish(server, client):
    pid = client.create().json()["id"]
    done = client.done(pid)
    assert done["output"] and done["input"] == {"prompt": "a fox"} and done["logs"]
    (web,) = server.seed_predictions(1, source="web", ago_s=7200)
    server.advance_clock(3599)
    assert client.get(pid)["data_removed"] is False
    server.advance_clock(2)  # 1 h (the real retention) after completion
    gone = client.get(pid)
    assert gone["data_removed"] is True and gone["output"] is None and gone["input"] == {} and gone["logs"] == ""
    assert gone["metrics"] == done["metrics"] and gone["status"] == "succeeded"  # what it cost stays
    listed = {p["id"]: p for p in client.http.get("/v1/predictions").json()["results"]}
    assert listed[pid]["data_removed"] is True and listed[web]["data_removed"] is False  # web ones are kept
    assert server.stats()["predictions"][-1]["data_removed"] is True


def test_retention_is_a_knob(server, client):
    assert server.configure(retention_s=0)["retention_s"] == 0
    pid = client.create().json()["id"]
    assert client.done(pid)["data_removed"] is True  # removed as soon as it finished
    server.configure(retention_s=None)
    server.advance_clock(10 * 86400)
    assert client.get(pid)["data_removed"] is False


def test_official_models_echo_the_model_asked_unless_the_knob_is_on(monkeypatch):
    monkeypatch.delenv("FAKE_REPLICATE_OFFICIAL_ECHO", raising=False)
    with FakeReplicate(run_seconds=0.05) as server:
        assert server.official_echo is True  # the default: as Replicate does (OFFICIAL_ECHO_DEFAULT)
    with FakeReplicate(run_seconds=0.05, render_scale=0.1, official_echo=False) as server:
        c = Client(server)
        p = c.create().json()
        assert (p["model"], p["version"]) == (FLUX, "hidden") and server.config()["official_echo"] is False
        server.configure(official_echo=True)
        p = c.create(inp={"prompt": "again"}).json()
        assert p["model"] == "replicate-internal/flux-schnell" and re.fullmatch(r"dp-[0-9a-f]{32}", p["version"])
        llama = c.create(LLAMA, {"prompt": "plan"}).json()
        assert llama["model"] == "replicate/lifeboat-70b"
        assert c.get(p["id"])["model"] == p["model"]  # every read shows the same
        music = c.http.post("/v1/predictions", json={"version": MUSICGEN_VERSION, "input": {"prompt": "x"}}).json()
        assert (music["model"], music["version"]) == ("meta/musicgen", MUSICGEN_VERSION)  # pinned: no echo
        assert server.create_count(FLUX) == 2  # the fake still counts by the model asked
        c.http.close()
    monkeypatch.setenv("FAKE_REPLICATE_OFFICIAL_ECHO", "1")
    with FakeReplicate(run_seconds=0.05) as server:
        assert server.official_echo is True
    monkeypatch.setenv("FAKE_REPLICATE_OFFICIAL_ECHO", "0")
    with FakeReplicate(run_seconds=0.05) as server:
        assert server.official_echo is False
    with FakeReplicate(run_seconds=0.05, official_echo=False) as server:
        assert server.official_echo is False


def test_cancel_after_aborts_a_prediction_that_never_started_and_charges_nothing(server, client):
    server.inject("queued")  # waits for hardware: stays starting
    p = client.create(**{"Cancel-After": "5m"}).json()
    assert p["deadline"] and p["status"] == "starting"
    server.advance_clock(299)
    assert client.get(p["id"])["status"] == "starting"
    server.advance_clock(2)
    aborted = client.get(p["id"])
    assert aborted["status"] == "aborted" and "predict_time" not in aborted["metrics"]
    assert server.deadline_cancels == [p["id"]] and server.cancels == []


def test_cancel_after_cancels_a_running_prediction_and_charges_the_time_it_ran(server, client):
    server.inject("never_finish")
    p = client.create(**{"Cancel-After": "1h30m"}).json()
    assert server.wait_for(lambda: server.predictions[p["id"]].status == "processing")
    server.advance_clock(5401)
    canceled = client.get(p["id"])
    assert canceled["status"] == "canceled" and canceled["metrics"]["predict_time"] >= 5400
    assert server.deadline_cancels == [p["id"]]


def test_a_user_cancel_charges_only_a_started_prediction(server, client):
    server.inject("queued")
    waiting = client.create(inp={"prompt": "queued"}).json()
    canceled = client.http.post(f"/v1/predictions/{waiting['id']}/cancel").json()
    assert canceled["status"] == "canceled" and "predict_time" not in canceled["metrics"]
    server.inject("never_finish")
    running = client.create(inp={"prompt": "running"}).json()
    assert server.wait_for(lambda: server.predictions[running["id"]].status == "processing")
    canceled = client.http.post(f"/v1/predictions/{running['id']}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["metrics"]["predict_time"] >= 0


def test_cancel_after_syntax_and_minimum():
    assert [parse_duration(v) for v in ("30s", "5m", "1h30m45s", "30", "2h", "1.5s")] == [30, 300, 5445, 30, 7200, 1.5]
    for bad in ("1d", "-5m", "5m1h", "soon", "", "1h30"):
        with pytest.raises(ValueError, match="Cancel-After"):
            parse_duration(bad)
    with FakeReplicate(run_seconds=0.05, render_scale=0.1) as server:  # default: the documented minimum, 5 s
        c = Client(server)
        assert server.config()["min_cancel_after_s"] == 5
        r = c.create(**{"Cancel-After": "4s"})
        assert r.status_code == 422 and "minimum is 5s" in r.json()["detail"]
        assert c.create(**{"Cancel-After": "5s"}).status_code == 201
        server.configure(min_cancel_after_s=0)  # any positive duration
        assert c.create(**{"Cancel-After": "1s"}).status_code == 201
        assert c.create(**{"Cancel-After": "0s"}).status_code == 422
        c.http.close()


def test_rate_limits_are_sliding_windows_per_kind_with_replicates_429(server, client):
    server.configure(create_limit_per_min=3, read_limit_per_min=5)
    for i in range(3):
        assert client.create(inp={"prompt": f"p{i}"}).status_code == 201
        server.advance_clock(10)
    r = client.create(inp={"prompt": "p3"})
    assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "Request was throttled. Your rate limit resets in ~30s."  # the first left at 60 s
    headers = ("ratelimit-remaining", "ratelimit-reset", "retry-after")
    assert tuple(r.headers[h] for h in headers) == ("0", "30", "30")
    assert server.create_count() == 3 and server.create_requests == 4 and server.stats()["throttled"] == 1
    for _ in range(5):  # reads have their own limit
        assert client.http.get("/v1/predictions").status_code == 200
    assert client.http.get("/v1/predictions").status_code == 429
    server.advance_clock(30)  # the first create leaves the window: one more is allowed
    assert client.create(inp={"prompt": "p4"}).status_code == 201
    assert client.create(inp={"prompt": "p5"}).status_code == 429
    server.configure(create_limit_per_min=None, read_limit_per_min=None)
    assert all(client.create(inp={"prompt": f"q{i}"}).status_code == 201 for i in range(5))


def test_rate_limiter_counts_only_admitted_requests():
    limiter = RateLimiter(2, window_s=60)
    assert limiter.hit(0.0) == (True, 1, 60.0) and limiter.hit(1.0)[:2] == (True, 0)
    assert limiter.hit(2.0) == (False, 0, 58.0) and limiter.hit(59.0) == (False, 0, 1.0)
    assert limiter.hit(60.0)[0] is True and limiter.hit(60.5)[0] is False
    assert RateLimiter(None).hit(0.0)[0] is True


def test_the_injected_rate_limit_fault_answers_like_the_rate_limit(server, client):
    server.inject("rate_limit", retry_after=0.25)
    r = client.create()
    assert r.status_code == 429 and r.headers["retry-after"] == r.headers["ratelimit-reset"] == "0.25"
    assert r.json()["detail"] == "Request was throttled. Your rate limit resets in ~1s." and server.create_count() == 0


def test_prefer_wait_holds_the_create_until_done_or_the_wait_ends(server, client):
    r = client.create(Prefer="wait=10")
    assert r.status_code == 201 and r.json()["status"] == "succeeded" and r.json()["output"]
    server.inject("fail")
    r = client.create(inp={"prompt": "fails"}, Prefer="wait")
    assert r.status_code == 201 and r.json()["status"] == "failed"
    server.inject("hold")
    started = time.monotonic()
    r = client.create(inp={"prompt": "held"}, Prefer="wait=1")
    assert r.status_code == 202 and r.json()["status"] in ("starting", "processing")
    assert time.monotonic() - started >= 0.95
    server.release()
    for bad in ("wait=0", "wait=61", "wait=x"):
        assert client.create(inp={"prompt": bad}, Prefer=bad).status_code == 422
    assert client.create(inp={"prompt": "async"}, Prefer="respond-async").status_code == 201  # other preferences


def test_list_includes_web_and_every_model_and_its_cursors_are_stable(server, client):
    web = server.seed_predictions(3, source="web", model=LLAMA, ago_s=50)
    server.seed_predictions(150, source="api", ago_s=10, spacing_s=0.1)
    first = client.http.get("/v1/predictions").json()
    for i in range(5):  # new predictions while paging: the next page neither repeats nor skips
        assert client.create(inp={"prompt": f"new {i}"}).status_code == 201
    second = client.http.get(first["next"]).json()
    ids = [p["id"] for p in first["results"] + second["results"]]
    assert len(ids) == len(set(ids)) == 153 and second["next"] is None
    assert {p["model"] for p in second["results"]} == {FLUX, LLAMA} and set(web) <= set(ids)
    newest = client.http.get(second["previous"]).json()
    assert [p["id"] for p in newest["results"]] == [p["id"] for p in first["results"]]
    assert newest["previous"]  # the five made meanwhile are newer still
    assert client.http.get("/v1/predictions", params={"cursor": "garbage"}).status_code == 400


def test_models_say_whether_they_are_official_with_their_input_schema(client):
    m = client.http.get(f"/v1/models/{FLUX}").json()
    schema = m["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"]
    assert m["is_official"] is True and schema["required"] == ["prompt"] and "aspect_ratio" in schema["properties"]
    wan = client.http.get("/v1/models/wan-video/wan-2.2-i2v-fast").json()["latest_version"]["openapi_schema"]
    assert {"num_frames", "frames_per_second", "resolution"} <= set(wan["components"]["schemas"]["Input"]["properties"])
    music = client.http.get("/v1/models/meta/musicgen").json()
    assert music["is_official"] is False and music["latest_version"]["id"] == MUSICGEN_VERSION


def test_files_keep_their_name_type_and_metadata(client):
    r = client.http.post("/v1/files", files={"content": ("blob", b"\x89PNG....", "application/octet-stream")},
                         data={"filename": "start.png", "type": "image/png", "metadata": '{"video": "v1"}'})
    f = r.json()
    assert r.status_code == 201 and (f["name"], f["content_type"], f["metadata"]) == ("start.png", "image/png",
                                                                                      {"video": "v1"})
    assert client.http.post("/v1/files", files={"content": ("a", b"x")}, data={"metadata": "{"}).status_code == 400


def test_a_server_process_is_configured_over_its_control_endpoints():
    with FakeServerProcess("--run-seconds", "0.05", "--render-scale", "0.1", "--official-echo", "on",
                           "--create-limit", "2", "--retention", "60") as server:
        c = Client(server)
        config = server.configure(read_limit_per_min=1000)
        assert config["official_echo"] is True and config["create_limit_per_min"] == 2 and config["retention_s"] == 60
        p = c.create().json()
        assert p["model"] != FLUX
        c.done(p["id"])
        assert server.advance_clock(61)["clock_offset_s"] == 61
        assert c.get(p["id"])["data_removed"] is True
        (web,) = server.seed_predictions(1, source="web")
        assert c.get(web)["source"] == "web"
        # The first create left the window with the clock: two more are allowed, then 429.
        assert [c.create(inp={"prompt": str(i)}).status_code for i in range(3)] == [201, 201, 429]
        assert server.stats()["throttled"] == 1
        r = httpx.post(f"{server.base_url}/_fake/config", json={"nope": 1}, timeout=60)
        assert r.status_code == 422 and "nope" in r.json()["detail"]
        c.http.close()
