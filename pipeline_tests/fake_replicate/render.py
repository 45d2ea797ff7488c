"""What the fake models produce: real media rendered with the local renderer (Pillow images,
ffmpeg camera moves over the input image, synthesized music) and JSON beats from the local planner.

``render(server, pred)`` returns (output, metrics); output files are registered with
``server._add_file`` and served from ``/files/...``. Image inputs are data URIs or the server's own
uploaded-file URLs (``server.read_input_file``).
"""

from __future__ import annotations

import base64
import io
import json
import re
import tempfile
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from pipeline_tests.fake_replicate.state import FAKE_MODELS, FLUX_SIZES, FakePrediction

if TYPE_CHECKING:
    from pipeline_tests.fake_replicate.server import FakeReplicate


def even(x: float) -> int:
    """``x`` rounded to an even number of pixels, at least 16."""
    return max(16, int(round(x / 2)) * 2)


def decode_image_input(server: "FakeReplicate", value: str, work: Path) -> Path:
    """The image a model input names (a data URI, or a URL of a file uploaded to ``server``),
    written into ``work``. Raises ValueError for anything else."""
    m = re.match(r"data:image/(png|jpeg|webp);base64,(.*)$", value, re.S)
    if m:
        path = work / f"input.{'jpg' if m.group(1) == 'jpeg' else m.group(1)}"
        path.write_bytes(base64.b64decode(m.group(2)))
        return path
    data = server.read_input_file(value)
    if data is None:
        raise ValueError("image must be a data URI (data:image/...;base64,...) or an uploaded file's URL")
    path = work / "input.png"
    path.write_bytes(data)
    return path


def plan_text(prompt: str) -> str:
    """The fake planner's answer: the local planner's beats for the prompt's brief, as JSON."""
    from pipeline.providers.local import plan_brief

    brief = re.search(r"BRIEF:\n<<<\n(.*?)\n>>>", prompt, re.S)
    length = re.search(r"for a (\d+(?:\.\d+)?)-second video", prompt)
    most = re.search(r"and (\d+) beats", prompt)
    if not (brief and length and most):
        return "I can only plan briefs."
    beats = plan_brief(brief.group(1), duration_s=float(length.group(1)), max_beats=int(most.group(1)))
    return json.dumps({"beats": [{"prompt": b.prompt, "duration_s": b.duration_s, "motion": b.motion} for b in beats]})


def reference_problems(server: "FakeReplicate", ref: str, inp: dict[str, Any]) -> list[str]:
    """Why a create's reference images (a model's ``references`` field) are refused (422), one line
    each: not a list of 1..max items, an item neither an image data URI nor a live uploaded file, or
    one that does not decode as an image. Empty when they are fine or the model takes none."""
    spec = FAKE_MODELS[ref]
    if "references" not in spec or spec["references"][0] not in inp:
        return []
    field, most = spec["references"]
    value = inp[field]
    if not isinstance(value, list) or not 1 <= len(value) <= most:
        return [f"input.{field}: must be a list of 1-{most} images"]
    problems = []
    with tempfile.TemporaryDirectory(dir=server._tmp.name) as work:
        for i, item in enumerate(value):
            try:
                path = decode_image_input(server, str(item), Path(work))
                with Image.open(path) as im:
                    im.load()
            except (ValueError, OSError) as exc:
                problems.append(f"input.{field}[{i}]: not a usable image ({type(exc).__name__}: {exc})")
            finally:
                for f in Path(work).iterdir():
                    f.unlink()
    return problems


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Write mono float ``samples`` (-1..1, clipped) at ``rate`` Hz as 16-bit PCM WAV; returns ``path``."""
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def render(server: "FakeReplicate", pred: FakePrediction) -> tuple[Any, dict[str, Any]]:
    """(output, metrics) of ``pred``: output file URLs (or planner tokens) and model metrics."""
    spec = FAKE_MODELS[pred.model]
    inp = pred.input
    work = Path(tempfile.mkdtemp(dir=server._tmp.name))
    kind = spec["kind"]
    if kind == "image":
        return _image(server, pred, spec, work)
    if kind == "video":
        return _video(server, pred, spec, work)
    if kind == "audio":
        return _audio(server, pred, spec, work)
    if kind == "speech":
        return _speech(server, pred, work)
    prompt = str(inp["prompt"])
    if "bad_json" in pred.outcome:
        text = 'Sure! Here are the beats: {"beats": [{"prompt": "The sun heats the ocean", "duration_s": '
    else:
        text = plan_text(prompt)
    tokens = [text[i:i + 7] for i in range(0, len(text), 7)]
    return tokens, {"input_token_count": max(1, len(prompt) // 4), "output_token_count": max(1, len(text) // 4)}


def _image(server: "FakeReplicate", pred: FakePrediction, spec: dict[str, Any], work: Path):
    from pipeline.generation import GenerationRequest
    from pipeline.providers.local import LocalProvider

    inp = pred.input
    w, h = FLUX_SIZES.get(str(inp.get("aspect_ratio", "1:1")), (1024, 1024))
    w, h = even(w * server.render_scale), even(h * server.render_scale)
    req = GenerationRequest(media_type="image", provider="fake", model=pred.model, prompt=str(inp["prompt"]),
                            seed=inp.get("seed"), params={"width": w, "height": h})
    refs = inp.get(spec["references"][0]) if "references" in spec else None
    if refs:  # a reference model: the characters drawn from the images it was given
        paths = []
        for i, item in enumerate(refs):
            sub = work / f"ref{i}"
            sub.mkdir()
            paths.append((str(i + 1), decode_image_input(server, str(item), sub)))
        png = LocalProvider().render_image_with_references(req, paths, work).path
    else:
        png = LocalProvider().render_image(req, work).path
    fmt = str(inp.get("output_format", spec.get("format", "webp")))
    with Image.open(png) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    url = server._add_file(pred, f"out-0.{fmt}", buf.getvalue(), f"image/{'jpeg' if fmt == 'jpg' else fmt}")
    return ([url] if spec["output"] == "list" else url), {"image_count": 1}


def _video(server: "FakeReplicate", pred: FakePrediction, spec: dict[str, Any], work: Path):
    from pipeline import media

    inp = pred.input
    image = decode_image_input(server, str(inp[spec["image"]]), work)
    with Image.open(image) as im:
        iw, ih = im.size
    if "frames" in spec:
        fps = int(inp.get(spec["fps"][0], spec["fps"][1]))
        frames = int(inp.get(spec["frames"][0], spec["frames"][1]))
        seconds = frames / fps
    else:
        fps = spec.get("fixed_fps") or int(inp.get(spec["fps"][0], spec["fps"][1]))
        seconds = float(inp.get(spec["duration"][0], spec["duration"][1]))
    if spec.get("mode_resolution"):
        res = "1080p" if inp.get("mode") == "pro" else "720p"
    else:
        res = str(inp.get(spec["resolution"][0], spec["resolution"][1]))
    short = int(res[:-1])
    grid = spec.get("grid", 2)
    ratio = str(inp.get("aspect_ratio") or "") if spec.get("aspect_ratio") else ""
    if ratio:  # Wan generates at its aspect_ratio (16:9 or 9:16), filling it with the image (centre crop)
        rw, rh = (int(v) for v in ratio.split(":"))
        scale = short / min(rw, rh)
        w, h = (round(rw * scale / grid) * grid, round(rh * scale / grid) * grid)
        fitted = work / "fitted.png"
        with Image.open(image) as im:
            ImageOps.fit(im.convert("RGB"), (w, h), method=Image.Resampling.LANCZOS).save(fitted)
        image = fitted
    else:  # at the image's own ratio
        scale = short / min(iw, ih)
        w, h = (round(iw * scale / grid) * grid, round(ih * scale / grid) * grid)
    w, h = even(w * server.render_scale), even(h * server.render_scale)
    out = work / "output.mp4"
    media.render_camera_move(image, out, width=w, height=h, fps=fps, seconds=seconds,
                             move=media.camera_move_for(str(inp["prompt"])), speed=0.6)
    return server._add_file(pred, "output.mp4", out.read_bytes(), "video/mp4"), {}


def _audio(server: "FakeReplicate", pred: FakePrediction, spec: dict[str, Any], work: Path):
    from pipeline import media
    from pipeline.providers.local import SAMPLE_RATE, synthesize_music

    inp = pred.input
    seconds = float(inp.get(spec["duration"][0], spec["duration"][1]))
    m = re.search(r"(\d+)\s*BPM", str(inp["prompt"]), re.I)
    samples = synthesize_music(str(inp["prompt"]), bpm=int(m.group(1)) if m else 100, duration_s=seconds,
                               seed=int(inp.get("seed") or 0))
    wav = write_wav(work / "output.wav", samples, SAMPLE_RATE)
    fmt = str(inp.get(spec.get("format_field", ""), spec["format"]))
    if fmt == "mp3":
        mp3 = work / "output.mp3"
        media.run_ffmpeg(["-i", str(wav), "-c:a", "libmp3lame", "-b:a", "128k", str(mp3)], what="encode mp3")
        return server._add_file(pred, "output.mp3", mp3.read_bytes(), "audio/mpeg"), {}
    return server._add_file(pred, "output.wav", wav.read_bytes(), "audio/wav"), {}


SPEECH_RATE = 24_000
"""Kokoro's output sample rate (Hz)."""


def speech_like(text: str, *, rate: int = SPEECH_RATE, chars_per_s: float = 15.0, gap_s: float = 0.35) -> np.ndarray:
    """A stand-in for a voice reading ``text``: per sentence, a burst of speech-band sound (a 140 Hz
    buzz's harmonics up to 3.4 kHz, syllable-rate amplitude, ``len / chars_per_s`` seconds), with
    ``gap_s`` of silence between sentences and 0.1 s around. Mono float32, peak 0.9."""
    from pipeline.narration import sentences

    parts = [np.zeros(int(0.1 * rate), np.float32)]
    for i, sentence in enumerate(sentences(text) or [text]):
        n = int(max(0.3, len(sentence) / chars_per_s) * rate)
        t = np.arange(n) / rate
        buzz = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(2, 25))
        syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
        edge = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
        parts.append((buzz * syllables * edge).astype(np.float32))
        parts.append(np.zeros(int((gap_s if i < len(sentences(text)) - 1 else 0.1) * rate), np.float32))
    out = np.concatenate(parts)
    return (out / (np.abs(out).max() or 1.0) * 0.9).astype(np.float32)


def _speech(server: "FakeReplicate", pred: FakePrediction, work: Path):
    inp = pred.input
    samples = speech_like(str(inp["text"]), chars_per_s=15.0 / float(inp.get("speed") or 1.0))
    wav = write_wav(work / "output.wav", samples, SPEECH_RATE)
    return server._add_file(pred, "output.wav", wav.read_bytes(), "audio/wav"), {}
