"""The Replicate model registry against the models' published schemas and prices (issue 10):

- every input the registry builds uses only fields of that model's published input schema, within
  its published bounds (the schemas, read offline, are the ``schema_source`` of each entry);
- Wan gets ``interpolate_output``, ``frames_per_second``, ``num_frames``, ``resolution`` and an
  ``aspect_ratio`` of 16:9 or 9:16 explicitly, and its price tier follows them;
- a ratio a model cannot make (1:1 on Wan) is generated at the closest one it can and marked for a
  centre crop (``ModelInput.crop_to``, ``cropped_from`` metadata);
- ``charge_for`` bills succeeded, canceled, failed and aborted predictions the way Replicate does;
- every price has a source, evidence and a check date; ``check_registry`` names the model and the
  field of anything inconsistent, and ``pipeline models`` prints the table and fails on it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from pipeline import model_prices, models
from pipeline.cli import main
from pipeline.generation import GenerationRequest
from pipeline.model_checks import check_registry, registry_rows
from pipeline.models import charge_for, choose_ratio, get_model

WAN, KLING, SEEDANCE = "wan-video/wan-2.2-i2v-fast", "kwaivgi/kling-v2.1", "bytedance/seedance-1-lite"
MUSICGEN, LLAMA, FLUX = "meta/musicgen", "meta/meta-llama-3-70b-instruct", "black-forest-labs/flux-schnell"
SEEDREAM = "bytedance/seedream-4"

# Each model's published input fields, with bounds the pipeline can hit (see each entry's schema_source).
SCHEMAS: dict[str, dict[str, object]] = {
    FLUX: {"seed": int, "prompt": str, "go_fast": bool, "megapixels": {"1", "0.25"}, "num_outputs": range(1, 5),
           "aspect_ratio": {"1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"},
           "output_format": {"webp", "jpg", "png"}, "output_quality": range(0, 101), "num_inference_steps": range(1, 5),
           "disable_safety_checker": bool},
    "black-forest-labs/flux-1.1-pro": {
        "prompt": str, "image_prompt": str, "width": int, "height": int, "seed": int, "prompt_upsampling": bool,
        "aspect_ratio": {"custom", "1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3"},
        "safety_tolerance": range(1, 7), "output_format": {"webp", "jpg", "png"}, "output_quality": range(0, 101)},
    SEEDREAM: {"size": {"1K", "2K", "4K", "custom"}, "width": range(1024, 4097), "height": range(1024, 4097),
               "prompt": str, "max_images": range(1, 16), "image_input": list, "enhance_prompt": bool,
               "aspect_ratio": {"match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"},
               "sequential_image_generation": {"disabled", "auto"}},
    WAN: {"seed": int, "image": str, "prompt": str, "go_fast": bool, "last_image": str, "num_frames": range(81, 122),
          "resolution": {"480p", "720p"}, "sample_shift": float, "frames_per_second": range(5, 31),
          "interpolate_output": bool, "disable_safety_checker": bool, "aspect_ratio": {"16:9", "9:16"},
          "lora_scale_transformer": float, "lora_scale_transformer_2": float, "lora_weights_transformer": str,
          "lora_weights_transformer_2": str},
    KLING: {"mode": {"standard", "pro"}, "prompt": str, "duration": {5, 10}, "end_image": str, "start_image": str,
            "negative_prompt": str},
    SEEDANCE: {"resolution": {"480p", "720p", "1080p"}, "aspect_ratio": {"16:9", "4:3", "1:1", "3:4", "9:16", "21:9",
                                                                         "9:21"},
               "fps": {24}, "seed": int, "image": str, "prompt": str, "duration": range(2, 13), "camera_fixed": bool,
               "last_frame_image": str, "reference_images": list},
    "stability-ai/stable-audio-2.5": {"seed": int, "steps": range(4, 9), "prompt": str, "duration": range(1, 191),
                                      "cfg_scale": float},
    MUSICGEN: {"seed": int, "top_k": int, "top_p": float, "prompt": str, "duration": int, "input_audio": str,
               "temperature": float, "continuation": bool, "output_format": {"wav", "mp3"},
               "model_version": {"stereo-melody-large", "stereo-large", "melody-large", "large"},
               "continuation_end": int, "continuation_start": int, "multi_band_diffusion": bool,
               "normalization_strategy": {"loudness", "clip", "peak", "rms"}, "classifier_free_guidance": int},
    LLAMA: {"top_k": int, "top_p": float, "prompt": str, "max_tokens": int, "min_tokens": int, "temperature": float,
            "prompt_template": str, "presence_penalty": float, "frequency_penalty": float},
}


def _request(model: models.ReplicateModel, width: int = 854, height: int = 480, seconds: float = 5.0,
             **params) -> GenerationRequest:
    media = {"text": "image"}.get(model.kind, model.kind)
    return GenerationRequest(media_type=media, provider="replicate", model=model.id, prompt="a fox", seed=7,
                             params={"width": width, "height": height, "duration_s": seconds, "bpm": 90, **params})


def _input(model, request):
    return model.build_input(request, image="data:image/png;base64,AAAA", system_prompt="You are terse.",
                             max_tokens=2048)


@pytest.mark.parametrize("ref", sorted(SCHEMAS))
@pytest.mark.parametrize("size", [(854, 480), (480, 854), (480, 480), (1280, 720)])
def test_inputs_use_only_published_fields_within_their_bounds(ref, size):
    model = get_model(ref)
    assert model.schema_source.startswith("https://")
    for seconds in (model.chunk_seconds or (5.0, 12.0)):
        inp = _input(model, _request(model, *size, seconds=seconds))
        unknown = set(inp) - set(SCHEMAS[ref])
        assert not unknown, f"{ref}: {sorted(unknown)} are not inputs of its published schema (dropped silently)"
        for key, value in inp.items():
            allowed = SCHEMAS[ref][key]
            if isinstance(allowed, type):
                assert isinstance(value, allowed) or (allowed is float and isinstance(value, int)), (key, value)
            else:
                assert value in allowed, f"{ref}: {key}={value!r} is outside {allowed}"


@pytest.mark.parametrize("size, seconds, frames, resolution, ratio", [
    ((854, 480), 5.0, 81, "480p", "16:9"), ((480, 854), 5.0, 81, "480p", "9:16"), ((854, 480), 7.0, 113, "480p", "16:9"),
    ((480, 480), 5.0, 81, "480p", "16:9"), ((1280, 720), 5.0, 81, "720p", "16:9"),
])
def test_wan_gets_interpolation_fps_frames_resolution_and_ratio_explicitly(size, seconds, frames, resolution, ratio):
    wan = get_model(WAN)
    inp = _input(wan, _request(wan, *size, seconds=seconds))
    assert inp["interpolate_output"] is False and inp["frames_per_second"] == 16
    assert inp["num_frames"] == frames and inp["resolution"] == resolution and inp["aspect_ratio"] == ratio
    assert wan.tier({"width": size[0], "height": size[1]}) == resolution
    # The price tier follows interpolate_output: the registry's explicit setting is what is sent and billed.
    smooth = dataclasses.replace(wan, interpolate_output=True)
    assert _input(smooth, _request(smooth, *size, seconds=seconds))["interpolate_output"] is True
    assert smooth.tier({"width": size[0], "height": size[1]}) == f"{resolution}+interpolate"
    assert smooth.price({"width": size[0], "height": size[1]}).usd > wan.price({"width": size[0], "height": size[1]}).usd


@pytest.mark.parametrize("refs", [1, 3, 10])
def test_the_reference_model_gets_its_reference_images_in_image_input(refs):
    seedream = get_model(SEEDREAM)
    assert models.REFERENCE_DEFAULT == SEEDREAM and seedream.max_reference_images == 10
    uris = [f"data:image/png;base64,AAA{i}" for i in range(refs)]
    inp = seedream.build_input(_request(seedream), references=uris)
    assert inp["image_input"] == uris and inp["max_images"] == 1 and inp["sequential_image_generation"] == "disabled"
    assert inp["aspect_ratio"] == "16:9" and "seed" not in inp  # the schema has no seed
    assert set(inp) <= set(SCHEMAS[SEEDREAM])
    assert "image_input" not in seedream.build_input(_request(seedream))  # text-to-image: no empty list sent
    assert seedream.estimate_usd(_request(seedream)) == 0.03 and seedream.billing.canceled == "nothing"


def test_the_ratio_a_model_generates_at():
    assert choose_ratio("16:9", ("16:9", "9:16")) == "16:9"
    assert choose_ratio("1:1", ("16:9", "9:16")) == "16:9"  # tie: both contain a square crop; the first listed
    assert choose_ratio("1:1", ("9:16", "16:9")) == "9:16"
    assert choose_ratio("4:3", ("1:1", "16:9")) == "16:9"  # equally close; 16:9 contains 4:3, a square does not
    assert choose_ratio("3:4", ("16:9", "1:1", "9:16")) == "9:16"  # 1:1 is as close but cannot hold a 3:4 frame
    assert choose_ratio("5:4", ("21:9", "1:1")) == "1:1"  # closest first (keeps 80 %), containing or not
    assert choose_ratio("21:9", ("16:9", "9:16")) == "16:9"
    with pytest.raises(ValueError, match="no supported aspect ratio"):
        choose_ratio("1:1", ())


@pytest.mark.parametrize("ref, crop", [(WAN, "1:1"), (KLING, None), (SEEDANCE, None), (FLUX, None)])
def test_a_square_request_is_cropped_only_on_models_that_cannot_make_it(ref, crop):
    model = get_model(ref)
    plan = model.model_input(_request(model, 480, 480), image="data:image/png;base64,AAAA")
    assert plan.target_ratio == "1:1" and plan.crop_to == crop
    if crop:
        assert plan.aspect_ratio == "16:9" and plan.input["aspect_ratio"] == "16:9"
        assert plan.metadata() == {"cropped_from": "16:9"}
    else:
        assert plan.aspect_ratio == "1:1" and plan.metadata() == {}
    wide = model.model_input(_request(model, 854, 480), image="x")
    assert wide.crop_to is None and wide.aspect_ratio == "16:9"


def test_the_planner_prompt_carries_the_system_prompt():
    llama = get_model(LLAMA)
    request = GenerationRequest(media_type="image", provider="replicate", model=llama.id,
                                prompt="Split the brief below into beats", params={"task": "plan_beats"})
    inp = llama.build_input(request, system_prompt="You are a film editor.", max_tokens=2048)
    assert "system_prompt" not in inp and inp["prompt_template"] == "{prompt}"  # the schema has no system_prompt
    assert inp["prompt"].index("You are a film editor.") < inp["prompt"].index("Split the brief below into beats")
    assert inp["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_charge_for_bills_each_ending_as_replicate_does():
    wan, kling, musicgen, llama = (get_model(r) for r in (WAN, KLING, MUSICGEN, LLAMA))
    size = {"width": 854, "height": 480}
    for model in (wan, kling, musicgen, llama):
        assert charge_for(model, "aborted", metrics={"predict_time": 30}, seconds_requested=5, params=size) == 0
    # Public, time-billed: the seconds it ran, from metrics or else from the timestamps.
    assert charge_for(musicgen, "canceled", metrics={"predict_time": 10.0}) == pytest.approx(0.014)
    assert charge_for(musicgen, "canceled", predict_time_s=5.0) == pytest.approx(0.007)
    assert charge_for(musicgen, "failed", metrics={"predict_time": 2.0}) == pytest.approx(0.0028)
    # Official, priced by output: no output, nothing billed; a success is the price of its output.
    assert charge_for(wan, "canceled", metrics={"predict_time": 40.0}, params=size) == 0
    assert charge_for(kling, "canceled", predict_time_s=100.0, seconds_requested=10, params=size) == 0
    assert charge_for(wan, "succeeded", params=size) == 0.05
    assert charge_for(kling, "succeeded", seconds_requested=10, params=size) == pytest.approx(0.5)
    # Tokens: whatever its metrics counted.
    assert charge_for(llama, "canceled", metrics={"input_token_count": 1000, "output_token_count": 100}) == \
        pytest.approx(1000 * 0.65e-6 + 100 * 2.75e-6)
    assert charge_for(llama, "canceled") == 0
    with pytest.raises(ValueError, match="not a terminal prediction status"):
        charge_for(wan, "processing")
    with pytest.raises(ValueError, match="seconds_requested"):
        charge_for(kling, "succeeded", params=size)


def test_every_price_has_a_source_evidence_and_a_check_date():
    assert check_registry() == []
    today = dt.date.fromisoformat(model_prices.CHECKED)
    for ref, model in models.MODELS.items():
        assert model.billing.canceled in ("time_run", "nothing", "tokens_so_far") and model.billing.source
        for tier, price in model.prices.items():
            assert price.source.startswith(f"https://replicate.com/{ref}"), (ref, tier)
            assert dt.date.fromisoformat(price.checked) <= today and price.evidence, (ref, tier)
            assert price.confidence in ("published", "corroborated", "estimate")
    assert {r["model"] for r in registry_rows()} == {m.ref + (f":{m.version[:8]}" if m.version else "")
                                                     for m in models.MODELS.values()}
    # The pinned musicgen makes more than 30 s (no schema maximum; AudioCraft's extended generation).
    assert get_model(MUSICGEN).max_duration_s > 30


def _break_price(monkeypatch, ref: str, **changes) -> None:
    monkeypatch.setitem(model_prices.PRICES, ref, {t: dataclasses.replace(p, **changes)
                                                   for t, p in model_prices.PRICES[ref].items()})


def _register_as(mp, ref: str, new_ref: str) -> None:
    """Register a copy of model ``ref`` (its prices and billing too) under ``new_ref``."""
    mp.setitem(models.MODELS, new_ref, dataclasses.replace(models.MODELS[ref], ref=new_ref))
    mp.setitem(model_prices.PRICES, new_ref, model_prices.PRICES[ref])
    mp.setitem(model_prices.BILLING, new_ref, model_prices.BILLING[ref])


@pytest.mark.parametrize("breakage, message", [
    (lambda mp: _break_price(mp, MUSICGEN, usd=0.0), "meta/musicgen: prices[default].usd: 0.0 is not > 0"),
    (lambda mp: _break_price(mp, KLING, source=""), "kwaivgi/kling-v2.1: prices[720p].source: missing"),
    (lambda mp: _break_price(mp, FLUX, checked=""), "black-forest-labs/flux-schnell: prices[default].checked: ''"),
    (lambda mp: _break_price(mp, FLUX, checked="2999-01-01"), "prices[default].checked: 2999-01-01 is in the future"),
    (lambda mp: _break_price(mp, SEEDANCE, evidence=()), "bytedance/seedance-1-lite: prices[480p].evidence: none"),
    (lambda mp: mp.setitem(models.DEFAULTS, "video", "acme/nope"), "DEFAULTS['video']: acme/nope: not in the registry"),
    (lambda mp: mp.setitem(models.MODELS, WAN, dataclasses.replace(models.MODELS[WAN], ratios=("9:16",))),
     "wan-video/wan-2.2-i2v-fast: ratios: the default ratio 16:9 is not supported"),
    (lambda mp: mp.setitem(models.MODELS, WAN, dataclasses.replace(models.MODELS[WAN], interpolate_output=None)),
     "wan-video/wan-2.2-i2v-fast: interpolate_output: not set"),
    (lambda mp: mp.setitem(model_prices.BILLING, MUSICGEN, model_prices.Billing("nothing", model_prices.LIFECYCLE)),
     "meta/musicgen: billing.canceled: 'nothing' does not fit prices in ['gpu_second']"),
    (lambda mp: _register_as(mp, WAN, "wan-no-owner"), "wan-no-owner: ref: Invalid reference to model version"),
])
def test_the_self_check_names_the_model_and_field(monkeypatch, capsys, breakage, message):
    breakage(monkeypatch)
    assert any(message in p for p in check_registry()), check_registry()
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "registry error: " in err and message in err.replace("\n", "")


def test_model_references_are_parsed_by_the_replicate_library():
    assert models.parse_ref("jaaari/kokoro-82m:f559560e") == ("jaaari/kokoro-82m", "f559560e")
    assert models.parse_ref("wan-video/wan-2.2-i2v-fast") == ("wan-video/wan-2.2-i2v-fast", None)
    for bad in ("wan-2.2", "a/b/c", "a/b:", ""):
        with pytest.raises(ValueError):
            models.parse_ref(bad)
        with pytest.raises(ValueError, match="unknown Replicate video model"):
            models.get_model(bad, "video")
    with pytest.raises(ValueError, match="is not the pinned version"):
        models.get_model("jaaari/kokoro-82m:0000", "speech")


def test_pipeline_models_prints_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for ref, model in models.MODELS.items():
        assert f"{ref}{':' + model.version[:8] if model.version else ''}: https://replicate.com/{ref}" in out
    assert f"registry ok: {len(models.MODELS)} models" in out and len(models.MODELS) == 10 and model_prices.CHECKED in out
    assert main(["models", "--markdown"]) == 0
    md = capsys.readouterr().out
    wan = [line for line in md.splitlines() if line.startswith("| wan-video/wan-2.2-i2v-fast ")]
    assert len(wan) == 4  # 480p, 720p, each with and without interpolate_output
    row = next(line for line in wan if "| 480p " in line)
    for text in ("| video ", "| 0.05 ", "| 16:9 9:16 ", "| nothing ", "| https://replicate.com/wan-video/wan-2.2-i2v-fast ",
                 f"| {model_prices.CHECKED} |"):
        assert text in row, (text, row)
    assert "| time_run " in next(line for line in md.splitlines() if line.startswith("| meta/musicgen"))
