"""A fake Replicate HTTP API on 127.0.0.1, for tests and benchmarks.

It implements what the ``replicate`` provider (and the replicate 1.0.x client) uses:

- ``POST /v1/models/{owner}/{name}/predictions`` (official models) and ``POST /v1/predictions``
  (``{"version": ...}``) create a prediction;
- ``GET /v1/predictions/{id}``, ``GET /v1/predictions`` (newest first, paginated with ``next``,
  ``created_after`` filter), ``POST /v1/predictions/{id}/cancel``;
- ``GET /v1/models/{owner}/{name}``, ``.../versions``, ``.../versions/{id}``;
- ``GET /files/...``: the outputs, served from the same server (no auth, like replicate.delivery).

Predictions have realistic JSON (id, model, version, input, status, output, error, logs, metrics,
created_at/started_at/completed_at, urls) and go ``starting`` -> ``processing`` -> terminal in a
worker thread that renders *real* media with the local renderer: Pillow images, ffmpeg camera
moves over the input image (a data URI), synthesized music (mp3/wav), and JSON beats from the
local planner for the planner LLM. Every input is checked for the model's required fields.

Fault injection (``FakeReplicate.inject(kind, times=1, model=None, **options)``):

- create: ``rate_limit`` (429 + Retry-After ``retry_after`` s), ``server_error`` (``status`` 500/503;
  ``after_create=True`` creates the prediction first), ``drop_connection`` (creates, then closes the
  connection without a response), ``hang_after_create`` (creates, then holds the response
  ``seconds`` before dropping it), ``invalid_input`` (422 with ``detail``);
- outcome: ``fail`` (status failed, ``error``), ``abort`` (status aborted), ``never_finish``,
  ``hold`` (runs until ``release()``), ``slow`` (runs ``seconds``), ``corrupt_output``,
  ``expired_output`` (the output URL answers ``status`` 404), ``bad_json`` (planner text);
- reads: ``get_error`` / ``list_error`` (``status`` 500), ``download_error`` (``status`` 503).

Latency: ``latency`` (every API request) and ``run_seconds`` (create -> terminal) take a number,
a ``(low, high)`` uniform range, or a callable returning seconds.

Per-prediction control (benchmarks; all optional): ``run_seconds_for(model, input)`` returns a
prediction's run time from its model and input (None: use ``run_seconds``), so a run can be keyed
deterministically by what is asked; ``fault_for(model, input, n)`` returns a fault kind (or a
``(kind, options)`` pair, or None) for a create request, ``n`` counting the earlier create requests
with the same model and input (0 for the first); ``render_during_run=True`` renders the output
inside the run time instead of after it, so create -> terminal takes ``max(run, render)``.
Each prediction records its drawn run time in ``FakePrediction.run_s``.

Counters: ``creates`` counts predictions actually created per (model, canonical input JSON) --
the paid attempts; ``create_requests`` counts every create POST received; ``cancels`` lists
canceled ids; ``requests`` logs (method, path, status).

Start it with ``with FakeReplicate(...) as server:`` (``server.base_url``, ``server.origin``,
``server.token``), the ``fake_replicate`` pytest fixture (import it into a test module), or
``python -m pipeline_tests.fake_replicate --port 8765``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import re
import socket
import string
import tempfile
import threading
import time
import wave
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

DEFAULT_TOKEN = "r8_FAKEfakeFAKEfake0123456789abcdefXYZ"

MUSICGEN_VERSION = "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"

# Our own description of the real models' schemas (deliberately independent of pipeline.models).
FAKE_MODELS: dict[str, dict[str, Any]] = {
    "black-forest-labs/flux-schnell": {"kind": "image", "required": ["prompt"], "output": "list"},
    "black-forest-labs/flux-1.1-pro": {"kind": "image", "required": ["prompt"], "output": "single"},
    "wan-video/wan-2.2-i2v-fast": {"kind": "video", "required": ["image", "prompt"], "image": "image",
                                   "frames": ("num_frames", 81), "fps": ("frames_per_second", 16),
                                   "resolution": ("resolution", "480p"), "grid": 16},
    "kwaivgi/kling-v2.1": {"kind": "video", "required": ["start_image", "prompt"], "image": "start_image",
                           "duration": ("duration", 5), "fixed_fps": 24, "mode_resolution": True},
    "bytedance/seedance-1-lite": {"kind": "video", "required": ["prompt", "image"], "image": "image",
                                  "duration": ("duration", 5), "fps": ("fps", 24),
                                  "resolution": ("resolution", "720p")},
    "stability-ai/stable-audio-2.5": {"kind": "audio", "required": ["prompt"], "duration": ("duration", 190),
                                      "format": "mp3"},
    "meta/musicgen": {"kind": "audio", "required": ["prompt"], "duration": ("duration", 8), "format_field": "output_format",
                      "format": "wav", "versions": [MUSICGEN_VERSION]},
    "meta/meta-llama-3-70b-instruct": {"kind": "text", "required": ["prompt"]},
}

_FLUX_SIZES = {"1:1": (1024, 1024), "16:9": (1344, 768), "9:16": (768, 1344), "4:3": (1152, 896),
               "3:4": (896, 1152), "3:2": (1216, 832), "2:3": (832, 1216)}

FAULT_KINDS = {
    "create": {"rate_limit", "server_error", "drop_connection", "hang_after_create", "invalid_input"},
    "outcome": {"fail", "abort", "never_finish", "hold", "slow", "corrupt_output", "expired_output", "bad_json"},
    "get": {"get_error"},
    "list": {"list_error"},
    "download": {"download_error"},
}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): how inputs are compared and counted."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class Fault:
    """One injected fault: ``kind``, how many more requests it applies to (``times``; None: forever),
    an optional ``model`` ("owner/name") it is limited to, and its options."""

    kind: str
    times: int | None = 1
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def take(self, model: str | None) -> bool:
        if self.times == 0 or (self.model is not None and model != self.model):
            return False
        if self.times is not None:
            self.times -= 1
        return True


@dataclass
class FakePrediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    created_at: float
    status: str = "starting"
    started_at: float | None = None
    completed_at: float | None = None
    output: Any = None
    error: str | None = None
    logs: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, Fault] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    run_s: float | None = None
    """The run time drawn for this prediction (seconds, create -> terminal), once its worker starts."""

    def to_json(self, base: str) -> dict[str, Any]:
        return {
            "id": self.id, "model": self.model, "version": self.version, "input": self.input,
            "logs": self.logs, "output": self.output, "data_removed": False, "error": self.error,
            "status": self.status, "source": "api", "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at), "completed_at": _iso(self.completed_at),
            "urls": {"cancel": f"{base}/v1/predictions/{self.id}/cancel", "get": f"{base}/v1/predictions/{self.id}",
                     "web": f"https://replicate.com/p/{self.id}"},
            "metrics": dict(self.metrics),
        }


class FakeReplicate:
    """The fake API server (see module doc). Binds 127.0.0.1 on ``port`` (0: a free port).

    ``token``: the API token it accepts (401 otherwise). ``render_scale``: output media are
    rendered at this fraction of the real models' sizes (speed). ``page_size``: predictions per
    list page. ``output_ttl_s``: output URLs answer 404 this long after completion.
    ``output_origin``: origin used in output URLs (default: this server's own).
    ``run_seconds_for``, ``fault_for``, ``render_during_run``: per-prediction run times and faults
    (see the module doc).
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, port: int = 0,
                 latency: float | tuple[float, float] | Callable[[], float] = 0.0,
                 run_seconds: float | tuple[float, float] | Callable[[], float] = (0.05, 0.15),
                 render_scale: float = 0.25, page_size: int = 100, output_ttl_s: float = 3600.0,
                 output_origin: str | None = None, seed: int = 0,
                 run_seconds_for: Callable[[str, dict[str, Any]], float | None] | None = None,
                 fault_for: Callable[[str, dict[str, Any], int], Any] | None = None,
                 render_during_run: bool = False):
        self.token = token
        self.latency = latency
        self.run_seconds = run_seconds
        self.run_seconds_for = run_seconds_for
        self.fault_for = fault_for
        self.render_during_run = render_during_run
        self.create_requests_by_input: Counter[tuple[str, str]] = Counter()
        self.render_scale = render_scale
        self.page_size = page_size
        self.output_ttl_s = output_ttl_s
        self._output_origin = output_origin
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.faults: list[Fault] = []
        self.predictions: dict[str, FakePrediction] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.creates: Counter[tuple[str, str]] = Counter()
        self.create_requests = 0
        self.cancels: list[str] = []
        self.requests: list[tuple[str, str, int]] = []
        self.auth_failures = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-replicate-")
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """API root, e.g. http://127.0.0.1:54321 (give it to the provider as ``base_url``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """Origin of output URLs (allow-list it in the provider's ``allowed_hosts``)."""
        return self._output_origin or self.base_url

    def start(self) -> "FakeReplicate":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-replicate", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for p in self.predictions.values():
                p.cancel.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._tmp.cleanup()

    def __enter__(self) -> "FakeReplicate":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- control -------------------------------------------------------------------------------

    def inject(self, kind: str, *, times: int | None = 1, model: str | None = None, **options: Any) -> Fault:
        """Add a fault (kinds in the module doc). ``times=None`` applies it to every matching request."""
        if not any(kind in kinds for kinds in FAULT_KINDS.values()):
            raise ValueError(f"unknown fault {kind!r}")
        fault = Fault(kind, times, model, options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def release(self, prediction_id: str | None = None) -> None:
        """Let ``hold`` predictions (one, or all) finish."""
        with self._lock:
            for p in self.predictions.values():
                if prediction_id is None or p.id == prediction_id:
                    p.release.set()

    def create_count(self, model: str | None = None, input: dict[str, Any] | None = None) -> int:
        """Predictions created (paid attempts), for one model and/or one exact input."""
        with self._lock:
            return sum(n for (m, i), n in self.creates.items()
                       if (model is None or m == model) and (input is None or i == canonical(input)))

    def inputs(self, model: str | None = None) -> list[dict[str, Any]]:
        """The inputs of every prediction created (of ``model``), oldest first."""
        with self._lock:
            preds = sorted(self.predictions.values(), key=lambda p: p.created_at)
            return [p.input for p in preds if model is None or p.model == model]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` every 10 ms for up to ``timeout`` seconds; True once it holds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # --- internals -----------------------------------------------------------------------------

    def _seconds(self, spec: float | tuple[float, float] | Callable[[], float]) -> float:
        if callable(spec):
            return float(spec())
        if isinstance(spec, tuple):
            with self._lock:
                return self._rng.uniform(*spec)
        return float(spec)

    def _fault(self, phase: str, model: str | None) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.kind in FAULT_KINDS[phase] and f.take(model):
                    return f
        return None

    def _outcome_faults(self, model: str) -> dict[str, Fault]:
        out: dict[str, Fault] = {}
        with self._lock:
            for f in self.faults:
                if f.kind in FAULT_KINDS["outcome"] and f.kind not in out and f.take(model):
                    out[f.kind] = f
        return out

    def _new_id(self) -> str:
        with self._lock:
            return "".join(self._rng.choice(string.ascii_lowercase + "0123456789") for _ in range(26))

    def _fault_for(self, model: str, inp: dict[str, Any]) -> Fault | None:
        """The ``fault_for`` fault of one create request (counting the request), or None."""
        with self._lock:
            n = self.create_requests_by_input[(model, canonical(inp))]
            self.create_requests_by_input[(model, canonical(inp))] += 1
        if self.fault_for is None:
            return None
        decided = self.fault_for(model, inp, n)
        if decided is None:
            return None
        kind, options = (decided, {}) if isinstance(decided, str) else decided
        if not any(kind in kinds for kinds in FAULT_KINDS.values()):
            raise ValueError(f"fault_for returned an unknown fault {kind!r}")
        return Fault(kind, 0, model, dict(options))

    def create(self, model: str, version: str, inp: dict[str, Any], extra: Fault | None = None) -> FakePrediction:
        outcome = self._outcome_faults(model)
        if extra is not None and extra.kind in FAULT_KINDS["outcome"]:
            outcome[extra.kind] = extra
        pred = FakePrediction(id=self._new_id(), model=model, version=version, input=inp, created_at=time.time(),
                              outcome=outcome)
        with self._lock:
            self.predictions[pred.id] = pred
            self.creates[(model, canonical(inp))] += 1
        threading.Thread(target=self._work, args=(pred,), daemon=True, name=f"fake-pred-{pred.id[:6]}").start()
        return pred

    def cancel(self, pred: FakePrediction) -> None:
        with self._lock:
            self.cancels.append(pred.id)
            if pred.status not in ("succeeded", "failed", "canceled", "aborted"):
                pred.status, pred.completed_at = "canceled", time.time()
                pred.logs += "Prediction canceled.\n"
            pred.cancel.set()

    def _work(self, pred: FakePrediction) -> None:
        run = None
        if "slow" in pred.outcome:
            run = pred.outcome["slow"].options.get("seconds", 5.0)
        elif self.run_seconds_for is not None:
            run = self.run_seconds_for(pred.model, pred.input)
        if run is None:
            run = self._seconds(self.run_seconds)
        run = float(run)
        pred.run_s = run
        starting = min(run * 0.2, 0.5)
        if pred.cancel.wait(starting):
            return
        with self._lock:
            if pred.status != "starting":
                return
            pred.status, pred.started_at = "processing", time.time()
            pred.logs += "Loading model...\nRunning prediction...\n"
        if "never_finish" in pred.outcome:
            pred.cancel.wait()
            return
        if "hold" in pred.outcome:
            while not pred.release.wait(0.05):
                if pred.cancel.is_set() or self._stop.is_set():
                    return
        rendered = None
        if self.render_during_run and not ({"fail", "abort", "never_finish", "hold"} & pred.outcome.keys()):
            rendered = self._render_result(pred)
        if "hold" not in pred.outcome and pred.cancel.wait(max(0.0, pred.created_at + run - time.time())):
            return
        output, error, metrics = None, None, {}
        status = "succeeded"
        if rendered is not None:
            status, output, error, metrics = rendered
        elif "fail" in pred.outcome:
            status, error = "failed", pred.outcome["fail"].options.get(
                "error", "The input or output was flagged as sensitive. Please try again with different inputs. (E005)")
        elif "abort" in pred.outcome:
            status = "aborted"
        else:
            try:
                output, metrics = self._render(pred)
            except Exception as exc:  # a bad input the schema check let through
                status, error = "failed", f"{type(exc).__name__}: {exc}"
        with self._lock:
            if pred.status != "processing":
                return
            now = time.time()
            pred.status, pred.output, pred.error, pred.completed_at = status, output, error, now
            pred.metrics = {"predict_time": round(now - (pred.started_at or now), 3),
                            "total_time": round(now - pred.created_at, 3), **metrics}
            pred.logs += "Done.\n" if status == "succeeded" else f"{status}\n"

    def _render_result(self, pred: FakePrediction) -> tuple[str, Any, str | None, dict[str, Any]]:
        """(status, output, error, metrics) of rendering ``pred``'s output now."""
        try:
            output, metrics = self._render(pred)
            return "succeeded", output, None, metrics
        except Exception as exc:  # a bad input the schema check let through
            return "failed", None, f"{type(exc).__name__}: {exc}", {}

    def _add_file(self, pred: FakePrediction, name: str, data: bytes, content_type: str) -> str:
        if "corrupt_output" in pred.outcome:
            data = bytes((i * 7 + 13) % 256 for i in range(max(64, len(data) // 4)))
        token = "".join(self._rng.choice(string.ascii_letters + string.digits) for _ in range(24))
        with self._lock:
            self.files[token] = {"data": data, "type": content_type, "expires_at": time.time() + self.output_ttl_s,
                                 "expired": "expired_output" in pred.outcome,
                                 "expired_status": pred.outcome.get("expired_output", Fault("x")).options.get("status", 404)}
        return f"{self.origin}/files/{pred.id[:4]}/{token}/{name}"

    def _render(self, pred: FakePrediction) -> tuple[Any, dict[str, Any]]:
        spec = FAKE_MODELS[pred.model]
        inp = pred.input
        work = Path(tempfile.mkdtemp(dir=self._tmp.name))
        kind = spec["kind"]
        if kind == "image":
            from pipeline.generation import GenerationRequest
            from pipeline.providers.local import LocalProvider

            w, h = _FLUX_SIZES.get(str(inp.get("aspect_ratio", "1:1")), (1024, 1024))
            w, h = _even(w * self.render_scale), _even(h * self.render_scale)
            req = GenerationRequest(media_type="image", provider="fake", model=pred.model, prompt=str(inp["prompt"]),
                                    seed=inp.get("seed"), params={"width": w, "height": h})
            png = LocalProvider().render_image(req, work).path
            fmt = str(inp.get("output_format", "webp"))
            with Image.open(png) as im:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
            url = self._add_file(pred, f"out-0.{fmt}", buf.getvalue(), f"image/{'jpeg' if fmt == 'jpg' else fmt}")
            return ([url] if spec["output"] == "list" else url), {"image_count": 1}
        if kind == "video":
            from pipeline import media

            image = _decode_data_uri(str(inp[spec["image"]]), work)
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
            scale = short / min(iw, ih)
            grid = spec.get("grid", 2)
            w, h = (round(iw * scale / grid) * grid, round(ih * scale / grid) * grid)
            w, h = _even(w * self.render_scale), _even(h * self.render_scale)
            out = work / "output.mp4"
            media.render_camera_move(image, out, width=w, height=h, fps=fps, seconds=seconds,
                                     move=media.camera_move_for(str(inp["prompt"])), speed=0.6)
            return self._add_file(pred, "output.mp4", out.read_bytes(), "video/mp4"), {}
        if kind == "audio":
            from pipeline import media
            from pipeline.providers.local import SAMPLE_RATE, synthesize_music

            seconds = float(inp.get(spec["duration"][0], spec["duration"][1]))
            m = re.search(r"(\d+)\s*BPM", str(inp["prompt"]), re.I)
            samples = synthesize_music(str(inp["prompt"]), bpm=int(m.group(1)) if m else 100, duration_s=seconds,
                                       seed=int(inp.get("seed") or 0))
            wav = work / "output.wav"
            with wave.open(str(wav), "wb") as wf:
                wf.setnchannels(1)
                wf.setsampwidth(2)
                wf.setframerate(SAMPLE_RATE)
                wf.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
            fmt = str(inp.get(spec.get("format_field", ""), spec["format"]))
            if fmt == "mp3":
                mp3 = work / "output.mp3"
                media.run_ffmpeg(["-i", str(wav), "-c:a", "libmp3lame", "-b:a", "128k", str(mp3)], what="encode mp3")
                return self._add_file(pred, "output.mp3", mp3.read_bytes(), "audio/mpeg"), {}
            return self._add_file(pred, "output.wav", wav.read_bytes(), "audio/wav"), {}
        # text: the planner
        prompt = str(inp["prompt"])
        if "bad_json" in pred.outcome:
            text = 'Sure! Here are the beats: {"beats": [{"prompt": "The sun heats the ocean", "duration_s": '
        else:
            text = _plan_text(prompt)
        tokens = [text[i:i + 7] for i in range(0, len(text), 7)]
        return tokens, {"input_token_count": max(1, len(prompt) // 4), "output_token_count": max(1, len(text) // 4)}


def _even(x: float) -> int:
    return max(16, int(round(x / 2)) * 2)


def _decode_data_uri(uri: str, work: Path) -> Path:
    m = re.match(r"data:image/(png|jpeg|webp);base64,(.*)$", uri, re.S)
    if not m:
        raise ValueError("image must be a data URI (data:image/...;base64,...)")
    path = work / f"input.{'jpg' if m.group(1) == 'jpeg' else m.group(1)}"
    path.write_bytes(base64.b64decode(m.group(2)))
    return path


def _plan_text(prompt: str) -> str:
    from pipeline.providers.local import plan_brief

    brief = re.search(r"BRIEF:\n<<<\n(.*?)\n>>>", prompt, re.S)
    length = re.search(r"for a (\d+(?:\.\d+)?)-second video", prompt)
    most = re.search(r"and (\d+) beats", prompt)
    if not (brief and length and most):
        return "I can only plan briefs."
    beats = plan_brief(brief.group(1), duration_s=float(length.group(1)), max_beats=int(most.group(1)))
    return json.dumps({"beats": [{"prompt": b.prompt, "duration_s": b.duration_s, "motion": b.motion} for b in beats]})


def _model_json(server: FakeReplicate, ref: str) -> dict[str, Any]:
    owner, name = ref.split("/", 1)
    versions = FAKE_MODELS[ref].get("versions") or []
    return {"url": f"https://replicate.com/{ref}", "owner": owner, "name": name, "description": f"Fake {ref}",
            "visibility": "public", "github_url": None, "paper_url": None, "license_url": None, "run_count": 1000,
            "cover_image_url": None, "default_example": None,
            "latest_version": _version_json(versions[0]) if versions else None}


def _version_json(version: str) -> dict[str, Any]:
    return {"id": version, "created_at": "2024-01-01T00:00:00.000000Z", "cog_version": "0.9.4",
            "openapi_schema": {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}}}


def _handler_for(server: FakeReplicate) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeReplicate/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet; requests are recorded instead
            pass

        # --- plumbing ---------------------------------------------------------------------------

        def _send(self, status: int, body: Any = None, *, headers: dict[str, str] | None = None,
                  raw: bytes | None = None, content_type: str = "application/json") -> None:
            data = raw if raw is not None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            with server._lock:
                server.requests.append((self.command, self.path, status))

        def _problem(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"title": title, "detail": detail, "status": status}, headers=headers)

        def _drop(self) -> None:
            with server._lock:
                server.requests.append((self.command, self.path, 0))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            return json.loads(raw) if raw else {}

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {server.token}":
                return True
            with server._lock:
                server.auth_failures += 1
            self._problem(401, "Unauthenticated", "You did not pass a valid authentication token")
            return False

        def _api_latency(self) -> None:
            delay = server._seconds(server.latency)
            if delay > 0:
                time.sleep(delay)

        # --- routes -----------------------------------------------------------------------------

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            if parts[:1] == ["files"]:
                return self._file(parts)
            self._api_latency()
            if not self._authorized():
                return
            if parts == ["v1", "predictions"]:
                return self._list(parse_qs(url.query))
            if len(parts) == 3 and parts[:2] == ["v1", "predictions"]:
                f = server._fault("get", None)
                if f is not None:
                    return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
                with server._lock:
                    pred = server.predictions.get(parts[2])
                    body = pred.to_json(server.base_url) if pred else None
                return self._send(200, body) if body else self._problem(404, "Not found", "Prediction not found")
            if len(parts) >= 4 and parts[:2] == ["v1", "models"]:
                ref = f"{parts[2]}/{parts[3]}"
                if ref not in FAKE_MODELS:
                    return self._problem(404, "Not found", f"Model {ref} not found")
                if len(parts) == 4:
                    return self._send(200, _model_json(server, ref))
                versions = FAKE_MODELS[ref].get("versions") or []
                if len(parts) == 5 and parts[4] == "versions":
                    return self._send(200, {"next": None, "previous": None,
                                            "results": [_version_json(v) for v in versions]})
                if len(parts) == 6 and parts[4] == "versions" and parts[5] in versions:
                    return self._send(200, _version_json(parts[5]))
                return self._problem(404, "Not found", "Version not found")
            return self._problem(404, "Not found", f"No route for GET {url.path}")

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            body = self._body()
            self._api_latency()
            if not self._authorized():
                return
            if len(parts) == 4 and parts[:2] == ["v1", "predictions"] and parts[3] == "cancel":
                with server._lock:
                    pred = server.predictions.get(parts[2])
                if pred is None:
                    return self._problem(404, "Not found", "Prediction not found")
                server.cancel(pred)
                with server._lock:
                    return self._send(200, pred.to_json(server.base_url))
            if len(parts) == 5 and parts[:2] == ["v1", "models"] and parts[4] == "predictions":
                ref = f"{parts[2]}/{parts[3]}"
                if ref not in FAKE_MODELS or FAKE_MODELS[ref].get("versions"):
                    return self._problem(404, "Not found", f"{ref} is not an official model; create with a version")
                return self._create(ref, "hidden", body)
            if parts == ["v1", "predictions"]:
                version = str(body.get("version", ""))
                ref = next((r for r, s in FAKE_MODELS.items() if version in (s.get("versions") or [])), None)
                if ref is None:
                    return self._problem(422, "Invalid version", f"version {version!r} does not exist")
                return self._create(ref, version, body)
            return self._problem(404, "Not found", f"No route for POST {url.path}")

        def _create(self, ref: str, version: str, body: dict[str, Any]) -> None:
            with server._lock:
                server.create_requests += 1
            inp = body.get("input")
            extra = server._fault_for(ref, inp) if isinstance(inp, dict) else None
            f = extra if extra is not None and extra.kind in FAULT_KINDS["create"] else server._fault("create", ref)
            if f is not None and f.kind == "rate_limit":
                ra = f.options.get("retry_after", 1)
                return self._problem(429, "Too Many Requests", f"Request was throttled. Expected available in {ra} second.",
                                     headers={"Retry-After": str(ra)})
            if f is not None and f.kind == "invalid_input":
                return self._problem(f.options.get("status", 422), "Input validation failed",
                                     f.options.get("detail", "- input.prompt: Does not match the content policy"))
            if f is not None and f.kind == "server_error" and not f.options.get("after_create"):
                return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
            if not isinstance(inp, dict):
                return self._problem(422, "Input validation failed", "input is required")
            missing = [k for k in FAKE_MODELS[ref]["required"] if k not in inp]
            if missing:
                return self._problem(422, "Input validation failed",
                                     "; ".join(f"- input: {k} is required" for k in missing))
            pred = server.create(ref, version, inp, extra)
            if f is not None and f.kind == "server_error":
                return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
            if f is not None and f.kind == "drop_connection":
                return self._drop()
            if f is not None and f.kind == "hang_after_create":
                server._stop.wait(f.options.get("seconds", 3600.0))
                return self._drop()
            with server._lock:
                body_out = pred.to_json(server.base_url)
            self._send(201, body_out)

        def _list(self, query: dict[str, list[str]]) -> None:
            f = server._fault("list", None)
            if f is not None:
                return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
            after = query.get("created_after", [None])[0]
            floor = datetime.fromisoformat(after.replace("Z", "+00:00")).timestamp() if after else None
            cursor = int(query.get("cursor", ["0"])[0])
            with server._lock:
                preds = sorted(server.predictions.values(), key=lambda p: p.created_at, reverse=True)
                if floor is not None:
                    preds = [p for p in preds if p.created_at >= floor]
                page = [p.to_json(server.base_url) for p in preds[cursor:cursor + server.page_size]]
            more = cursor + server.page_size < len(preds)
            nxt = None
            if more:
                nxt = f"{server.base_url}/v1/predictions?cursor={cursor + server.page_size}"
                if after:
                    nxt += f"&created_after={after}"
            self._send(200, {"next": nxt, "previous": None, "results": page})

        def _file(self, parts: list[str]) -> None:
            token = parts[2] if len(parts) >= 3 else ""
            with server._lock:
                entry = server.files.get(token)
            if entry is None:
                return self._send(404, raw=b"Not Found", content_type="text/plain")
            f = server._fault("download", None)
            if f is not None:
                return self._send(f.options.get("status", 503), raw=b"Service Unavailable", content_type="text/plain")
            if entry["expired"] or time.time() > entry["expires_at"]:
                return self._send(entry["expired_status"], raw=b"Not Found", content_type="text/plain")
            self._send(200, raw=entry["data"], content_type=entry["type"])

    return Handler


# --- pytest integration ------------------------------------------------------------------------

def provider_options(server: FakeReplicate, workspace_root: str | Path, **overrides: Any) -> dict[str, Any]:
    """``get_provider("replicate", **options)`` options for ``server``: its token, base URL and
    output origin allow-listed, ledger under ``workspace_root``, and fast timings (20 ms polls,
    10 ms backoff, 2 s request timeout). ``overrides`` win."""
    return {"api_token": server.token, "base_url": server.base_url, "allowed_hosts": [server.origin],
            "workspace_root": str(workspace_root), "poll_interval_s": 0.02, "max_poll_interval_s": 0.1,
            "backoff_initial_s": 0.01, "max_backoff_s": 0.2, "request_timeout_s": 2.0, "deadline_s": 20.0,
            **overrides}


try:
    import pytest

    @pytest.fixture
    def fake_replicate():
        """A running FakeReplicate (20-60 ms predictions, quarter-size media); closed afterwards."""
        with FakeReplicate(run_seconds=(0.02, 0.06), render_scale=0.25) as server:
            yield server
except ImportError:  # pragma: no cover - the module also runs standalone
    pass


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline_tests.fake_replicate``: serve until interrupted."""
    ap = argparse.ArgumentParser(description="Run the fake Replicate API on 127.0.0.1.")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--token", default=DEFAULT_TOKEN)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every API request")
    ap.add_argument("--run-seconds", type=float, nargs=2, default=(1.0, 3.0), metavar=("LOW", "HIGH"),
                    help="prediction run time range, seconds")
    ap.add_argument("--render-scale", type=float, default=0.5)
    args = ap.parse_args(argv)
    server = FakeReplicate(token=args.token, port=args.port, latency=args.latency,
                           run_seconds=tuple(args.run_seconds), render_scale=args.render_scale).start()
    print(f"fake Replicate at {server.base_url}\n  export REPLICATE_BASE_URL={server.base_url}\n"
          f"  export REPLICATE_API_TOKEN={server.token}\n  export REPLICATE_OUTPUT_HOSTS={server.origin}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
