"""The Replicate model registry: which models the ``replicate`` provider can call, how their inputs
are named, what they return, how long a video chunk they make, and what they cost.

Each entry is a :class:`ReplicateModel`. ``build_input`` turns a pipeline ``GenerationRequest``
into that model's Replicate input (field names differ: ``image`` / ``start_image``, ``num_frames``
/ ``duration`` ...); ``estimate_usd`` prices a request before it is made (for ``max_cost_usd``);
``cost`` prices what actually came back (images, seconds of video or audio, GPU seconds, tokens).

Prices are USD, per the unit named in ``Price.unit``, with ``Price.source`` saying where the
number comes from. This registry was written offline: every price is the one published on the
model's replicate.com page as the authors last knew it, and the ones marked "estimate" in their
source string are not certain (re-check the linked page before relying on them; Replicate changes
prices). Defaults (:data:`DEFAULTS`): ``black-forest-labs/flux-schnell`` for storyboard images,
``wan-video/wan-2.2-i2v-fast`` for chunks (5 s chunks at 16 fps), ``stability-ai/stable-audio-2.5``
for music and ``meta/meta-llama-3-70b-instruct`` as the planner.

Nothing here makes a network call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pipeline.generation import GenerationRequest

Kind = Literal["image", "video", "audio", "text"]
PriceUnit = Literal["image", "video", "video_second", "audio", "audio_second", "gpu_second", "token"]
OutputShape = Literal["url", "url_list", "text_tokens"]


@dataclass(frozen=True)
class Price:
    """``usd`` per ``unit``: "image" (per output image), "video"/"audio" (per output file),
    "video_second"/"audio_second" (per second of output), "gpu_second" (per second of the
    prediction's ``metrics.predict_time``), "token" (``usd`` per input token, ``usd_out`` per
    output token). ``source`` is the page the price was taken from (and "estimate" when unsure)."""

    usd: float
    unit: PriceUnit
    source: str
    usd_out: float = 0.0


@dataclass(frozen=True)
class Cost:
    """What one prediction cost: ``units`` of ``unit`` at ``price.usd`` each, ``usd`` in total."""

    units: float
    unit: str
    usd: float
    price: Price


@dataclass(frozen=True)
class ReplicateModel:
    """One callable Replicate model.

    - ``ref``: "owner/name". ``version``: a pinned version id, or None for an official model
      (created with ``POST /v1/models/{owner}/{name}/predictions``; a pinned version is created
      with ``POST /v1/predictions``). ``id`` is what manifests record: ``ref`` or ``ref:version``.
    - ``kind``: image, video, audio or text (the planner).
    - ``fields``: the model's input field for each role (prompt, seed, image, duration, ...).
    - ``output``: "url" (one URL), "url_list" (a list, the first is used) or "text_tokens" (a list
      of strings to join). ``output_ext``: file extension when the URL has none.
    - ``prices``: per resolution tier ("480p", "720p", "1080p") or "default".
    - video: ``chunk_seconds`` the chunk lengths (s) the model can generate, the first the default;
      ``fps`` its frame rate. audio: ``max_duration_s`` the longest track one call makes.
    """

    ref: str
    kind: Kind
    fields: dict[str, str]
    output: OutputShape
    output_ext: str
    prices: dict[str, Price]
    builder: Callable[["ReplicateModel", GenerationRequest, dict[str, Any]], dict[str, Any]] = field(repr=False)
    version: str | None = None
    chunk_seconds: tuple[float, ...] = ()
    fps: int | None = None
    max_duration_s: float | None = None
    gpu_seconds_per_output_second: float = 0.0
    """For "gpu_second" prices: the estimate of predict_time per second of output (estimates only)."""
    notes: str = ""

    @property
    def id(self) -> str:
        """What manifests and requests record as the model: "owner/name", or "owner/name:version"."""
        return f"{self.ref}:{self.version}" if self.version else self.ref

    # --- inputs --------------------------------------------------------------------------------

    def build_input(self, request: GenerationRequest, **extra: Any) -> dict[str, Any]:
        """The Replicate ``input`` for ``request``. ``extra``: ``image`` (a data URI of the start
        frame for video models), ``system_prompt``/``max_tokens`` for the planner."""
        return self.builder(self, request, extra)

    # --- prices --------------------------------------------------------------------------------

    def tier(self, params: dict[str, Any]) -> str:
        """Price tier of a request: its resolution class for tiered models, else "default"."""
        if "default" in self.prices:
            return "default"
        return resolution_tier(params, allowed=tuple(self.prices))

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

    def estimate_usd(self, request: GenerationRequest, *, prompt_chars: int = 0, max_tokens: int = 0) -> float:
        """Price of ``request`` before it is made (USD): one image, the requested seconds, one file,
        estimated GPU seconds, or prompt tokens (4 characters each) plus ``max_tokens`` output."""
        price = self.price(request.params)
        if price.unit in ("image", "video", "audio"):
            return round(price.usd, 6)
        if price.unit in ("video_second", "audio_second"):
            return round(price.usd * self.generated_seconds(request.params), 6)
        if price.unit == "gpu_second":
            return round(price.usd * self.gpu_seconds_per_output_second * self.generated_seconds(request.params), 6)
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


# --- helpers -----------------------------------------------------------------------------------

def resolution_tier(params: dict[str, Any], allowed: tuple[str, ...] = ("480p", "720p", "1080p")) -> str:
    """The smallest of ``allowed`` tiers ("480p", "720p", "1080p") that holds the request's short
    side (pixels); the largest allowed when it is bigger than all of them."""
    short = min(int(params.get("width", 854)), int(params.get("height", 480)))
    tiers = sorted((t for t in allowed if t.endswith("p")), key=lambda t: int(t[:-1]))
    for t in tiers:
        if short <= int(t[:-1]):
            return t
    return tiers[-1]


def aspect_ratio(params: dict[str, Any]) -> str:
    """The nearest of "16:9", "9:16", "1:1", "4:3", "3:4" to the request's width/height."""
    ratio = int(params.get("width", 16)) / max(1, int(params.get("height", 9)))
    choices = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4}
    return min(choices, key=lambda k: abs(math.log(choices[k] / ratio)))


def wan_frames(seconds: float, fps: int) -> int:
    """Wan 2.2's frame count for ``seconds`` at ``fps``: 4k+1 frames, at least 81, at most 121."""
    frames = 4 * math.ceil(round(seconds * fps, 6) / 4) + 1
    return max(81, min(121, frames))


def snap_duration(seconds: float, allowed: tuple[float, ...]) -> int:
    """The shortest allowed duration (whole seconds) that covers ``seconds``, else the longest."""
    for d in sorted(allowed):
        if d + 1e-9 >= seconds:
            return int(d)
    return int(max(allowed))


def _seed(request: GenerationRequest) -> dict[str, Any]:
    return {} if request.seed is None else {"seed": int(request.seed)}


# --- input builders ----------------------------------------------------------------------------

def _flux_schnell(m: ReplicateModel, r: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": r.prompt, "aspect_ratio": aspect_ratio(r.params), "num_outputs": 1,
            "num_inference_steps": 4, "output_format": "png", "go_fast": True, "megapixels": "1", **_seed(r)}


def _flux_pro(m: ReplicateModel, r: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": r.prompt, "aspect_ratio": aspect_ratio(r.params), "output_format": "png",
            "safety_tolerance": 2, "prompt_upsampling": False, **_seed(r)}


def _wan(m: ReplicateModel, r: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    fps = m.fps or 16
    return {"image": extra["image"], "prompt": r.prompt,
            "num_frames": wan_frames(float(r.params["duration_s"]), fps), "frames_per_second": fps,
            "resolution": m.tier(r.params), "go_fast": True, **_seed(r)}


def _kling(m: ReplicateModel, r: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    return {"start_image": extra["image"], "prompt": r.prompt,
            "duration": snap_duration(float(r.params["duration_s"]), m.chunk_seconds),
            "mode": "standard" if m.tier(r.params) == "720p" else "pro", "negative_prompt": ""}


def _seedance(m: ReplicateModel, r: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    return {"image": extra["image"], "prompt": r.prompt,
            "duration": snap_duration(float(r.params["duration_s"]), m.chunk_seconds),
            "resolution": m.tier(r.params), "fps": m.fps or 24, "camera_fixed": False, **_seed(r)}


def _music_prompt(r: GenerationRequest) -> str:
    bpm = r.params.get("bpm")
    return f"{r.prompt}, {bpm} BPM" if bpm else r.prompt


def _stable_audio(m: ReplicateModel, r: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": _music_prompt(r), "duration": int(math.ceil(float(r.params["duration_s"]))), **_seed(r)}


def _musicgen(m: ReplicateModel, r: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": _music_prompt(r), "duration": int(math.ceil(float(r.params["duration_s"]))),
            "model_version": "stereo-large", "output_format": "mp3", "normalization_strategy": "peak", **_seed(r)}


def _llama(m: ReplicateModel, r: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": r.prompt, "system_prompt": extra.get("system_prompt", ""),
            "max_tokens": int(extra.get("max_tokens", 2048)), "temperature": 0.2, "top_p": 0.9}


# --- the registry ------------------------------------------------------------------------------

_P = "https://replicate.com/"

MODELS: dict[str, ReplicateModel] = {m.ref: m for m in [
    ReplicateModel(
        ref="black-forest-labs/flux-schnell", kind="image", builder=_flux_schnell,
        fields={"prompt": "prompt", "seed": "seed", "aspect_ratio": "aspect_ratio"},
        output="url_list", output_ext=".png",
        prices={"default": Price(0.003, "image", _P + "black-forest-labs/flux-schnell "
                                 "(model page: $3.00 per thousand output images)")},
        notes="1 MP output (1344x768 at 16:9); the provider resizes it to the draft resolution."),
    ReplicateModel(
        ref="black-forest-labs/flux-1.1-pro", kind="image", builder=_flux_pro,
        fields={"prompt": "prompt", "seed": "seed", "aspect_ratio": "aspect_ratio"},
        output="url", output_ext=".png",
        prices={"default": Price(0.04, "image", _P + "black-forest-labs/flux-1.1-pro "
                                 "(model page: $0.04 per output image)")}),
    ReplicateModel(
        ref="wan-video/wan-2.2-i2v-fast", kind="video", builder=_wan,
        fields={"prompt": "prompt", "seed": "seed", "image": "image", "duration": "num_frames",
                "fps": "frames_per_second", "resolution": "resolution"},
        output="url", output_ext=".mp4", chunk_seconds=(5.0, 7.0), fps=16,
        prices={"480p": Price(0.05, "video", _P + "wan-video/wan-2.2-i2v-fast "
                              "(estimate: $0.05 per output video at 480p as last seen on the model page)"),
                "720p": Price(0.11, "video", _P + "wan-video/wan-2.2-i2v-fast "
                              "(estimate: $0.11 per output video at 720p as last seen on the model page)")},
        notes="81-121 frames (4k+1) at 16 fps: 5 s chunks are 81 frames (5.06 s), 7 s chunks 113 frames."),
    ReplicateModel(
        ref="kwaivgi/kling-v2.1", kind="video", builder=_kling,
        fields={"prompt": "prompt", "image": "start_image", "duration": "duration", "mode": "mode"},
        output="url", output_ext=".mp4", chunk_seconds=(5.0, 10.0), fps=24,
        prices={"720p": Price(0.05, "video_second", _P + "kwaivgi/kling-v2.1 "
                              "(estimate: $0.05 per second of output video, standard mode 720p)"),
                "1080p": Price(0.09, "video_second", _P + "kwaivgi/kling-v2.1 "
                               "(estimate: $0.09 per second of output video, pro mode 1080p)")},
        notes="No seed input; draft (480p-class) requests run in standard mode (720p)."),
    ReplicateModel(
        ref="bytedance/seedance-1-lite", kind="video", builder=_seedance,
        fields={"prompt": "prompt", "seed": "seed", "image": "image", "duration": "duration",
                "resolution": "resolution", "fps": "fps"},
        output="url", output_ext=".mp4", chunk_seconds=(5.0, 10.0), fps=24,
        prices={"480p": Price(0.018, "video_second", _P + "bytedance/seedance-1-lite "
                              "(estimate: $0.018 per second of output video at 480p)"),
                "720p": Price(0.036, "video_second", _P + "bytedance/seedance-1-lite "
                              "(estimate: $0.036 per second of output video at 720p)"),
                "1080p": Price(0.072, "video_second", _P + "bytedance/seedance-1-lite "
                               "(estimate: $0.072 per second of output video at 1080p)")}),
    ReplicateModel(
        ref="stability-ai/stable-audio-2.5", kind="audio", builder=_stable_audio,
        fields={"prompt": "prompt", "seed": "seed", "duration": "duration"},
        output="url", output_ext=".mp3", max_duration_s=190.0,
        prices={"default": Price(0.20, "audio", _P + "stability-ai/stable-audio-2.5 "
                                 "(estimate: $0.20 per output file as last seen on the model page)")}),
    ReplicateModel(
        ref="meta/musicgen", kind="audio", builder=_musicgen,
        version="671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb",
        fields={"prompt": "prompt", "seed": "seed", "duration": "duration"},
        output="url", output_ext=".mp3", max_duration_s=300.0, gpu_seconds_per_output_second=2.0,
        prices={"default": Price(0.0014, "gpu_second", _P + "meta/musicgen (estimate: billed by "
                                 "predict_time on Nvidia A100 (80GB) at $0.0014/s, "
                                 "https://replicate.com/pricing; ~2 GPU s per second of audio)")}),
    ReplicateModel(
        ref="meta/meta-llama-3-70b-instruct", kind="text", builder=_llama,
        fields={"prompt": "prompt", "system_prompt": "system_prompt", "max_tokens": "max_tokens"},
        output="text_tokens", output_ext=".txt",
        prices={"default": Price(0.65e-6, "token", _P + "meta/meta-llama-3-70b-instruct "
                                 "(model page: $0.65 per million input tokens, $2.75 per million output tokens)",
                                 usd_out=2.75e-6)}),
]}
"""Every model the provider can call, by ``ref``."""

DEFAULTS: dict[str, str] = {
    "image": "black-forest-labs/flux-schnell",
    "video": "wan-video/wan-2.2-i2v-fast",
    "audio": "stability-ai/stable-audio-2.5",
    "text": "meta/meta-llama-3-70b-instruct",
}
"""Default model per kind."""


def get_model(ref: str, kind: Kind | None = None) -> ReplicateModel:
    """The registry entry for ``ref`` ("owner/name" or "owner/name:version"). Raises ValueError
    naming the known models when there is none (or it is not of ``kind``)."""
    base, _, version = ref.partition(":")
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
