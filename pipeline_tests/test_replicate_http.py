"""The replicate provider's HTTP layer as the real API answers: 429s as Replicate sends them today
(``ratelimit-reset``, the "resets in ~30s" detail), ``Cancel-After`` within the API's format and
minimum, per-kind deadlines and the read budget from the resource, a plain httpx client (no
replicate-library internals) that never sends the token to another origin, and the package's
module sizes. Each request is answered by an ``httpx.MockTransport`` that records it."""

from __future__ import annotations

import ast
import email.utils
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

import pipeline.providers.replicate as package
from pipeline.providers.replicate import files
from pipeline.definitions import build_definitions
from pipeline.generation import GenerationRequest
from pipeline.providers import ProviderError, get_provider

TOKEN = "r8_HttpTestToken0123456789abcdef"
BASE = "https://api.replicate.test"
THROTTLED = {"detail": "Request was throttled. Your rate limit resets in ~30s."}


class Api:
    """A scripted Replicate API: ``creates`` and ``gets`` are lists of responses (the last one
    repeats); every request is recorded with its monotonic time."""

    def __init__(self, creates: list[httpx.Response], gets: list[httpx.Response]):
        self.creates, self.gets = creates, gets
        self.requests: list[tuple[float, httpx.Request]] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append((time.monotonic(), request))
            queue = self.creates if request.method == "POST" else self.gets
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def times(self, method: str) -> list[float]:
        return [t for t, r in self.requests if r.method == method]


def prediction(status: str, **extra) -> dict:
    return {"id": "p1", "model": "black-forest-labs/flux-schnell", "version": "hidden", "status": status,
            "input": {"prompt": "x"}, "output": None, "error": None, "logs": "", "metrics": {},
            "created_at": "2026-11-21T10:00:00.000000Z", "urls": {"get": f"{BASE}/v1/predictions/p1"}, **extra}


def created() -> httpx.Response:
    return httpx.Response(201, json=prediction("starting"))


def failed() -> httpx.Response:
    return httpx.Response(200, json=prediction("failed", error="scripted end"))


def throttled(reset: str = "1") -> httpx.Response:
    return httpx.Response(429, json=THROTTLED, headers={"ratelimit-remaining": "0", "ratelimit-reset": reset})


def provider_for(api: Api, tmp_path: Path, **options):
    defaults = {"api_token": TOKEN, "base_url": BASE, "workspace_root": tmp_path, "transport": httpx.MockTransport(api),
                "poll_interval_s": 0.02, "max_poll_interval_s": 0.1, "backoff_initial_s": 0.01, "max_backoff_s": 0.2,
                "request_timeout_s": 2.0, "deadline_s": 20.0}
    return get_provider("replicate", **{**defaults, **options})


def image_request(seed: int = 1) -> GenerationRequest:
    return GenerationRequest(media_type="image", provider="replicate", model="black-forest-labs/flux-schnell",
                             prompt="a fox", seed=seed, params={"width": 64, "height": 64}, labels={"video_id": "v"})


def test_a_throttled_create_waits_for_ratelimit_reset_as_replicate_answers_today(tmp_path):
    api = Api(creates=[throttled("1"), created()], gets=[failed()])
    provider = provider_for(api, tmp_path)  # 10 ms backoff, 0.2 s cap: only the header can make it wait 1 s
    with pytest.raises(ProviderError, match="failed: scripted end"):
        provider.render_image(image_request(), tmp_path)
    first, second = api.times("POST")
    assert 1.0 <= second - first < 3.0


def test_a_throttled_poll_pauses_reads_until_ratelimit_reset(tmp_path):
    api = Api(creates=[created()], gets=[throttled("1"), failed()])
    provider = provider_for(api, tmp_path)
    with pytest.raises(ProviderError, match="failed: scripted end"):
        provider.render_image(image_request(), tmp_path)
    first, second = api.times("GET")
    assert 1.0 <= second - first < 3.0


def test_the_wait_a_429_names_comes_from_its_headers_else_its_detail():
    from pipeline.providers.replicate.ratelimit import detail_seconds, retry_after_s

    def answer(headers=None, body=THROTTLED):
        return httpx.Response(429, json=body, headers=headers or {})

    now = time.time()
    assert retry_after_s(answer({"ratelimit-reset": "7", "ratelimit-remaining": "0"})) == 7.0
    assert retry_after_s(answer()) == 30.0  # today's body alone
    assert retry_after_s(answer(body={"detail": "Request was throttled. Expected available in 1 second."})) == 1.0
    assert retry_after_s(answer({"Retry-After": "3", "ratelimit-reset": "12"})) == 12.0  # the longer wait
    date = email.utils.formatdate(now + 20, usegmt=True)
    assert 18.0 <= retry_after_s(answer({"Retry-After": date}), now=now) <= 21.0
    assert retry_after_s(answer(body={"detail": "slow down"})) is None
    assert detail_seconds("Your rate limit resets in ~2m.") == 120.0


def test_the_read_budget_spaces_reads_and_a_pause_stops_them():
    from pipeline.providers.replicate.ratelimit import ReadBudget

    budget = ReadBudget(600, burst=1)  # 10 a second
    start = time.monotonic()
    for _ in range(6):
        budget.acquire()
    assert 0.45 <= time.monotonic() - start < 1.5
    budget.pause(0.5)
    paused = time.monotonic()
    budget.acquire()
    assert time.monotonic() - paused >= 0.45


@pytest.mark.parametrize("deadline, header", [(0.4, "5s"), (90.0, "90s"), (600.0, "10m"), (5400.0, "90m"),
                                              (7200.0, "2h")])
def test_creates_send_the_deadline_as_cancel_after_in_the_api_format_and_at_least_5s(tmp_path, deadline, header):
    api = Api(creates=[created()], gets=[failed()])
    provider = provider_for(api, tmp_path, deadline_s={"image": deadline})
    with pytest.raises(ProviderError, match="failed: scripted end"):
        provider.render_image(image_request(), tmp_path)
    (post,) = [r for _, r in api.requests if r.method == "POST"]
    assert post.headers["Cancel-After"] == header
    assert post.headers["Authorization"] == f"Bearer {TOKEN}"


def test_deadlines_per_kind_and_the_read_budget_are_resource_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    defs = build_definitions(str(tmp_path / "data"), replicate_deadline_s={"video": 900},
                             replicate_max_reads_per_minute=600)
    pipeline = defs.resources["pipeline"]
    assert pipeline.replicate.deadline_s == {"video": 900} and pipeline.replicate.max_reads_per_minute == 600
    provider = pipeline.provider("replicate")
    assert provider.deadlines_s == {**package.DEFAULT_DEADLINES_S, "video": 900.0}
    assert provider.api.max_reads_per_minute == 600
    with pytest.raises(Exception, match="unknown kind 'vidoe'"):
        build_definitions(str(tmp_path / "data"), replicate_deadline_s={"vidoe": 900})
    with pytest.raises(ValueError, match="unknown kind vidoe"):
        get_provider("replicate", workspace_root=tmp_path, deadline_s={"vidoe": 900})


def test_the_client_is_plain_httpx_and_never_sends_the_token_elsewhere(tmp_path):
    api = Api(creates=[created()], gets=[httpx.Response(200, json={"results": [], "next": None})])
    provider = provider_for(api, tmp_path)
    assert type(provider.api.client()) is httpx.Client
    with pytest.raises(ProviderError, match="refusing to send the API token to https://evil.example"):
        provider.api.read_json("https://evil.example/v1/predictions", what="list")
    provider.api.read_json(f"{BASE}/v1/predictions?cursor=2", what="list")  # same origin: fine
    assert [str(r.url) for _, r in api.requests] == [f"{BASE}/v1/predictions?cursor=2"]
    for _, request in api.requests:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_uploads_go_to_the_files_api_as_multipart_content(tmp_path):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "f1", "urls": {"get": f"{BASE}/v1/files/f1"}, "size": 3,
                                          "expires_at": None})

    provider = get_provider("replicate", api_token=TOKEN, base_url=BASE, workspace_root=tmp_path,
                            transport=httpx.MockTransport(handler))
    info = files.upload(provider.api, b"png", filename="a.png", content_type="image/png")
    assert info["id"] == "f1" and info["urls"]["get"].endswith("/v1/files/f1")
    (request,) = seen
    body = request.read()
    assert request.url.path == "/v1/files" and request.headers["content-type"].startswith("multipart/form-data")
    assert b'name="content"; filename="a.png"' in body and b"Content-Type: image/png" in body


def test_the_package_uses_no_replicate_library_internals_and_no_module_is_much_over_300_lines():
    root = Path(package.__file__).parent
    sizes = {}
    for path in sorted(root.glob("*.py")):
        source = path.read_text()
        sizes[path.name] = source.count("\n")
        tree = ast.parse(source)
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(m == "replicate" or m.startswith("replicate.") for m in imported), path.name
        private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("_client", "_request")
                   and not (isinstance(n.value, ast.Name) and n.value.id == "self")]
        assert not private, (path.name, private)
    assert max(sizes.values()) <= 310, json.dumps(sizes)


def test_downloads_follow_redirects_checking_every_hop_against_the_allow_list(tmp_path):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.providers.replicate.download import Downloader, OutputUnusable

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            target = {"/hop": "/file", "/away": "https://evil.example/file", "/loop": "/loop"}.get(self.path)
            self.send_response(302 if target else 200)
            if target:
                self.send_header("Location", target)
            self.send_header("Content-Length", "0" if target else "4")
            self.end_headers()
            if not target:
                self.wfile.write(b"data")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        downloader = Downloader([origin], request_timeout_s=2.0, max_attempts=2, backoff_initial_s=0.01,
                                max_backoff_s=0.05)
        downloader.download(f"{origin}/hop", tmp_path / "ok", max_bytes=100)
        assert (tmp_path / "ok").read_bytes() == b"data" and hits == ["/hop", "/file"]
        with pytest.raises(OutputUnusable, match="refusing to download from https://evil.example") as err:
            downloader.download(f"{origin}/away", tmp_path / "no", max_bytes=100)
        assert err.value.cause == "refused_host" and err.value.details["origin"] == "https://evil.example"
        with pytest.raises(OutputUnusable, match="more than 5 redirects"):
            downloader.download(f"{origin}/loop", tmp_path / "loop", max_bytes=100)
        assert not (tmp_path / "no").exists() and not (tmp_path / "loop").exists()
    finally:
        server.shutdown()
