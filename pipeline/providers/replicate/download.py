"""Downloading a succeeded prediction's output at once, only from allow-listed hosts, bounded in
size, and verifying it decodes as the promised medium.

A paid output that cannot be used raises OutputUnusable with a short *cause* the ledger records:

| cause | meaning | deterministic (same again on a re-buy) |
| --- | --- | --- |
| ``too_large`` | over the size cap (``max_download_bytes``) | yes |
| ``refused_host`` | a host/scheme not on the allow-list, a URL with credentials, a redirect loop | yes |
| ``expired`` | the URL answers 403/404/410, or the prediction's data was removed | no |
| ``undecodable`` | the bytes do not decode as the promised medium (or the download was refused) | no |
| ``no_output`` | the prediction succeeded without an output URL | no |
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import httpx
from PIL import Image, ImageOps
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from pipeline import media
from pipeline.generation import GenerationRequest
from pipeline.models import ReplicateModel
from pipeline.providers.replicate.client import RateLimited, Transient
from pipeline.providers.replicate.ratelimit import retry_after_s, wait_for_server

DEFAULT_OUTPUT_HOSTS: tuple[str, ...] = ("replicate.delivery",)
"""Hosts outputs may be downloaded from by default (https only; subdomains included)."""

DEFAULT_MAX_DOWNLOAD_BYTES = {"image": 64 << 20, "video": 1 << 30, "audio": 256 << 20, "speech": 64 << 20,
                              "text": 8 << 20}
"""Largest output accepted, bytes, by model kind."""

DETERMINISTIC_CAUSES = frozenset({"too_large", "refused_host"})
"""Causes that a second purchase of the same request would meet again."""

_KNOWN_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".mp4", ".mov", ".webm", ".mp3", ".wav", ".m4a", ".flac", ".ogg"}
_MAX_REDIRECTS = 5


class OutputUnusable(Exception):
    """A succeeded (paid) prediction's output cannot be used. ``cause``: a short code (see the
    module doc); ``details``: JSON facts for the ledger and messages (``size``/``limit`` in bytes,
    ``origin`` of a refused host)."""

    def __init__(self, cause: str, message: str, **details: Any):
        super().__init__(message)
        self.cause = cause
        self.details = {"message": message, **details}

    @property
    def deterministic(self) -> bool:
        """True if buying the same request again would meet the same cause."""
        return self.cause in DETERMINISTIC_CAUSES


def inlined(output: Any) -> bool:
    """True if a prediction's ``output`` holds a ``data:`` URI (a file inlined in the answer, as
    Replicate has done in sync-mode answers) rather than only URLs."""
    if isinstance(output, str):
        return output.startswith("data:")
    if isinstance(output, list):
        return any(inlined(v) for v in output)
    if isinstance(output, dict):
        return any(inlined(v) for v in output.values())
    return False


def output_urls(output: Any) -> list[str]:
    """The URLs in a prediction's ``output`` (a URL, a list of them, or a dict of them)."""
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [u for u in output if isinstance(u, str)]
    if isinstance(output, dict):
        return [u for u in output.values() if isinstance(u, str)]
    return []


def _origin(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{(u.hostname or '').lower()}{':' + str(u.port) if u.port else ''}"


class Downloader:
    """Downloads outputs. ``allowed_hosts``: host names (https only, subdomains included) and/or
    explicit origins such as ``"http://127.0.0.1:8765"`` (that scheme, host and port exactly).
    ``request_timeout_s``: per request, seconds. Transient failures (429, 5xx, connection errors)
    retry ``max_attempts`` times (tenacity) with backoff ``backoff_initial_s`` .. ``max_backoff_s``
    seconds, or as long as a 429 says."""

    def __init__(self, allowed_hosts: Iterable[str], *, request_timeout_s: float, max_attempts: int,
                 backoff_initial_s: float, max_backoff_s: float):
        self.allowed_hosts = tuple(allowed_hosts)
        self.request_timeout_s = request_timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_initial_s = backoff_initial_s
        self.max_backoff_s = max_backoff_s
        self._client: httpx.Client | None = None
        self._client_pid: int | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        """This process's download client (no token; every request and redirect checked against the
        allow-list by a hook), made once: making one costs 60-100 ms (its TLS context), and kept
        connections spare the next download from the same host its handshake. Made again after a fork."""
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client = httpx.Client(timeout=httpx.Timeout(self.request_timeout_s, connect=10.0),
                                            follow_redirects=True, max_redirects=_MAX_REDIRECTS,
                                            headers={"User-Agent": "video-pipeline"},
                                            event_hooks={"request": [lambda request: self.check_url(str(request.url))]})
                self._client_pid = os.getpid()
            return self._client

    def close(self) -> None:
        """Close the download client's connections (a later download opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._client_pid == os.getpid():
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def allows(self, url: str) -> bool:
        """True if ``url`` may be downloaded from."""
        try:
            self.check_url(url)
        except OutputUnusable:
            return False
        return True

    def check_url(self, url: str) -> None:
        """Raise OutputUnusable("refused_host") unless ``url`` is on the allow-list."""
        u = urlsplit(url)
        if u.username or u.password:
            raise OutputUnusable("refused_host", "output URL carries credentials; refused", origin=_origin(url))
        host = (u.hostname or "").lower()
        for entry in self.allowed_hosts:
            if "://" in entry:
                e = urlsplit(entry)
                default = {"http": 80, "https": 443}
                if (u.scheme, host, u.port or default.get(u.scheme)) == \
                        (e.scheme, (e.hostname or "").lower(), e.port or default.get(e.scheme)):
                    return
            elif u.scheme == "https" and (host == entry.lower() or host.endswith("." + entry.lower())):
                return
        raise OutputUnusable("refused_host", f"refusing to download from {_origin(url)}: not an allow-listed output "
                                             f"host ({', '.join(self.allowed_hosts)})", origin=_origin(url))

    def download(self, url: str, dest: Path, *, max_bytes: int) -> None:
        """Download ``url`` to ``dest``: allow-listed hosts only (every redirect re-checked by a
        request hook), no API token sent, at most ``max_bytes``. Transient failures retry; raises
        OutputUnusable (403/404/410 are ``expired``) or Transient when retries are exhausted."""

        def once() -> None:
            try:
                with self._http().stream("GET", url) as resp:
                    self._save(resp, dest, max_bytes)
            except httpx.TooManyRedirects:
                raise OutputUnusable("refused_host", f"more than {_MAX_REDIRECTS} redirects", origin=_origin(url))
            except httpx.TransportError as exc:
                raise Transient(f"download: {type(exc).__name__}: {exc}") from None

        retrying = Retrying(stop=stop_after_attempt(self.max_attempts),
                            wait=wait_for_server(wait_exponential_jitter(initial=self.backoff_initial_s,
                                                                         max=self.max_backoff_s)),
                            retry=retry_if_exception_type(Transient), reraise=True)
        for attempt in retrying:
            with attempt:
                once()

    @staticmethod
    def _save(resp: httpx.Response, dest: Path, max_bytes: int) -> None:
        if resp.status_code in (403, 404, 410):
            raise OutputUnusable("expired", f"output URL expired or gone (HTTP {resp.status_code})")
        if resp.status_code == 429:
            resp.read()  # small; its headers or detail say how long to wait
            raise RateLimited("download: HTTP 429", retry_after_s(resp))
        if resp.status_code >= 500:
            raise Transient(f"download: HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise OutputUnusable("undecodable", f"download refused (HTTP {resp.status_code})")
        length = resp.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise OutputUnusable("too_large", f"output is {int(length)} bytes, over the {max_bytes}-byte cap",
                                 size=int(length), limit=max_bytes)
        part = dest.with_name(dest.name + ".part")
        total = 0
        with open(part, "wb") as f:
            for block in resp.iter_bytes():
                total += len(block)
                if total > max_bytes:
                    raise OutputUnusable("too_large", f"output exceeds the {max_bytes}-byte cap", size=total,
                                         limit=max_bytes)
                f.write(block)
        os.replace(part, dest)


def fetch_output(pred: dict[str, Any], model: ReplicateModel, request: GenerationRequest, scratch: Path,
                 downloader: Downloader, *, max_bytes: int,
                 timings: dict[str, float] | None = None) -> tuple[Path, dict[str, Any]]:
    """Download and verify a succeeded prediction's media output into ``scratch``. Images are
    resized and center-cropped to the request's ``width`` x ``height`` (pixels) as PNG. Returns
    (file, {"seconds": video/audio seconds, "verified": the file's media.MediaInfo (video/audio),
    "extra": {source size, fps}}). ``timings``, if given,
    receives ``download_s`` and ``verify_s`` (decoding, and an image's resize), seconds. Raises
    OutputUnusable, or Transient when the download keeps failing transiently."""
    timings = {} if timings is None else timings
    if pred.get("data_removed"):
        raise OutputUnusable("expired", "the prediction's output was removed from Replicate (data_removed)")
    urls = output_urls(pred.get("output"))
    if not urls:
        raise OutputUnusable("no_output", "the prediction returned no output URL")
    url = urls[0]
    ext = Path(urlsplit(url).path).suffix.lower()
    ext = ext if ext in _KNOWN_EXTS else model.output_ext
    raw = scratch / f"output{ext}"
    started = time.monotonic()
    try:
        downloader.download(url, raw, max_bytes=max_bytes)
    finally:
        timings["download_s"] = time.monotonic() - started
    started = time.monotonic()
    try:
        return _verify(raw, model, request, scratch)
    finally:
        timings["verify_s"] = time.monotonic() - started


def _verify(raw: Path, model: ReplicateModel, request: GenerationRequest, scratch: Path) -> tuple[Path, dict[str, Any]]:
    """``fetch_output``'s decoding of the downloaded ``raw`` file (see there)."""
    size = raw.stat().st_size
    try:
        if model.kind == "image":
            w, h = media.verify_image(raw)
            out = scratch / "storyboard.png"
            width, height = int(request.params["width"]), int(request.params["height"])
            with Image.open(raw) as im:
                ImageOps.fit(im.convert("RGB"), (width, height), method=Image.Resampling.LANCZOS).save(out, "PNG")
            return out, {"extra": {"source_width": w, "source_height": h}}
        if model.kind == "video":
            info = media.verify_video(raw)
            return raw, {"seconds": info.duration_s, "verified": info,
                         "extra": {"source_width": info.width, "source_height": info.height, "source_fps": info.fps}}
        info = media.verify_audio(raw)
        return raw, {"seconds": info.audio_duration_s, "verified": info, "extra": {}}
    except media.MediaError as exc:
        raise OutputUnusable("undecodable", f"downloaded output ({size} bytes) does not decode as {model.kind}: "
                                            f"{str(exc).replace(str(scratch), '')}", size=size) from None
