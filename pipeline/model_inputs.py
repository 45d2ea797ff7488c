"""How a pipeline request becomes a Replicate model's input: the aspect ratio to generate at
(:func:`request_ratio`, :func:`choose_ratio`), resolution tiers, Wan's frame counts, chunk
durations, and one input builder per model family (``(model, request, extra, ratio) -> input``).

The builders follow each model's published input schema; ``pipeline.models`` names the schema
source of every entry. Pure functions: no network, no files.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from pipeline.generation import GenerationRequest

if TYPE_CHECKING:
    from pipeline.models import ReplicateModel

RATIOS: dict[str, float] = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "3:2": 3 / 2,
                            "2:3": 2 / 3, "5:4": 5 / 4, "4:5": 4 / 5, "21:9": 21 / 9, "9:21": 9 / 21}
"""Named aspect ratios (width / height) a request's size is matched to."""


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


def ratio_value(ratio: str) -> float:
    """Width / height of "W:H". Raises ValueError if it is not two positive integers."""
    w, sep, h = ratio.partition(":")
    if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise ValueError(f"not an aspect ratio 'W:H': {ratio!r}")
    return int(w) / int(h)


def request_ratio(params: dict[str, Any]) -> str:
    """The named ratio (:data:`RATIOS`) nearest, in log scale, to the request's width/height (pixels;
    854x480 -> "16:9")."""
    ratio = int(params.get("width", 16)) / max(1, int(params.get("height", 9)))
    return min(RATIOS, key=lambda k: abs(math.log(RATIOS[k] / ratio)))


def choose_ratio(target: str, supported: Sequence[str]) -> str:
    """The ratio of ``supported`` to generate at for a ``target`` ratio ("W:H"): the target itself
    when supported; else the closest in log scale (a centre crop then keeps the largest share of the
    frame: exp(-|log(r/target)|)); on a tie, one that *contains* the target (at the same short side,
    at least as wide and as tall, so the crop needs no upscaling); then the first listed. 1:1 on
    ("16:9", "9:16") is "16:9". Raises ValueError when ``supported`` is empty."""
    if not supported:
        raise ValueError(f"no supported aspect ratio to generate {target} at")
    if target in supported:
        return target
    t = ratio_value(target)

    def frame(v: float) -> tuple[float, float]:  # (width, height) with the short side 1
        return (v, 1.0) if v >= 1 else (1.0, 1 / v)

    def key(r: str) -> tuple[float, bool, int]:
        (w, h), (tw, th) = frame(ratio_value(r)), frame(t)
        return round(abs(math.log(ratio_value(r) / t)), 9), not (w >= tw - 1e-9 and h >= th - 1e-9), supported.index(r)

    return min(supported, key=key)


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


# --- input builders: (model, request, extra, generated ratio) -> Replicate input ------------------

def flux_schnell(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: str) -> dict[str, Any]:
    return {"prompt": r.prompt, "aspect_ratio": ratio, "num_outputs": 1, "num_inference_steps": 4,
            "output_format": "png", "go_fast": True, "megapixels": "1", **_seed(r)}


def flux_pro(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: str) -> dict[str, Any]:
    return {"prompt": r.prompt, "aspect_ratio": ratio, "output_format": "png", "safety_tolerance": 2,
            "prompt_upsampling": False, **_seed(r)}


def seedream(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: str) -> dict[str, Any]:
    """Seedream 4: text-to-image, or from reference images (``extra["references"]``: data URIs or
    uploaded file URLs, 1-10) in ``image_input``. One 1K image (the draft size is far below it);
    the model has no seed input."""
    refs = list(extra.get("references") or [])
    return {"prompt": r.prompt, "aspect_ratio": ratio, "size": "1K", "max_images": 1,
            "sequential_image_generation": "disabled", **({"image_input": refs} if refs else {})}


def wan(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: str) -> dict[str, Any]:
    fps = m.fps or 16
    return {"image": extra["image"], "prompt": r.prompt, "num_frames": wan_frames(float(r.params["duration_s"]), fps),
            "frames_per_second": fps, "resolution": m.resolution(r.params), "aspect_ratio": ratio,
            "interpolate_output": bool(m.interpolate_output), "go_fast": True, **_seed(r)}


def kling(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: str) -> dict[str, Any]:
    return {"start_image": extra["image"], "prompt": r.prompt,
            "duration": snap_duration(float(r.params["duration_s"]), m.chunk_seconds),
            "mode": "standard" if m.resolution(r.params) == "720p" else "pro", "negative_prompt": ""}


def seedance(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: str) -> dict[str, Any]:
    return {"image": extra["image"], "prompt": r.prompt,
            "duration": snap_duration(float(r.params["duration_s"]), m.chunk_seconds),
            "resolution": m.resolution(r.params), "aspect_ratio": ratio, "fps": m.fps or 24, "camera_fixed": False,
            **_seed(r)}


def _music_prompt(r: GenerationRequest) -> str:
    bpm = r.params.get("bpm")
    return f"{r.prompt}, {bpm} BPM" if bpm else r.prompt


def stable_audio(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: None) -> dict[str, Any]:
    return {"prompt": _music_prompt(r), "duration": int(math.ceil(float(r.params["duration_s"]))), **_seed(r)}


def musicgen(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: None) -> dict[str, Any]:
    return {"prompt": _music_prompt(r), "duration": int(math.ceil(float(r.params["duration_s"]))),
            "model_version": "stereo-large", "output_format": "mp3", "normalization_strategy": "peak", **_seed(r)}


def kokoro(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: None) -> dict[str, Any]:
    return {"text": r.prompt, "voice": str(r.params.get("voice") or "af_bella"),
            "speed": float(r.params.get("speed", 1.0))}


LLAMA3_CHAT = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
"""Llama 3's instruct chat format (https://www.llama.com/docs/model-cards-and-prompt-formats/meta-llama-3/);
Replicate's own default ``prompt_template`` for this model has the same shape."""


def llama(m: "ReplicateModel", r: GenerationRequest, extra: dict[str, Any], ratio: None) -> dict[str, Any]:
    # The schema has no system_prompt field (an unknown field is dropped silently): the system prompt
    # goes into a chat-formatted prompt with prompt_template "{prompt}", as its description advises.
    prompt = LLAMA3_CHAT.format(system=extra.get("system_prompt", ""), user=r.prompt)
    return {"prompt": prompt, "prompt_template": "{prompt}", "max_tokens": int(extra.get("max_tokens", 2048)),
            "temperature": 0.2, "top_p": 0.9}
