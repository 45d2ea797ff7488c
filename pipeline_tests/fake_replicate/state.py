"""The fake server's vocabulary: the models it knows, fault kinds, and one prediction's state."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

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

FLUX_SIZES = {"1:1": (1024, 1024), "16:9": (1344, 768), "9:16": (768, 1344), "4:3": (1152, 896),
               "3:4": (896, 1152), "3:2": (1216, 832), "2:3": (832, 1216)}

FAULT_KINDS = {
    "create": {"rate_limit", "server_error", "drop_connection", "hang_after_create", "invalid_input"},
    "outcome": {"fail", "abort", "never_finish", "hold", "slow", "corrupt_output", "expired_output", "oversize_output",
                "bad_json"},
    "get": {"get_error"},
    "list": {"list_error"},
    "download": {"download_error"},
}


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC (the API's format) of Unix seconds ``ts``, or None."""
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
    """One prediction: what was asked, its status and output, and its injected outcome faults."""

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
    deadline_at: float | None = None
    """When its ``Cancel-After`` deadline ends it (Unix seconds), if the create sent one."""

    def to_json(self, base: str) -> dict[str, Any]:
        return {
            "id": self.id, "model": self.model, "version": self.version, "input": self.input,
            "logs": self.logs, "output": self.output, "data_removed": False, "error": self.error,
            "status": self.status, "source": "api", "created_at": iso(self.created_at),
            "started_at": iso(self.started_at), "completed_at": iso(self.completed_at),
            "urls": {"cancel": f"{base}/v1/predictions/{self.id}/cancel", "get": f"{base}/v1/predictions/{self.id}",
                     "web": f"https://replicate.com/p/{self.id}"},
            "metrics": dict(self.metrics),
        }


def input_key(model: str, inp: Any) -> str:
    """How the stats name one (model, input): ``model`` + ``:`` + sha256 of the canonical input JSON."""
    return f"{model}:{hashlib.sha256(canonical(inp).encode()).hexdigest()}"

