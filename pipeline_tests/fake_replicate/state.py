"""The fake server's vocabulary: the models it knows (and how official ones are echoed), fault kinds,
and one prediction's state and JSON."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

DEFAULT_TOKEN = "r8_FAKEfakeFAKEfake0123456789abcdefXYZ"

MUSICGEN_VERSION = "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"
KOKORO_VERSION = "f559560eb822dc509045f3921a1921234918b91739db4bf3daab2169b71c7a13"

# Our own description of the real models' schemas (deliberately independent of pipeline.models).
FAKE_MODELS: dict[str, dict[str, Any]] = {
    "black-forest-labs/flux-schnell": {"kind": "image", "required": ["prompt"], "output": "list"},
    "black-forest-labs/flux-1.1-pro": {"kind": "image", "required": ["prompt"], "output": "single"},
    "bytedance/seedream-4": {"kind": "image", "required": ["prompt"], "output": "list", "format": "jpg",
                             "references": ("image_input", 10)},
    "wan-video/wan-2.2-i2v-fast": {"kind": "video", "required": ["image", "prompt"], "image": "image",
                                   "frames": ("num_frames", 81), "fps": ("frames_per_second", 16),
                                   "resolution": ("resolution", "480p"), "grid": 16, "aspect_ratio": True},
    "kwaivgi/kling-v2.1": {"kind": "video", "required": ["start_image", "prompt"], "image": "start_image",
                           "duration": ("duration", 5), "fixed_fps": 24, "mode_resolution": True},
    "bytedance/seedance-1-lite": {"kind": "video", "required": ["prompt", "image"], "image": "image",
                                  "duration": ("duration", 5), "fps": ("fps", 24),
                                  "resolution": ("resolution", "720p")},
    "stability-ai/stable-audio-2.5": {"kind": "audio", "required": ["prompt"], "duration": ("duration", 190),
                                      "format": "mp3"},
    "meta/musicgen": {"kind": "audio", "required": ["prompt"], "duration": ("duration", 8), "format_field": "output_format",
                      "format": "wav", "versions": [MUSICGEN_VERSION]},
    "jaaari/kokoro-82m": {"kind": "speech", "required": ["text"], "versions": [KOKORO_VERSION]},
    "meta/meta-llama-3-70b-instruct": {"kind": "text", "required": ["prompt"]},
}

OFFICIAL_ECHO_DEFAULT = True
"""Whether official models echo another model name and a ``dp-`` version by default: True, as
Replicate does (the provider's lookup matches on input and creation time, not the model string;
test_replicate_lookup.py). The environment variable ``FAKE_REPLICATE_OFFICIAL_ECHO``
(``1``/``0``) overrides it for servers built without an explicit ``official_echo``."""

OFFICIAL_ECHO_MODELS = {"meta/meta-llama-3-70b-instruct": "replicate/lifeboat-70b"}
"""The model name an official model's predictions show instead of its own, when echoing. Real
responses show e.g. ``replicate/lifeboat-70b`` for ``meta/llama-2-70b-chat``; the others become
``replicate-internal/<name>`` (``official_echo``)."""


def official_echo_default() -> bool:
    """``FAKE_REPLICATE_OFFICIAL_ECHO`` if set (1/true/yes), else ``OFFICIAL_ECHO_DEFAULT``."""
    value = os.environ.get("FAKE_REPLICATE_OFFICIAL_ECHO")
    return OFFICIAL_ECHO_DEFAULT if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def official_echo(ref: str) -> tuple[str, str]:
    """(model, version) an official model's predictions show when echoing: another model name
    (``OFFICIAL_ECHO_MODELS``, else ``replicate-internal/<name>``) and a ``dp-`` + 32 hex version
    derived from ``ref`` (stable across runs)."""
    model = OFFICIAL_ECHO_MODELS.get(ref) or f"replicate-internal/{ref.split('/', 1)[1]}"
    return model, "dp-" + hashlib.sha256(ref.encode()).hexdigest()[:32]


def is_official(ref: str) -> bool:
    """True for a fake model run by name (``/v1/models/{owner}/{name}/predictions``), i.e. one
    without pinned versions."""
    return ref in FAKE_MODELS and not FAKE_MODELS[ref].get("versions")


FLUX_SIZES = {"1:1": (1024, 1024), "16:9": (1344, 768), "9:16": (768, 1344), "4:3": (1152, 896),
               "3:4": (896, 1152), "3:2": (1216, 832), "2:3": (832, 1216)}

FAULT_KINDS = {
    "create": {"rate_limit", "server_error", "drop_connection", "hang_after_create", "invalid_input"},
    "outcome": {"fail", "abort", "never_finish", "hold", "queued", "slow", "corrupt_output", "expired_output",
                "oversize_output",
                "bad_json"},
    "get": {"get_error"},
    "list": {"list_error"},
    "download": {"download_error"},
    "upload": {"upload_error"},
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
    """One prediction: what was asked, its status and output, and its injected outcome faults.
    Times are Unix seconds on the server's clock (``FakeReplicate.now``)."""

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
    done: threading.Event = field(default_factory=threading.Event)
    created_json: dict[str, Any] | None = None  # as it was when created: a create's answer without Prefer: wait
    """Set once the prediction reaches a terminal status."""
    run_s: float | None = None
    """The run time drawn for this prediction (seconds, create -> terminal), once its worker starts."""
    deadline_at: float | None = None
    """When its ``Cancel-After`` deadline ends it (Unix seconds), if the create sent one."""
    source: str = "api"
    """``api`` (created through the API) or ``web`` (seeded: made on replicate.com)."""
    seeded: bool = False
    """Made by ``FakeReplicate.seed_predictions``, not by a create request (not counted as paid)."""
    shown_model: str | None = None
    shown_version: str | None = None
    """What the JSON shows as ``model``/``version`` if not the ones asked (official-model echo)."""

    def iso_created(self) -> str:
        """``created_at`` as the API writes it."""
        return iso(self.created_at) or ""

    def data_removed(self, now: float, retention_s: float | None) -> bool:
        """True once an API prediction's input, output and logs are gone: ``retention_s`` seconds
        after it finished (Replicate: 1 hour). Web predictions keep theirs."""
        return (self.source == "api" and retention_s is not None and self.completed_at is not None
                and now >= self.completed_at + retention_s)

    def to_json(self, base: str, *, now: float | None = None, retention_s: float | None = None) -> dict[str, Any]:
        """The API's prediction JSON. ``started_at``, ``completed_at`` and ``deadline`` are absent
        until they exist (the schema has them as non-null strings); after data removal
        (``data_removed``) ``input`` is ``{}``, ``output`` null and ``logs`` empty."""
        removed = now is not None and self.data_removed(now, retention_s)
        out = {
            "id": self.id, "model": self.shown_model or self.model, "version": self.shown_version or self.version,
            "input": {} if removed else self.input, "logs": "" if removed else self.logs,
            "output": None if removed else self.output, "data_removed": removed, "error": self.error,
            "status": self.status, "source": self.source, "created_at": iso(self.created_at),
            "urls": {"cancel": f"{base}/v1/predictions/{self.id}/cancel", "get": f"{base}/v1/predictions/{self.id}",
                     "web": f"https://replicate.com/p/{self.id}"},
            "metrics": dict(self.metrics),
        }
        for key, ts in (("started_at", self.started_at), ("completed_at", self.completed_at),
                        ("deadline", self.deadline_at)):
            if ts is not None:
                out[key] = iso(ts)
        return out


def input_key(model: str, inp: Any) -> str:
    """How the stats name one (model, input): ``model`` + ``:`` + sha256 of the canonical input JSON."""
    return f"{model}:{hashlib.sha256(canonical(inp).encode()).hexdigest()}"

