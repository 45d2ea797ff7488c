"""Start frames reach the model losslessly: the storyboard image and every chained last frame arrive
at the (fake) Replicate server as the very PNG bytes the pipeline stored -- inline as a PNG data URI
up to MAX_DATA_URI_PNG_BYTES, else as an uploaded file's URL -- and never as JPEG. Uploads happen
once per content, also when an upload's answer is lost."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline import stages
from pipeline.generation import GenerationRequest, Generator, ProviderResult
from pipeline.manifests import StoryboardManifest
from pipeline.providers import get_provider
from pipeline.providers.replicate import MAX_DATA_URI_PNG_BYTES
from pipeline.spec import parse_spec
from pipeline.store import Workspace
from pipeline.submissions import submit_spec
from pipeline_tests.fake_replicate import fake_replicate, provider_options  # noqa: F401
from pipeline_tests.test_replicate_faults import WAN, Harness

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def noisy_png(path, width: int, height: int, seed: int = 0):
    """A PNG of uniform noise (incompressible: ~3 bytes a pixel, far over the data-URI cap)."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def sent_bytes(server, value: str) -> bytes:
    """The bytes a model input carries: a PNG data URI's payload, or the uploaded file it names."""
    if value.startswith("data:"):
        head, b64 = value.split(",", 1)
        assert head == "data:image/png;base64", head
        return base64.b64decode(b64)
    data = server.read_input_file(value)
    assert data is not None, f"{value} is not a live uploaded file"
    return data


def assert_no_jpeg(server) -> None:
    for inp in server.inputs():
        assert not any(isinstance(v, str) and "jpeg" in v[:40].lower() for v in inp.values())
    for f in server.uploaded.values():
        assert f["content_type"] == "image/png" and f["data"][:8] == PNG_MAGIC


def test_a_chain_sends_a_large_storyboard_and_each_last_frame_as_the_stored_png(tmp_path, fake_replicate):
    server = fake_replicate
    ws = Workspace.at(tmp_path)
    gen = Generator(ws)
    provider = get_provider("replicate", **provider_options(server, tmp_path))
    spec = parse_spec({"video_id": "lossless", "title": "Lossless", "duration_s": 10, "aspect_ratio": "16:9",
                       "style": "flat colors", "music": {"prompt": "calm piano", "bpm": 80},
                       "beats": [{"prompt": "a red fox in the snow", "duration_s": 10, "motion": "slow push-in"}]})
    sub = submit_spec(ws, spec, source="test", provider="replicate")[0]
    plan = stages.plan_video(sub, provider)
    beat = stages.plan_beat(plan, plan.beats[0], provider)
    assert len(beat.chunks) == 2  # the storyboard's chunk, then one from its last frame

    source = noisy_png(tmp_path / "board.png", 1920, 1080)
    assert source.stat().st_size > MAX_DATA_URI_PNG_BYTES
    request = GenerationRequest(media_type="image", provider="test", model="noise-v1", params={"w": 1920})

    def store(scratch):
        shutil.copy(source, scratch / "board.png")
        return ProviderResult(path=scratch / "board.png", model="noise-v1")

    board = gen.generate(request, store)
    storyboard = StoryboardManifest(video_id=beat.video_id, index=beat.index, fingerprint=beat.fingerprint,
                                    image=board)
    chunks = stages.render_chunks(beat, storyboard, provider, gen).chunks

    inputs = server.inputs(WAN)
    assert len(inputs) == 2
    # Chunk 1: the 1920x1080 storyboard went as an uploaded file: the stored PNG, byte for byte.
    assert inputs[0]["image"].startswith(f"{server.base_url}/v1/files/") and server.uploads == 1
    assert sent_bytes(server, inputs[0]["image"]) == gen.local_path(board).read_bytes() == source.read_bytes()
    # Chunk 2: chunk 1's last frame (small at the fake's quarter size) went inline, the stored PNG exactly.
    last = gen.local_path(chunks[0].last_frame).read_bytes()
    assert len(last) <= MAX_DATA_URI_PNG_BYTES and inputs[1]["image"].startswith("data:image/png;base64,")
    assert sent_bytes(server, inputs[1]["image"]) == last and chunks[1].start_image_sha256 == chunks[0].last_frame.sha256
    assert_no_jpeg(server)


def test_a_large_start_frame_goes_once_and_small_ones_inline(tmp_path, fake_replicate):
    server = fake_replicate
    h = Harness(tmp_path, server)
    h.chunk(seed=1)  # the harness's start image: a flat colour, a small PNG
    assert server.inputs(WAN)[0]["image"].startswith("data:image/png;base64,") and server.uploads == 0
    assert sent_bytes(server, server.inputs(WAN)[0]["image"]) == h.start.read_bytes()

    h.start = noisy_png(tmp_path / "big.png", 1920, 1080, seed=3)
    h.chunk(seed=2)
    h.chunk(seed=3)  # the same start frame again, in the same process: no upload, no file check
    urls = [inp["image"] for inp in server.inputs(WAN)[1:]]
    assert urls[0] == urls[1] and server.uploads == 1
    assert sent_bytes(server, urls[0]) == h.start.read_bytes()
    assert not any(m == "GET" and p.startswith("/v1/files") for m, p, _ in server.requests)
    assert_no_jpeg(server)


@pytest.mark.parametrize("options, stored", [
    ({"after_store": True}, True),   # stored, then a 500: the retry finds it by checksum
    ({"drop": True}, True),          # stored, then the connection dropped
    ({}, False),                     # a 500 before storing: looked for, not found, uploaded again
])
def test_an_upload_whose_answer_was_lost_is_not_uploaded_twice(tmp_path, fake_replicate, options, stored):
    server = fake_replicate
    h = Harness(tmp_path, server)
    h.start = noisy_png(tmp_path / "big.png", 1920, 1080, seed=5)
    server.inject("upload_error", **options)
    video = h.chunk()
    assert video.prediction_id and server.uploads == 1 and len(server.uploaded) == 1
    (file_id,) = server.uploaded
    assert server.inputs(WAN)[0]["image"] == server.file_json(file_id)["urls"]["get"]
    assert server.uploaded[file_id]["data"] == h.start.read_bytes()
    lists = [p for m, p, _ in server.requests if m == "GET" and p.split("?")[0] == "/v1/files"]
    assert len(lists) == 1  # one look-up by checksum before the second attempt
    posts = [s for m, p, s in server.requests if m == "POST" and p == "/v1/files"]
    assert len(posts) == (1 if stored else 2)
    assert_no_jpeg(server)


def test_the_lookup_of_a_lost_upload_sends_the_token_only_to_the_api_root(tmp_path):
    import httpx

    from pipeline.providers.replicate import files

    base, token, seen = "https://api.example.test", "r8_StartFramesToken0000000000000", []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST" and len([r for r in seen if r.method == "POST"]) == 1:
            return httpx.Response(502, json={"detail": "bad gateway", "status": 502})
        if request.method == "GET":  # a page with nothing of ours, and a next page on another origin
            return httpx.Response(200, json={"results": [], "previous": None,
                                             "next": "https://elsewhere.example.test/v1/files?cursor=abc"})
        return httpx.Response(201, json={"id": "f2", "urls": {"get": f"{base}/v1/files/f2"}, "size": 3,
                                          "expires_at": None, "checksums": {"sha256": "x"}})

    provider = get_provider("replicate", api_token=token, base_url=base, workspace_root=tmp_path,
                            poll_interval_s=0.01, max_poll_interval_s=0.02, transport=httpx.MockTransport(handler))
    info = files.upload(provider.api, PNG_MAGIC + b"data", filename="a.png", content_type="image/png")
    assert info["id"] == "f2"
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/v1/files"), ("GET", "/v1/files"),
                                                      ("POST", "/v1/files")]
    assert all(r.url.host == "api.example.test" and r.headers["Authorization"] == f"Bearer {token}" for r in seen)
