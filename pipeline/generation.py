"""One mechanism for every generated medium: cache key -> cache -> provider call -> verify -> store.

``Generator.generate`` is the only way media enters the store. It serves provider calls
(storyboard images, chunk videos, music) and the pipeline's own deterministic ffmpeg steps
(last-frame extraction, stitch, mux) alike, so an identical rerun of anything is a cache hit:
free, and still producing output. Every call that was not a cache hit is appended to
``logs/provider_calls.jsonl`` so users (and tests) can see exactly what was generated: with
``seconds`` (the whole generation: call, verification, store) and, when the provider says where
its call's time went (``extra["timings_s"]``, the replicate provider), those timings.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from pipeline import media
from pipeline.manifests import MediaManifest, utc_now
from pipeline.spec import sha256_json
from pipeline.store import GenerationCache, LocalMediaStore, MediaStore, Workspace


class GenerationRequest(BaseModel):
    """Everything that determines a generated output, and nothing else.

    ``inputs`` maps an input name ("start_image", "video", ...) to the sha256 of that medium.
    ``labels`` (video, segment, chunk) are for logs only and are not part of the cache key.
    ``max_cost_usd`` is the video's budget (USD, None for none): a paid provider refuses a call
    that would take the video's spend past it (``pipeline.ledger``); not part of the cache key.
    """

    media_type: Literal["image", "video", "audio"]
    provider: str
    model: str
    prompt: str = ""
    seed: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    max_cost_usd: float | None = None

    def cache_key(self) -> str:
        """sha256 of canonical JSON of provider, model, media type, prompt, seed, params and input hashes."""
        return sha256_json(self.model_dump(mode="json", exclude={"labels", "max_cost_usd"}))


@dataclass
class ProviderResult:
    """What a provider call produced: a local file, what it was called, and who paid for it.

    - ``cost_usd``: USD *this call* paid (0 for free providers, and 0 when the call adopted a
      prediction that was paid for already: another process's job, or a refetch of a succeeded one).
    - ``reused_cost_usd``: USD of the already-paid prediction this call adopted without paying
      (0 when it paid itself or the provider is free).
    - ``paid_by``: the video_id whose call paid for the prediction (the ledger job's video), or None
      for free output. Equal to the request's video when this call paid.
    - ``verify``: how the output is checked before it is stored: ``"decode"`` (every frame and audio
      packet decoded: anything a provider made), or ``"stream_copy"`` (every packet read, none
      decoded: ``media.verify_stream_copy``), only for files this pipeline wrote by stream copy from
      media already verified.
    - ``verified``: the decoded facts of this exact file when the provider already decoded all of it
      (a ``media.MediaInfo`` for video or audio, from ``media.verify_video`` / ``verify_audio``):
      ``Generator`` then uses them instead of decoding the file a second time. None: decode it.
    """

    path: Path
    model: str
    prediction_id: str | None = None
    cost_usd: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    reused_cost_usd: float = 0.0
    paid_by: str | None = None
    verify: Literal["decode", "stream_copy"] = "decode"
    verified: Any = None


ProviderCall = Callable[[Path], ProviderResult]
"""A provider call: given a scratch directory, writes one output file there and describes it."""


_VERIFY = {
    "image": lambda p: media.verify_image(p),
    "video": lambda p: media.verify_video(p),
    "audio": lambda p: media.verify_audio(p),
}


class Generator:
    """Runs generation requests through the cache and into the media store.

    ``generate(request, call)``: on a cache hit returns the stored manifest with ``cache_hit=True``
    and ``cost_usd=0`` (``price_usd`` and ``paid_by`` still say what it cost and who paid);
    otherwise runs ``call`` in a scratch directory, decodes the output to verify it (raising
    media.MediaError if it is not the promised medium, and storing nothing), moves it into the
    store, records it in the cache and returns its manifest, whose ``cost_usd`` is what the call
    paid, ``price_usd`` what the output cost whoever paid (``ProviderResult.cost_usd``, else its
    ``reused_cost_usd``) and ``paid_by`` the payer (``ProviderResult.paid_by``; when a provider
    paid without naming the payer, the request's ``video_id`` label; None when free).

    ``store`` and ``cache`` default to the local media store and cache under ``workspace``; pass
    an ``S3MediaStore`` and a cache over ``S3TextObjects`` to keep both in S3.
    """

    def __init__(self, workspace: Workspace, store: MediaStore | None = None,
                 cache: GenerationCache | None = None):
        self.workspace = workspace
        self.store = store or LocalMediaStore(workspace.media)
        self.cache = cache or GenerationCache(workspace.cache, self.store)
        self._log_lock = threading.Lock()

    def local_path(self, manifest: MediaManifest) -> Path:
        """Readable local path of a stored medium."""
        return self.store.local_path(manifest.uri)

    def generate(self, request: GenerationRequest, call: ProviderCall) -> MediaManifest:
        key = request.cache_key()
        hit = self.cache.get(key)
        if hit is not None:
            return hit.model_copy(update={"cache_hit": True, "cost_usd": 0.0})
        started = time.monotonic()
        with self.workspace.scratch(f"gen-{key[:12]}") as scratch:
            result = call(scratch)
            if result.verified is not None and request.media_type in ("video", "audio"):
                info = result.verified  # decoded by the provider already (e.g. Replicate's download check)
            elif result.verify == "stream_copy":
                info = media.verify_stream_copy(result.path)
            else:
                info = _VERIFY[request.media_type](result.path)
            uri, sha, size = self.store.put(result.path)
        price, payer = _price_and_payer(request, result)
        manifest = MediaManifest(
            media_type=request.media_type,
            uri=uri,
            sha256=sha,
            bytes=size,
            width=info[0] if request.media_type == "image" else info.width,
            height=info[1] if request.media_type == "image" else info.height,
            duration_s=None if request.media_type == "image" else round(
                info.duration_s if request.media_type == "video" else info.audio_duration_s, 6),
            fps=info.fps if request.media_type == "video" else None,
            provider=request.provider,
            model=result.model,
            prediction_id=result.prediction_id,
            seed=request.seed,
            prompt=request.prompt or None,
            cost_usd=result.cost_usd,
            cache_hit=False,
            cache_key=key,
            extra=result.extra,
            price_usd=price,
            paid_by=payer,
        )
        self.cache.put(key, manifest)
        self._log_call(request, manifest, time.monotonic() - started)
        return manifest

    def _log_call(self, request: GenerationRequest, manifest: MediaManifest, seconds: float) -> None:
        line = json.dumps({
            "timestamp": utc_now(), "provider": request.provider, "model": manifest.model,
            "media_type": request.media_type, "cache_key": manifest.cache_key, "sha256": manifest.sha256,
            "cost_usd": manifest.cost_usd, "price_usd": manifest.price_usd, "paid_by": manifest.paid_by,
            "seconds": round(seconds, 3), **request.labels,
            **({"timings_s": manifest.extra["timings_s"]} if "timings_s" in manifest.extra else {}),
        })
        path = self.workspace.logs / "provider_calls.jsonl"
        with self._log_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def _price_and_payer(request: GenerationRequest, result: ProviderResult) -> tuple[float, str | None]:
    """(price USD, payer video_id) of a provider result: what the output cost whoever paid, and who."""
    price = result.cost_usd if result.cost_usd > 0 else result.reused_cost_usd
    if price <= 0:
        return 0.0, result.paid_by
    if result.paid_by is not None:
        return price, result.paid_by
    return price, request.labels.get("video_id") if result.cost_usd > 0 else None


def read_call_log(workspace: Workspace) -> list[dict[str, Any]]:
    """Every logged (non-cached) generation, oldest first."""
    path = workspace.logs / "provider_calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
