"""The Replicate model registry: which models the ``replicate`` provider can call, how their inputs
are named, what they return, how long a video chunk they make, and what they cost.

Each entry is a :class:`ReplicateModel`. ``model_input`` turns a pipeline ``GenerationRequest``
into that model's Replicate input (field names differ: ``image`` / ``start_image``, ``num_frames``
/ ``duration`` ...) plus the aspect ratio it generates at and the crop the output then needs;
``estimate_usd`` prices a request before it is made (for ``max_cost_usd``); ``cost`` prices what
actually came back (images, seconds of video or audio, GPU seconds, tokens); :func:`charge_for`
(in :mod:`pipeline.model_charges`, re-exported here) prices a prediction by how it ended
(canceled, failed, aborted).

Prices, their sources and check dates live in :mod:`pipeline.model_prices`; every entry here names
``schema_source``, where its input schema was checked (checked on ``model_prices.CHECKED``).
Defaults (:data:`DEFAULTS`): ``black-forest-labs/flux-schnell`` for storyboard images
(``bytedance/seedream-4``, :data:`REFERENCE_DEFAULT`, for those made from character references),
``wan-video/wan-2.2-i2v-fast`` for chunks (5 s chunks at 16 fps), ``stability-ai/stable-audio-2.5``
for music, ``jaaari/kokoro-82m`` (pinned version) for narration ("speech") and
``meta/meta-llama-3-70b-instruct`` as the planner. ``pipeline models`` prints the
table and :func:`pipeline.model_checks.check_registry` checks it. Nothing here makes a network call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pipeline.generation import GenerationRequest
from pipeline.model_inputs import (
    choose_ratio,
    flux_pro,
    flux_schnell,
    kling,
    kokoro,
    llama,
    musicgen,
    request_ratio,
    resolution_tier,
    seedance,
    seedream,
    snap_duration,
    stable_audio,
    wan,
    wan_frames,
)
from pipeline.model_charges import charge_for  # noqa: F401 (re-exported: it was defined here)
from pipeline.model_prices import BILLING, NODETOOL, PRICES, Billing, Price, PriceUnit

__all__ = ["DEFAULTS", "MODELS", "REFERENCE_DEFAULT", "Billing", "Cost", "ModelInput", "Price", "PriceUnit", "ReplicateModel",
           "charge_for", "choose_ratio", "estimate_video_usd", "get_model", "request_ratio"]

Kind = Literal["image", "video", "audio", "speech", "text"]
OutputShape = Literal["url", "url_list", "text_tokens"]


@dataclass(frozen=True)
class Cost:
    """What one prediction cost: ``units`` of ``unit`` at ``price.usd`` each, ``usd`` in total."""

    units: float
    unit: str
    usd: float
    price: Price


@dataclass(frozen=True)
class ModelInput:
    """A model's Replicate ``input`` for one request, and the frame it makes.

    ``aspect_ratio``: the ratio the model generates at (None for audio and text); ``target_ratio``:
    the request's. When they differ (1:1 on Wan, which makes 16:9 or 9:16 only) ``crop_to`` is the
    target: the provider centre-crops the downloaded output to it (``media.centre_crop``) and records
    ``metadata()`` ({"cropped_from": "16:9"}) beside the output."""

    input: dict[str, Any]
    aspect_ratio: str | None = None
    target_ratio: str | None = None

    @property
    def crop_to(self) -> str | None:
        """The ratio to centre-crop the output to, or None when the model makes the request's ratio."""
        return self.target_ratio if self.aspect_ratio and self.target_ratio != self.aspect_ratio else None

    def metadata(self) -> dict[str, str]:
        """{"cropped_from": <generated ratio>} when the output needs a crop, else {}."""
        return {"cropped_from": self.aspect_ratio} if self.crop_to else {}


@dataclass(frozen=True)
class ReplicateModel:
    """One callable Replicate model.

    - ``ref``: "owner/name". ``version``: a pinned version id, or None for an official model
      (created with ``POST /v1/models/{owner}/{name}/predictions``; a pinned version is created
      with ``POST /v1/predictions``). ``id`` is what manifests record: ``ref`` or ``ref:version``.
    - ``kind``: image, video, audio or text (the planner).
    - ``fields``: the model's input field for each role (prompt, seed, image, duration, ...);
      ``schema_source``: where that input schema was checked (URL).
    - ``output``: "url" (one URL), "url_list" (a list, the first is used) or "text_tokens" (a list
      of strings to join). ``output_ext``: file extension when the URL has none.
    - ``prices``: per tier ("default", "480p"/"720p"/"1080p", Wan's "+interpolate"), from
      ``model_prices.PRICES``; ``billing``: how a canceled or failed prediction is billed.
    - ``ratios``: the aspect ratios it can generate at (image and video; the first wins ties).
    - video: ``chunk_seconds`` the chunk lengths (s) the model can generate, the first the default;
      ``fps`` its frame rate; ``interpolate_output`` Wan's setting (sent explicitly, it sets the price
      tier). audio: ``max_duration_s`` the longest track one call makes (s).
    """

    ref: str
    kind: Kind
    fields: dict[str, str]
    output: OutputShape
    output_ext: str
    builder: Callable[..., dict[str, Any]] = field(repr=False)
    schema_source: str = ""
    version: str | None = None
    ratios: tuple[str, ...] = ()
    chunk_seconds: tuple[float, ...] = ()
    fps: int | None = None
    interpolate_output: bool | None = None
    max_duration_s: float | None = None
    gpu_seconds_per_output_second: float = 0.0
    """For "gpu_second" prices: the estimate of predict_time per second of output (estimates only)."""
    notes: str = ""
    max_reference_images: int = 0
    """image: how many reference images (``fields["references"]``) one prediction takes; 0: none."""

    @property
    def id(self) -> str:
        """What manifests and requests record as the model: "owner/name", or "owner/name:version"."""
        return f"{self.ref}:{self.version}" if self.version else self.ref

    @property
    def prices(self) -> dict[str, Price]:
        """Price per tier (``model_prices.PRICES[ref]``)."""
        return PRICES[self.ref]

    @property
    def billing(self) -> Billing:
        """How a canceled or failed prediction of this model is billed (``model_prices.BILLING[ref]``)."""
        return BILLING[self.ref]

    # --- inputs --------------------------------------------------------------------------------

    def model_input(self, request: GenerationRequest, **extra: Any) -> ModelInput:
        """The Replicate input for ``request`` and the ratio it is generated at: the request's ratio
        (from ``params`` width/height) when the model makes it, else :func:`choose_ratio`'s pick, with
        ``crop_to`` set. ``extra``: ``image`` (a data URI or URL of the start frame for video models),
        ``system_prompt``/``max_tokens`` for the planner."""
        target = request_ratio(request.params) if self.ratios else None
        ratio = choose_ratio(target, self.ratios) if target else None
        return ModelInput(self.builder(self, request, extra, ratio), ratio, target)

    def build_input(self, request: GenerationRequest, **extra: Any) -> dict[str, Any]:
        """Just the ``input`` of :meth:`model_input`."""
        return self.model_input(request, **extra).input

    # --- prices --------------------------------------------------------------------------------

    def resolution(self, params: dict[str, Any]) -> str | None:
        """The resolution tier ("480p", "720p", "1080p") a request runs at on a tiered model, else None."""
        tiers = tuple(t for t in self.prices if t.endswith("p"))
        return resolution_tier(params, allowed=tiers) if tiers else None

    def tier(self, params: dict[str, Any]) -> str:
        """Price tier of a request: "default", or its resolution (+ "+interpolate" on Wan with it on)."""
        if "default" in self.prices:
            return "default"
        return f"{self.resolution(params)}{'+interpolate' if self.interpolate_output else ''}"

    def price(self, params: dict[str, Any]) -> Price:
        """The Price of a request with these params (its tier's)."""
        return self.prices[self.tier(params)]

    def generated_seconds(self, params: dict[str, Any]) -> float:
        """Seconds of video/audio the model is asked for (video: the model's own chunk length
        rounding, e.g. Wan's 4k+1 frames at 16 fps; audio: whole seconds)."""
        if self.kind == "video":
            seconds = float(params["duration_s"])
            if "num_frames" in self.fields.get("duration", ""):
                return wan_frames(seconds, self.fps or 16) / (self.fps or 16)
            return float(snap_duration(seconds, self.chunk_seconds))
        if self.kind == "audio":
            return float(math.ceil(float(params["duration_s"])))
        return 0.0

    def speech_seconds(self, request: GenerationRequest) -> float:
        """Estimated seconds of speech in a speech request (``pipeline.narration.estimate_speech_s``)."""
        from pipeline.narration import estimate_speech_s

        return estimate_speech_s(request.prompt)

    def estimate_usd(self, request: GenerationRequest, *, prompt_chars: int = 0, max_tokens: int = 0) -> float:
        """Price of ``request`` before it is made (USD): one image, the requested seconds, one file,
        estimated GPU seconds, or prompt tokens (4 characters each) plus ``max_tokens`` output."""
        price = self.price(request.params)
        if price.unit in ("image", "video", "audio"):
            return round(price.usd, 6)
        if price.unit in ("video_second", "audio_second"):
            return round(price.usd * self.generated_seconds(request.params), 6)
        if price.unit == "gpu_second":
            seconds = self.speech_seconds(request) if self.kind == "speech" else self.generated_seconds(request.params)
            return round(price.usd * self.gpu_seconds_per_output_second * seconds, 6)
        tokens_in = max(1, prompt_chars // 4)
        return round(price.usd * tokens_in + price.usd_out * max_tokens, 6)

    def cost(self, params: dict[str, Any], *, output_seconds: float | None = None, images: int = 1,
             metrics: dict[str, Any] | None = None, prompt_chars: int = 0, output_chars: int = 0) -> Cost:
        """What a finished prediction cost (USD) from its output: ``images`` for images,
        ``output_seconds`` (measured by decoding) for per-second prices, ``metrics.predict_time``
        for GPU-time prices, ``metrics.input_token_count``/``output_token_count`` (else characters / 4)
        for token prices."""
        price = self.price(params)
        metrics = metrics or {}
        if price.unit == "image":
            units = float(images)
        elif price.unit in ("video", "audio"):
            units = 1.0
        elif price.unit in ("video_second", "audio_second"):
            units = round(float(output_seconds or 0.0), 3)
        elif price.unit == "gpu_second":
            units = round(float(metrics.get("predict_time") or 0.0), 3)
        else:
            tin = float(metrics.get("input_token_count") or max(1, prompt_chars // 4))
            tout = float(metrics.get("output_token_count") or max(1, output_chars // 4))
            return Cost(units=tin + tout, unit="tokens", usd=round(price.usd * tin + price.usd_out * tout, 6),
                        price=price)
        return Cost(units=units, unit=price.unit, usd=round(units * price.usd, 6), price=price)


# --- the registry ------------------------------------------------------------------------------

_FLUX_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4")

MODELS: dict[str, ReplicateModel] = {m.ref: m for m in [
    ReplicateModel(
        ref="black-forest-labs/flux-schnell", kind="image", builder=flux_schnell,
        schema_source=NODETOOL + "image/generate.py (Flux_Schnell, version c846a699)",
        fields={"prompt": "prompt", "seed": "seed", "aspect_ratio": "aspect_ratio"},
        output="url_list", output_ext=".png", ratios=_FLUX_RATIOS + ("21:9", "9:21"),
        notes="1 MP output (1344x768 at 16:9); the provider resizes it to the draft resolution."),
    ReplicateModel(
        ref="black-forest-labs/flux-1.1-pro", kind="image", builder=flux_pro,
        schema_source="https://replicate.com/black-forest-labs/flux-1.1-pro/versions/"
                      "96ccd0e758a1796926584ded2246369cdf8eb3d7c34475cf9c442be5e097d926/api",
        fields={"prompt": "prompt", "seed": "seed", "aspect_ratio": "aspect_ratio"},
        output="url", output_ext=".png", ratios=_FLUX_RATIOS),
    ReplicateModel(
        ref="bytedance/seedream-4", kind="image", builder=seedream,
        schema_source=NODETOOL + "image/generate.py (Seedream_4, version cf7d4319); "
                                 "https://github.com/dwaipayanbanerjee/qwen-image-editor/blob/ad9f914/"
                                 "bytedance_seedream-4.md (a copy of its replicate.com API page: output schema)",
        fields={"prompt": "prompt", "aspect_ratio": "aspect_ratio", "references": "image_input"},
        output="url_list", output_ext=".jpg", ratios=("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"),
        max_reference_images=10,
        notes="Storyboards of beats that name characters: image_input takes 1-10 reference images (data URIs or "
              "uploaded files) 'for single or multi-reference generation'. size 1K (1024 px; the output is "
              "resized to the draft size). No seed input: a beat's seed is in the cache key (a new seed is a new "
              "prediction, a new image) but cannot reproduce an image."),
    ReplicateModel(
        ref="wan-video/wan-2.2-i2v-fast", kind="video", builder=wan,
        schema_source=NODETOOL + "video/generate.py (Wan_2_2_I2V_Fast, version 4eaf2b01; aspect_ratio from "
                                 "version b609b267, nodetool commit 31930bb)",
        fields={"prompt": "prompt", "seed": "seed", "image": "image", "duration": "num_frames",
                "fps": "frames_per_second", "resolution": "resolution", "aspect_ratio": "aspect_ratio",
                "interpolate": "interpolate_output"},
        output="url", output_ext=".mp4", chunk_seconds=(5.0, 7.0), fps=16, ratios=("16:9", "9:16"),
        interpolate_output=False,
        notes="81-121 frames (4k+1) at 16 fps: 5 s chunks are 81 frames (5.06 s), 7 s chunks 113 frames. "
              "Priced per output video by resolution (480p 832x480, 720p 1280x720) and interpolate_output "
              "(True: ffmpeg to 30 fps, a dearer tier), sent explicitly as False: the 16 fps frames are the "
              "chunk plan's. num_frames and frames_per_second are not in any published tier (the schema: 'the "
              "pricing of this model is based on the video duration at 16 fps'); whether 82-121 frames cost "
              "more than 81 no offline source says. aspect_ratio is 16:9 or 9:16 only (version b609b267; "
              "version 4eaf2b01 dropped the field and follows the start image: the value is then ignored)."),
    ReplicateModel(
        ref="kwaivgi/kling-v2.1", kind="video", builder=kling,
        schema_source=NODETOOL + "video/generate.py (Kling_V2_1, version daad218f)",
        fields={"prompt": "prompt", "image": "start_image", "duration": "duration", "mode": "mode"},
        output="url", output_ext=".mp4", chunk_seconds=(5.0, 10.0), fps=24, ratios=("16:9", "9:16", "1:1"),
        notes="No seed and no aspect_ratio input: the output follows the start image. Draft (480p-class) "
              "requests run in standard mode (720p)."),
    ReplicateModel(
        ref="bytedance/seedance-1-lite", kind="video", builder=seedance,
        schema_source="https://replicate.com/bytedance/seedance-1-lite/versions/"
                      "f22bbc7d965c70af30ba3b157e3bb05d232136555885e934b92878ad773f48c1/api",
        fields={"prompt": "prompt", "seed": "seed", "image": "image", "duration": "duration",
                "resolution": "resolution", "fps": "fps", "aspect_ratio": "aspect_ratio"},
        output="url", output_ext=".mp4", chunk_seconds=(5.0, 10.0), fps=24,
        ratios=("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "9:21"),
        notes="duration 2-12 s, fps 24 only; aspect_ratio is 'ignored if an image is used' (the start image's)."),
    ReplicateModel(
        ref="stability-ai/stable-audio-2.5", kind="audio", builder=stable_audio,
        schema_source="https://replicate.com/stability-ai/stable-audio-2.5/versions/"
                      "a61ac8edbb27cd2eda1b2eff2bbc03dcff1131f5560836ff77a052df05b77491/api",
        fields={"prompt": "prompt", "seed": "seed", "duration": "duration"},
        output="url", output_ext=".mp3", max_duration_s=190.0, notes="duration 1-190 s (schema maximum)."),
    ReplicateModel(
        ref="meta/musicgen", kind="audio", builder=musicgen,
        version="671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb",
        schema_source=NODETOOL + "audio/generate.py (MusicGen, version 671ac645); "
                                 "https://github.com/replicate/cog-musicgen/blob/647e795/predict.py",
        fields={"prompt": "prompt", "seed": "seed", "duration": "duration"},
        output="url", output_ext=".mp3", max_duration_s=300.0, gpu_seconds_per_output_second=2.0,
        notes="The pinned version's duration has no maximum, and its predict.py passes it to AudioCraft, which "
              "generates past its 30 s window by extended generation (18 s strides): so not 30 s. 300 s is this "
              "registry's cap (at ~2-3.3 GPU s per second of audio it fits the 1200 s audio deadline)."),
    ReplicateModel(
        ref="jaaari/kokoro-82m", kind="speech", builder=kokoro,
        version="f559560eb822dc509045f3921a1921234918b91739db4bf3daab2169b71c7a13",
        schema_source="https://replicate.com/jaaari/kokoro-82m/versions/"
                      "f559560eb822dc509045f3921a1921234918b91739db4bf3daab2169b71c7a13/api",
        fields={"prompt": "text", "voice": "voice", "speed": "speed"},
        output="url", output_ext=".wav", gpu_seconds_per_output_second=0.5,
        notes="Kokoro v1.0 (82M parameters, StyleTTS2): text, voice (af_bella, am_adam, bf_emma, bm_george, ...; "
              "default af_bella), speed 0.5-2; one WAV at 24 kHz. The pinned version is the one public clients "
              "call (f559560e). Sentence times are found at the clip's pauses."),
    ReplicateModel(
        ref="meta/meta-llama-3-70b-instruct", kind="text", builder=llama,
        schema_source=NODETOOL + "text/generate.py (Llama3_70B_Instruct, version fbfb20b4)",
        fields={"prompt": "prompt", "prompt_template": "prompt_template", "max_tokens": "max_tokens"},
        output="text_tokens", output_ext=".txt",
        notes="No system_prompt input: the system prompt is part of a Llama 3 chat-formatted prompt."),
]}
"""Every model the provider can call, by ``ref``."""

DEFAULTS: dict[str, str] = {
    "image": "black-forest-labs/flux-schnell",
    "video": "wan-video/wan-2.2-i2v-fast",
    "audio": "stability-ai/stable-audio-2.5",
    "speech": "jaaari/kokoro-82m",
    "text": "meta/meta-llama-3-70b-instruct",
}
"""Default model per kind."""

REFERENCE_DEFAULT = "bytedance/seedream-4"
"""The image model for storyboards made from character reference images, when the chosen image
model takes none (``ReplicateModel.max_reference_images``)."""


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``("owner/name", version or None)`` of a Replicate model reference ``owner/name[:version]``,
    parsed by the replicate library (``replicate.identifier.ModelVersionIdentifier``: the format
    its client and Replicate's API use). Raises ValueError for anything else."""
    from replicate.identifier import ModelVersionIdentifier

    ident = ModelVersionIdentifier.parse(ref)
    return f"{ident.owner}/{ident.name}", ident.version


def get_model(ref: str, kind: Kind | None = None) -> ReplicateModel:
    """The registry entry for ``ref`` ("owner/name" or "owner/name:version", ``parse_ref``). Raises
    ValueError naming the known models when there is none, the reference is malformed, or the
    model is not of ``kind``; and for a version other than the pinned one."""
    try:
        base, version = parse_ref(ref)
    except ValueError:  # malformed: reported as an unknown model, with the known ones
        base, version = ref, None
    model = MODELS.get(base)
    if model is None or (kind is not None and model.kind != kind):
        known = ", ".join(r for r, m in MODELS.items() if kind is None or m.kind == kind)
        raise ValueError(f"unknown Replicate {kind or ''} model {ref!r}; known: {known}".replace("  ", " "))
    if version and model.version and version != model.version:
        raise ValueError(f"{base}: version {version} is not the pinned version {model.version}")
    return model


def estimate_video_usd(beat_durations_s: list[float], *, music_s: float | None = None, width: int = 854,
                       height: int = 480, image_model: str = DEFAULTS["image"], video_model: str = DEFAULTS["video"],
                       music_model: str = DEFAULTS["audio"], chunk_seconds: float | None = None) -> dict[str, float]:
    """Estimated price (USD) of a whole video before anything is generated: one storyboard image
    per beat, ceil(beat / chunk) chunks per beat, one music track of ``music_s`` (default: the
    video's length). Returns {"images", "chunks", "music", "total", "chunk_count"}."""
    im, vm, am = get_model(image_model, "image"), get_model(video_model, "video"), get_model(music_model, "audio")
    chunk = chunk_seconds or vm.chunk_seconds[0]
    params = {"width": width, "height": height}

    def req(media_type: str, model: ReplicateModel, **p: Any) -> GenerationRequest:
        return GenerationRequest(media_type=media_type, provider="replicate", model=model.id, params={**params, **p})

    images = sum(im.estimate_usd(req("image", im)) for _ in beat_durations_s)
    count = sum(max(1, math.ceil(d / chunk - 1e-9)) for d in beat_durations_s)
    chunks = count * vm.estimate_usd(req("video", vm, duration_s=chunk, fps=vm.fps))
    total_s = music_s if music_s is not None else sum(beat_durations_s)
    music = am.estimate_usd(req("audio", am, duration_s=math.ceil(total_s)))
    return {"images": round(images, 6), "chunks": round(chunks, 6), "music": round(music, 6),
            "total": round(images + chunks + music, 6), "chunk_count": float(count)}
