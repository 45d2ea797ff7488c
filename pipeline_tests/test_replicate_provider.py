"""The replicate provider against the fake Replicate server: registry, inputs, media, cost, cache."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from pipeline import media, models, stages
from pipeline.generation import Generator, read_call_log
from pipeline.ledger import Ledger
from pipeline.providers import ProviderError, get_provider
from pipeline.spec import parse_spec
from pipeline.store import Workspace
from pipeline.submissions import submit_spec
from pipeline_tests.fake_replicate import MUSICGEN_VERSION, fake_replicate, provider_options  # noqa: F401

WAN = "wan-video/wan-2.2-i2v-fast"
FLUX = "black-forest-labs/flux-schnell"


def _submit(ws: Workspace, **overrides):
    data = {"video_id": "fox", "title": "Fox", "duration_s": 12, "aspect_ratio": "16:9", "style": "flat colors",
            "music": {"prompt": "calm piano", "bpm": 80},
            "beats": [{"prompt": "a red fox in the snow", "duration_s": 7, "motion": "slow push-in"},
                      {"prompt": "the fox leaps over a log", "duration_s": 5, "motion": "pan right"}]}
    data.update(overrides)
    return submit_spec(ws, parse_spec(data), source="test", provider="replicate")[0]


def _decode_data_uri(uri: str) -> Image.Image:
    head, b64 = uri.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_registry_has_prices_with_sources_and_the_default_video_cost():
    for ref, m in models.MODELS.items():
        assert m.ref == ref and m.prices
        for price in m.prices.values():
            assert price.usd > 0 and price.source.startswith(f"https://replicate.com/{ref}")
        if m.kind == "video":
            assert m.chunk_seconds and m.fps and m.fields["image"] in ("image", "start_image", "first_frame_image")
    assert {m.ref for m in models.MODELS.values()} >= {
        FLUX, "black-forest-labs/flux-1.1-pro", WAN, "kwaivgi/kling-v2.1", "bytedance/seedance-1-lite",
        "meta/musicgen", "stability-ai/stable-audio-2.5"}
    assert models.get_model("meta/musicgen").version == MUSICGEN_VERSION
    # 40 s, 6 beats, 8 chunks with the defaults: 6 x $0.003 + 8 x $0.05 + $0.20 = $0.618.
    est = models.estimate_video_usd([5, 5, 5, 5, 10, 10])
    assert est["chunk_count"] == 8
    assert est == {"images": 0.018, "chunks": 0.4, "music": 0.2, "total": 0.618, "chunk_count": 8.0}
    with pytest.raises(ValueError, match="known"):
        models.get_model("acme/nope")


@pytest.mark.parametrize("video_model, chunk, fps, chunks_for_12s", [
    (WAN, None, 16, 3), (WAN, 7.0, 16, 2), ("kwaivgi/kling-v2.1", 10.0, 24, 2), ("bytedance/seedance-1-lite", None, 24, 3),
])
def test_chunk_plan_follows_the_video_model(tmp_path, video_model, chunk, fps, chunks_for_12s):
    provider = get_provider("replicate", api_token="x", workspace_root=tmp_path, video_model=video_model,
                            chunk_seconds=chunk)
    assert provider.fps == fps and provider.video_model == video_model
    assert len(stages.chunk_plan(12.0, provider.chunk_seconds)) == chunks_for_12s
    with pytest.raises(ValueError, match="makes chunks of"):
        get_provider("replicate", api_token="x", workspace_root=tmp_path, video_model=video_model, chunk_seconds=3)


def test_a_video_renders_through_replicate_and_a_rerun_is_free(tmp_path, fake_replicate):
    server = fake_replicate
    ws = Workspace.at(tmp_path)
    sub = _submit(ws)
    provider = get_provider("replicate", **provider_options(server, tmp_path))
    gen = Generator(ws)

    def render():
        plan = stages.plan_video(sub, provider)
        sets = {}
        for b in plan.beats:
            beat = stages.plan_beat(plan, b, provider)
            sets[beat.segment] = stages.render_chunks(beat, stages.render_storyboard(beat, provider, gen), provider, gen)
        ordered = stages.check_fan_in(plan, sets, {k: v.fingerprint for k, v in sets.items()})
        stitched = stages.stitch_video(plan, ordered, gen)
        music = stages.render_music(plan, provider, gen)
        return plan, sets, stages.mux_video(plan, stitched, music, gen, ws)

    plan, sets, final = render()
    assert plan.fps == 16 and [len(s.chunks) for s in sets.values()] == [2, 1]
    first = sets["000"]
    assert (first.storyboard.width, first.storyboard.height) == (854, 480)  # resized to the draft size
    assert first.storyboard.cost_usd == 0.003 and first.storyboard.prediction_id
    assert first.storyboard.extra["price_source"].startswith("https://replicate.com/black-forest-labs/flux-schnell")
    for cv in sets.values():
        for c in cv.chunks:
            v = c.video
            assert v.provider == "replicate" and v.model == WAN and v.prediction_id and not v.cache_hit
            assert v.cost_usd == 0.05 and v.fps == 16 and v.duration_s == pytest.approx(81 / 16)
            assert media.verify_video(gen.local_path(v)).frames == 81
    # Inputs as Wan expects them; the continuous chunk starts on the previous chunk's last frame.
    wan_inputs = server.inputs(WAN)
    assert len(wan_inputs) == 3
    assert {k for k in wan_inputs[0]} >= {"image", "prompt", "num_frames", "frames_per_second", "resolution", "seed"}
    assert wan_inputs[0]["num_frames"] == 81 and wan_inputs[0]["resolution"] == "480p"
    assert _decode_data_uri(wan_inputs[0]["image"]).size == (854, 480)
    last = Image.open(gen.local_path(first.chunks[0].last_frame))
    assert _decode_data_uri(wan_inputs[1]["image"]).tobytes() == last.convert("RGB").tobytes()
    # Costs: 2 images, 3 chunks, music; the table is in the final manifest.
    assert final.cost_usd == pytest.approx(2 * 0.003 + 3 * 0.05 + 0.2)
    assert {c.model for c in final.costs} == {FLUX, WAN, "stability-ai/stable-audio-2.5"}
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.spent_usd("fox") == pytest.approx(final.cost_usd)
    assert all(j.state == "succeeded" for j in ledger.jobs("fox"))
    creates = server.create_count()
    assert creates == 6

    # A rerun (new provider, same data directory) is all cache hits: no calls, zero cost.
    provider = get_provider("replicate", **provider_options(server, tmp_path))
    calls_before = len(read_call_log(ws))
    _, sets2, final2 = render()
    assert server.create_count() == creates
    # Nothing new is paid: the video's spend (what its final manifest reports, across runs) is unchanged.
    assert all(c.cache_hit for c in final2.costs) and {c.source for c in final2.costs} == {"manifest"}
    assert final2.cost_usd == pytest.approx(final.cost_usd) == pytest.approx(ledger.spent_usd("fox"))
    assert len(read_call_log(ws)) == calls_before


def test_kling_and_seedance_get_their_own_field_names(tmp_path, fake_replicate):
    server = fake_replicate
    ws = Workspace.at(tmp_path)
    sub = _submit(ws, duration_s=5, beats=[{"prompt": "a heron lifts off", "duration_s": 5}])
    for ref, field, fps in (("kwaivgi/kling-v2.1", "start_image", 24), ("bytedance/seedance-1-lite", "image", 24)):
        provider = get_provider("replicate", **provider_options(server, tmp_path, video_model=ref))
        gen = Generator(ws)
        plan = stages.plan_video(sub, provider)
        beat = stages.plan_beat(plan, plan.beats[0], provider)
        cv = stages.render_chunks(beat, stages.render_storyboard(beat, provider, gen), provider, gen)
        (inp,) = server.inputs(ref)
        assert inp[field].startswith("data:image/") and inp["duration"] == 5
        v = cv.chunks[0].video
        assert v.model == ref and v.fps == fps and v.duration_s == pytest.approx(5.0)
        price = models.get_model(ref).price({"width": 854, "height": 480})
        assert price.unit == "video_second"
        assert v.cost_usd == pytest.approx(price.usd * v.duration_s, abs=1e-4)


def test_musicgen_uses_a_versioned_create_and_flux_pro_a_single_url(tmp_path, fake_replicate):
    server = fake_replicate
    ws = Workspace.at(tmp_path)
    sub = _submit(ws, duration_s=5, beats=[{"prompt": "a quiet harbour", "duration_s": 5}])
    provider = get_provider("replicate", **provider_options(server, tmp_path, music_model="meta/musicgen",
                                                            image_model="black-forest-labs/flux-1.1-pro"))
    gen = Generator(ws)
    plan = stages.plan_video(sub, provider)
    music = stages.render_music(plan, provider, gen)
    assert music.audio.model == f"meta/musicgen:{MUSICGEN_VERSION}" and music.audio.duration_s >= 5
    assert ("POST", "/v1/predictions", 201) in server.requests
    assert server.predictions[music.audio.prediction_id].version == MUSICGEN_VERSION
    assert music.audio.extra["billed_unit"] == "gpu_second" and music.audio.cost_usd >= 0
    beat = stages.plan_beat(plan, plan.beats[0], provider)
    image = stages.render_storyboard(beat, provider, gen).image
    assert image.model == "black-forest-labs/flux-1.1-pro" and image.cost_usd == 0.04
    assert provider.check_models()[f"meta/musicgen:{MUSICGEN_VERSION}"] == "ok"


BRIEF = ("The sun heats oceans and lakes, and water evaporates into the air. Plants add vapor from their leaves. "
         "Rising air cools and the vapor condenses into clouds. Heavy droplets fall back as rain and snow.")


def test_planner_returns_validated_beats_and_reuses_a_finished_plan(tmp_path, fake_replicate):
    server = fake_replicate
    provider = get_provider("replicate", **provider_options(server, tmp_path))
    beats = provider.plan_beats(BRIEF, duration_s=30, style="flat", max_beats=6)
    assert 2 <= len(beats) <= 6 and sum(b.duration_s for b in beats) == pytest.approx(30)
    assert all(b.duration_s >= 5 for b in beats)
    assert server.create_count("meta/meta-llama-3-70b-instruct") == 1
    assert 0 < provider.planner_cost_usd < 0.01
    again = get_provider("replicate", **provider_options(server, tmp_path)).plan_beats(
        BRIEF, duration_s=30, style="flat", max_beats=6)
    assert again == beats and server.create_count() == 1  # from the ledger, free

    # Through plan_video with a brief.
    ws = Workspace.at(tmp_path)
    data = {"video_id": "water", "title": "Water", "duration_s": 30, "aspect_ratio": "16:9", "style": "flat",
            "music": {"prompt": "calm", "bpm": 80}, "brief": BRIEF}
    plan = stages.plan_video(submit_spec(ws, parse_spec(data), source="t", provider="replicate")[0], provider)
    assert plan.planned_by == "planner:meta/meta-llama-3-70b-instruct" and plan.duration_s == 30


def test_planner_gets_one_corrective_retry_then_a_clear_error(tmp_path, fake_replicate):
    server = fake_replicate
    llm = "meta/meta-llama-3-70b-instruct"
    provider = get_provider("replicate", **provider_options(server, tmp_path))
    server.inject("bad_json", times=1, model=llm)
    beats = provider.plan_beats(BRIEF, duration_s=20, style="flat", max_beats=4)
    assert sum(b.duration_s for b in beats) == pytest.approx(20)
    prompts = [i["prompt"] for i in server.inputs(llm)]
    assert len(prompts) == 2 and "previous answer was rejected" in prompts[1]

    server.inject("bad_json", times=2, model=llm)
    with pytest.raises(ProviderError) as err:
        provider.plan_beats(BRIEF + " Then it begins again.", duration_s=20, style="flat", max_beats=4)
    assert err.value.retryable is False and "invalid beats twice" in str(err.value)
    assert "not valid JSON" in str(err.value)
    assert server.create_count(llm) == 4


def test_no_token_is_a_clear_error_only_when_a_call_is_made(tmp_path, monkeypatch):
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    provider = get_provider("replicate", workspace=Workspace.at(tmp_path))  # constructing needs no token
    assert provider.ledger.path == tmp_path.resolve() / "ledger.sqlite"
    with pytest.raises(ProviderError, match="REPLICATE_API_TOKEN is not set") as err:
        provider.plan_beats(BRIEF, duration_s=20, style="flat", max_beats=4)
    assert err.value.retryable is False


def test_input_images_go_as_deterministic_data_uris(tmp_path):
    import numpy as np

    from pipeline.providers.replicate import MAX_DATA_URI_PNG_BYTES, image_data_uri

    small = tmp_path / "small.png"
    Image.new("RGB", (64, 36), (10, 20, 30)).save(small)
    assert image_data_uri(small).startswith("data:image/png;base64,")
    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 854, 3), dtype=np.uint8)).save(noisy)
    assert noisy.stat().st_size > MAX_DATA_URI_PNG_BYTES
    uri = image_data_uri(noisy)  # large: still the PNG itself, never a lossy JPEG
    assert uri.startswith("data:image/png;base64,") and uri == image_data_uri(noisy)  # same bytes on a rerun
    assert base64.b64decode(uri.split(",", 1)[1]) == noisy.read_bytes()
    assert _decode_data_uri(uri).size == (854, 480)


def test_fake_server_runs_as_a_module():
    """``python -m pipeline_tests.fake_replicate --port 0`` prints its address once ready; the test
    waits for that line (up to 120 s: a loaded machine imports slowly), never a fixed sleep."""
    import httpx

    from pipeline_tests.fake_replicate import DEFAULT_TOKEN, FakeServerProcess

    with FakeServerProcess("--create-latency", "0.1", "--run-seconds", "0.2") as server:
        auth = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
        r = httpx.get(f"{server.base_url}/v1/models/meta/musicgen/versions", headers=auth, timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["id"] == MUSICGEN_VERSION
        assert httpx.get(f"{server.base_url}/v1/predictions", timeout=60).status_code == 401
        r = httpx.post(f"{server.base_url}/v1/models/{FLUX}/predictions", headers=auth, json={"input": {"prompt": "x"}},
                       timeout=60)
        assert r.status_code == 201
        stats = server.stats()
        assert stats["create_requests"] == 1 and list(stats["creates"].values()) == [1]
        assert next(iter(stats["creates"])).startswith(f"{FLUX}:")
