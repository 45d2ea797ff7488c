"""The ``replicate`` provider: real models through the Replicate HTTP API, with a durable ledger.

Every call follows DESIGN.md "Generation: cache, ledger, retries" (the Generator has already
checked the cache when a provider method runs):

1. **Ledger intent + budget.** ``Ledger.begin`` records the intent for the request's cache key and,
   in the same transaction, refuses the call (BudgetExceededError) if the video's spend plus open
   estimates plus this estimate would exceed ``max_cost_usd``.
2. **Adopt before create.** An ``in_flight`` job from an interrupted run is resumed by polling its
   prediction id. An ``intent`` without an id (a crash between create and the ledger write) is
   looked up with ``GET /v1/predictions`` (same model, same input, created since the intent) and
   adopted if found.
3. **Create** with ``client.models.predictions.create`` (official models) or
   ``client.predictions.create(version=...)`` (pinned versions). The client never retries a POST, so
   this module does, with tenacity: 429 waits for Retry-After; an *ambiguous* failure (timeout,
   dropped connection, 5xx) is followed by a lookup before the next create, so a create that did
   reach Replicate is adopted rather than paid twice. 4xx errors (invalid input, content policy,
   401/402) are permanent. The prediction id is written to the ledger as soon as create returns.
4. **Poll** with our own loop (backoff ``poll_interval_s`` .. ``max_poll_interval_s``) until a terminal
   status (``succeeded``, ``failed``, ``canceled``, ``aborted``) or the per-kind deadline, when the
   prediction is canceled. Reads go through the client's transport as raw JSON because the
   library's ``Prediction`` model rejects statuses it does not know (``aborted``).
5. **Download at once**, only from allow-listed hosts over https (http only for origins listed
   explicitly, e.g. a test server), bounded in size, then decode to verify, then price the output
   (``pipeline.models``), record the terminal state and cost in the ledger, and return.

Errors: ProviderError(retryable=False) for permanent failures (invalid input, content policy, a
failed prediction, a refused output host); ProviderError(retryable=True) for transient ones that
exhausted their retries (rate limits, 5xx, deadline, expired or corrupt output; retrying those
creates a new prediction). The API token is never logged nor put in any message or manifest.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import math
import os
import random
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image, ImageOps
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from pipeline import media
from pipeline.generation import GenerationRequest, ProviderResult
from pipeline.ledger import Job, Ledger, default_ledger_path
from pipeline.models import DEFAULTS, ReplicateModel, get_model
from pipeline.providers.base import Provider, ProviderError
from pipeline.spec import MIN_BEAT_S, BeatSpec, sha256_json
from pipeline.store import Workspace

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.replicate.com"
DEFAULT_OUTPUT_HOSTS: tuple[str, ...] = ("replicate.delivery",)
"""Hosts outputs may be downloaded from by default (https only; subdomains included)."""

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
"""Every terminal status the API sends. Anything else is treated as still running."""

DEFAULT_DEADLINES_S = {"image": 600.0, "video": 1800.0, "audio": 1200.0, "text": 600.0}
"""Polling deadline per call, seconds, by model kind."""

DEFAULT_MAX_DOWNLOAD_BYTES = {"image": 64 << 20, "video": 1 << 30, "audio": 256 << 20, "text": 8 << 20}
"""Largest output accepted, bytes, by model kind."""

MAX_DATA_URI_PNG_BYTES = 256 << 10
"""Input images up to this size go as PNG data URIs; larger ones are re-encoded as JPEG (quality 92)."""

_KNOWN_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".mp4", ".mov", ".webm", ".mp3", ".wav", ".m4a", ".flac", ".ogg"}


class _RateLimited(Exception):
    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


class _Ambiguous(Exception):
    """The create request may or may not have reached Replicate."""


class _NotSent(Exception):
    """The create request certainly did not reach Replicate (connection refused)."""


class _Transient(Exception):
    """A read (GET, download) failed in a way that may pass."""


class _NotFound(Exception):
    pass


class _OutputUnusable(Exception):
    """A succeeded (paid) prediction's output cannot be used: expired, corrupt, too big or refused."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class _DefaultTimeout(httpx.BaseTransport):
    """Gives requests sent without any timeout a default one.

    replicate 1.0.x sends create with ``timeout=None`` (no timeout at all) unless ``wait`` is
    used; a hung create would block forever. This transport puts ``timeout`` on such requests.
    """

    def __init__(self, inner: httpx.BaseTransport, timeout: httpx.Timeout):
        self._inner = inner
        self._timeout = timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        t = request.extensions.get("timeout")
        if not t or all(v is None for v in t.values()):
            request.extensions["timeout"] = self._timeout.as_dict()
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def image_data_uri(path: str | Path) -> str:
    """A ``data:`` URI of an input image: the PNG itself up to MAX_DATA_URI_PNG_BYTES, else a JPEG
    (quality 92, 4:4:4) of it. Deterministic, so a rerun sends byte-identical input."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix.lower() == ".png" and len(data) <= MAX_DATA_URI_PNG_BYTES:
        mime = "image/png"
    else:
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=92, subsampling=0)
        data, mime = buf.getvalue(), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _output_urls(output: Any) -> list[str]:
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [u for u in output if isinstance(u, str)]
    if isinstance(output, dict):
        return [u for u in output.values() if isinstance(u, str)]
    return []


def _min_budget(*values: float | None) -> float | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None


class ReplicateProvider(Provider):
    """Generates with real models on Replicate (see the module doc for the call protocol).

    Construct with ``get_provider("replicate", **options)``; every option has a default:

    - ``api_token``: Replicate API token; default ``$REPLICATE_API_TOKEN``. Needed only when a call
      is actually made (a fully cached rerun needs none). Never logged or stored in outputs.
    - ``base_url``: API root; default ``$REPLICATE_BASE_URL`` or https://api.replicate.com.
    - ``workspace`` (a pipeline.store.Workspace) or ``workspace_root`` (its directory) / ``ledger_path``:
      the ledger is ``ledger_path``, default ``<workspace root>/ledger.sqlite``, the root defaulting to
      ``$PIPELINE_DATA_DIR`` or ``data``. Use the same data directory as the Generator's Workspace.
    - ``allowed_hosts``: where outputs may be downloaded from: host names (https only, subdomains
      included) and/or explicit origins such as ``"http://127.0.0.1:8765"`` (that scheme, host and
      port exactly). Default ``$REPLICATE_OUTPUT_HOSTS`` (comma-separated) or ``replicate.delivery``.
    - ``image_model``, ``video_model``, ``music_model``, ``planner_model``: registry refs
      (``pipeline.models.MODELS``); defaults in ``pipeline.models.DEFAULTS``.
    - ``chunk_seconds``: chunk length (s), one of the video model's ``chunk_seconds``; default its
      first. ``fps`` is the video model's frame rate. Both drive the chunk plan.
    - ``max_cost_usd``: a per-video budget (USD) applied on top of any spec budget (the lower wins).
    - ``poll_interval_s`` (1.0), ``max_poll_interval_s`` (10.0): polling backoff, seconds.
    - ``deadline_s``: polling deadline, seconds: one number, or a dict by kind (image/video/audio/text);
      defaults DEFAULT_DEADLINES_S. On expiry the prediction is canceled.
    - ``request_timeout_s`` (30.0): HTTP timeout per request (create included), seconds.
    - ``max_create_attempts`` (6), ``backoff_initial_s`` (1.0), ``max_backoff_s`` (60.0): create
      retries and exponential backoff with jitter, seconds (a 429's Retry-After takes precedence).
    - ``max_download_attempts`` (4), ``max_download_bytes``: an int for every kind or a dict by kind;
      defaults DEFAULT_MAX_DOWNLOAD_BYTES.
    - ``lookup_skew_s`` (120.0): how far before the recorded intent a lookup still matches predictions
      (clock skew), seconds; ``lookup_max_pages`` (20) pages of ``GET /v1/predictions`` at most.
    - ``transport``: an httpx transport for the API client (tests only).

    Raises ValueError for an unknown model or a chunk length the video model cannot make.
    """

    name = "replicate"

    def __init__(
        self,
        *,
        api_token: str | None = None,
        base_url: str | None = None,
        workspace: Workspace | None = None,
        workspace_root: str | Path | None = None,
        ledger_path: str | Path | None = None,
        allowed_hosts: Iterable[str] | None = None,
        image_model: str | None = None,
        video_model: str | None = None,
        music_model: str | None = None,
        planner_model: str | None = None,
        chunk_seconds: float | None = None,
        max_cost_usd: float | None = None,
        poll_interval_s: float = 1.0,
        max_poll_interval_s: float = 10.0,
        deadline_s: float | dict[str, float] | None = None,
        request_timeout_s: float = 30.0,
        max_create_attempts: int = 6,
        backoff_initial_s: float = 1.0,
        max_backoff_s: float = 60.0,
        max_download_attempts: int = 4,
        max_download_bytes: int | dict[str, int] | None = None,
        lookup_skew_s: float = 120.0,
        lookup_max_pages: int = 20,
        transport: httpx.BaseTransport | None = None,
    ):
        self.__token = api_token or os.environ.get("REPLICATE_API_TOKEN") or None
        self.base_url = (base_url or os.environ.get("REPLICATE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        root = Path(workspace.root if workspace is not None
                    else workspace_root or os.environ.get("PIPELINE_DATA_DIR") or "data")
        self.ledger = Ledger(ledger_path or default_ledger_path(root))
        if allowed_hosts is None:
            env = os.environ.get("REPLICATE_OUTPUT_HOSTS", "")
            allowed_hosts = [h.strip() for h in env.split(",") if h.strip()] or DEFAULT_OUTPUT_HOSTS
        self.allowed_hosts = tuple(allowed_hosts)
        self.image = get_model(image_model or DEFAULTS["image"], "image")
        self.video = get_model(video_model or DEFAULTS["video"], "video")
        self.music = get_model(music_model or DEFAULTS["audio"], "audio")
        self.planner = get_model(planner_model or DEFAULTS["text"], "text")
        self.image_model, self.video_model = self.image.id, self.video.id
        self.music_model, self.planner_model = self.music.id, self.planner.id
        if chunk_seconds is None:
            chunk_seconds = self.video.chunk_seconds[0]
        if not any(abs(chunk_seconds - c) < 1e-9 for c in self.video.chunk_seconds):
            raise ValueError(f"{self.video.ref} makes chunks of {', '.join(f'{c:g}' for c in self.video.chunk_seconds)} s, "
                             f"not {chunk_seconds:g} s")
        self.chunk_seconds = float(chunk_seconds)
        self.fps = int(self.video.fps or 24)
        self.max_cost_usd = max_cost_usd
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max(poll_interval_s, max_poll_interval_s)
        if isinstance(deadline_s, (int, float)):
            self.deadlines_s = {k: float(deadline_s) for k in DEFAULT_DEADLINES_S}
        else:
            self.deadlines_s = {**DEFAULT_DEADLINES_S, **(deadline_s or {})}
        self.request_timeout_s = request_timeout_s
        self.max_create_attempts = max(1, max_create_attempts)
        self.backoff_initial_s = backoff_initial_s
        self.max_backoff_s = max_backoff_s
        self.max_download_attempts = max(1, max_download_attempts)
        if isinstance(max_download_bytes, int):
            self.max_download_bytes = {k: max_download_bytes for k in DEFAULT_MAX_DOWNLOAD_BYTES}
        else:
            self.max_download_bytes = {**DEFAULT_MAX_DOWNLOAD_BYTES, **(max_download_bytes or {})}
        self.lookup_skew_s = lookup_skew_s
        self.lookup_max_pages = lookup_max_pages
        self._transport = transport
        self._client = None
        self._client_pid: int | None = None
        self._lock = threading.Lock()
        self._tls = threading.local()
        self.planner_cost_usd = 0.0
        """USD paid for planner calls by this provider instance (plans have no manifest to carry it)."""

    def __repr__(self) -> str:  # never the token
        return (f"ReplicateProvider(base_url={self.base_url!r}, image={self.image_model!r}, video={self.video_model!r}, "
                f"music={self.music_model!r}, chunk_seconds={self.chunk_seconds:g}, ledger={str(self.ledger.path)!r})")

    def close(self) -> None:
        """Close the API client's connections (a later call opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client._client.close()  # replicate.Client has no close(); its httpx client does
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --- safety --------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        token = self.__token
        return text.replace(token, "[REDACTED]") if token else text

    def _error(self, message: str, *, retryable: bool) -> ProviderError:
        return ProviderError(self._redact(message), retryable=retryable)

    # --- the API client ------------------------------------------------------------------------

    def _api(self):
        """The replicate.Client of this process (created lazily, again after a fork)."""
        if not self.__token:
            raise ProviderError("REPLICATE_API_TOKEN is not set: the replicate provider needs an API token "
                                "(set the environment variable or pass api_token)", retryable=False)
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                import replicate

                timeout = httpx.Timeout(self.request_timeout_s, connect=min(10.0, self.request_timeout_s))
                transport = _DefaultTimeout(self._transport or httpx.HTTPTransport(), timeout)
                self._client = replicate.Client(api_token=self.__token, base_url=self.base_url, timeout=timeout,
                                                transport=transport, event_hooks={"response": [self._on_response]})
                self._client_pid = os.getpid()
            return self._client

    def _on_response(self, response: httpx.Response) -> None:
        # ReplicateError keeps only the JSON body; remember the Retry-After header of a 429 here.
        self._tls.retry_after = response.headers.get("retry-after") if response.status_code == 429 else None

    def _retry_after(self, detail: str | None) -> float | None:
        value = getattr(self._tls, "retry_after", None)
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                try:  # an HTTP-date (RFC 9110), else ISO 8601
                    when = email.utils.parsedate_to_datetime(value).timestamp()
                except (TypeError, ValueError):
                    when = _parse_time(value)
                if when is not None:
                    return max(0.0, when - time.time())
        m = re.search(r"available in ~?(\d+(?:\.\d+)?) second", detail or "")
        return float(m.group(1)) if m else None

    def _get_json(self, path: str, *, what: str, until: float) -> dict[str, Any]:
        """GET ``path`` (API path or absolute URL) as JSON, retrying transient failures until the
        monotonic time ``until``. Raises _NotFound (404), _Transient (exhausted) or ProviderError."""
        from replicate.exceptions import ReplicateError

        def once() -> dict[str, Any]:
            try:
                return self._api()._request("GET", path).json()
            except ReplicateError as exc:
                status = exc.status or 0
                if status == 404:
                    raise _NotFound(f"{what}: not found (HTTP 404)") from None
                if status == 429 or status >= 500:
                    raise _Transient(f"{what}: HTTP {status} {exc.detail or exc.title or ''}".strip()) from None
                if status == 401:
                    raise self._error("Replicate rejected the API token (HTTP 401); check REPLICATE_API_TOKEN",
                                      retryable=False) from None
                raise self._error(f"{what}: HTTP {status}: {exc.detail or exc.title}", retryable=False) from None
            except (httpx.TransportError, ValueError) as exc:
                raise _Transient(f"{what}: {type(exc).__name__}: {exc}") from None

        retrying = Retrying(
            stop=stop_after_delay(max(0.0, until - time.monotonic())) | stop_after_attempt(1000),
            wait=wait_exponential_jitter(initial=self.poll_interval_s, max=self.max_poll_interval_s),
            retry=retry_if_exception_type(_Transient), reraise=True,
            before_sleep=lambda rs: log.warning("retrying %s after %s", what, self._redact(str(rs.outcome.exception()))),
        )
        for attempt in retrying:
            with attempt:
                return once()
        raise AssertionError("unreachable")

    # --- Provider interface --------------------------------------------------------------------

    def render_image(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """A storyboard image from the image model, resized and center-cropped to the request's
        ``width`` x ``height`` (pixels) as PNG. Raises ProviderError / BudgetExceededError."""
        return self._run_media(request, get_model(request.model, "image"), scratch)

    def render_chunk(self, request: GenerationRequest, start_image: Path, scratch: Path) -> ProviderResult:
        """A video chunk from the image-to-video model, starting on ``start_image`` (sent as a data
        URI in the model's image field). The chunk is the model's own length for
        ``params.duration_s`` (e.g. 81 frames at 16 fps for 5 s on Wan) and size."""
        return self._run_media(request, get_model(request.model, "video"), scratch, image=start_image)

    def render_music(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """A music track of ``params.duration_s`` seconds (prompt plus ``bpm``). Raises ProviderError
        (not retryable) when the model cannot make a track that long in one call."""
        model = get_model(request.model, "audio")
        seconds = float(request.params.get("duration_s", 0))
        if model.max_duration_s is not None and seconds > model.max_duration_s:
            raise self._error(f"{model.ref} makes at most {model.max_duration_s:g} s of music per call; "
                              f"this video needs {seconds:g} s (choose another music_model)", retryable=False)
        return self._run_media(request, model, scratch)

    def estimate_cost_usd(self, request: GenerationRequest) -> float:
        """Registry price of ``request`` before it is made (USD); 0 for models not in the registry."""
        try:
            return get_model(request.model).estimate_usd(request)
        except ValueError:
            return 0.0

    def check_models(self) -> dict[str, str]:
        """Ask the API that every configured model (and pinned version) exists. Returns
        {model id: "ok"}; raises ProviderError naming the first one that does not."""
        from replicate.exceptions import ReplicateError

        out = {}
        for m in (self.image, self.video, self.music, self.planner):
            try:
                model = self._api().models.get(m.ref)
                if m.version:
                    model.versions.get(m.version)
            except ReplicateError as exc:
                raise self._error(f"{m.id}: not available on Replicate (HTTP {exc.status}: {exc.detail})",
                                  retryable=False) from None
            out[m.id] = "ok"
        return out

    # --- one media call ------------------------------------------------------------------------

    def _run_media(self, request: GenerationRequest, model: ReplicateModel, scratch: Path, *,
                   image: Path | None = None) -> ProviderResult:
        extra = {"image": image_data_uri(image)} if image is not None else {}
        inp = model.build_input(request, **extra)
        key = request.cache_key()
        estimate = model.estimate_usd(request)
        job = self.ledger.begin(key, provider=self.name, model=model.id, video_id=request.labels.get("video_id"),
                                estimate_usd=estimate, max_cost_usd=_min_budget(request.max_cost_usd, self.max_cost_usd),
                                input_sha256=sha256_json(inp), labels=request.labels)
        pred, how, creates = self._settle(job, model, inp)
        pid, status = pred["id"], pred.get("status")
        if status == "succeeded":
            try:
                path, units_info = self._fetch_output(pred, model, request, scratch)
            except _OutputUnusable as exc:
                # Paid for, but unusable: record the spend, close the job (a retry creates anew).
                msg = self._redact(f"{model.id} prediction {pid} succeeded but its output is unusable: {exc}")
                self.ledger.finish(key, "failed", cost_usd=estimate, error=msg, status="succeeded")
                raise ProviderError(msg, retryable=exc.retryable) from None
            cost = model.cost(request.params, output_seconds=units_info.get("seconds"),
                              metrics=pred.get("metrics") or {})
            self.ledger.finish(key, "succeeded", cost_usd=cost.usd, status="succeeded",
                               output={"urls": _output_urls(pred.get("output"))})
            log.info("%s prediction %s succeeded (%s): %s %s, $%.4f", model.id, pid, how, cost.units, cost.unit,
                     cost.usd)
            return ProviderResult(path=path, model=model.id, prediction_id=pid, cost_usd=cost.usd, extra={
                "replicate_model": model.ref, "replicate_version": model.version, "obtained_by": how,
                "create_attempts": creates, "billed_units": cost.units, "billed_unit": cost.unit,
                "price_usd": cost.price.usd, "price_source": cost.price.source,
                "predict_time_s": (pred.get("metrics") or {}).get("predict_time"), **units_info.get("extra", {}),
            })
        self._raise_terminal(key, model, pred)
        raise AssertionError("unreachable")

    def _raise_terminal(self, key: str, model: ReplicateModel, pred: dict[str, Any]) -> None:
        pid, status = pred.get("id"), pred.get("status")
        error = pred.get("error") or "no error message"
        failed_cost = model.cost({}, metrics=pred.get("metrics") or {}).usd if model.price({}).unit == "gpu_second" \
            else 0.0
        if status == "failed":
            msg = self._redact(f"{model.id} prediction {pid} failed: {error}")
            self.ledger.finish(key, "failed", cost_usd=failed_cost, error=msg, status="failed")
            raise ProviderError(msg, retryable=False)
        msg = self._redact(f"{model.id} prediction {pid} ended {status} without output"
                           + (f": {pred.get('error')}" if pred.get("error") else ""))
        self.ledger.finish(key, "canceled", cost_usd=failed_cost, error=msg, status=str(status))
        raise ProviderError(msg, retryable=True)

    def _settle(self, job: Job, model: ReplicateModel, inp: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
        """Bring ``job`` to a terminal prediction: re-read a succeeded one, resume an in-flight one,
        adopt one found by lookup, or create one. Returns (prediction JSON, how, creates made)."""
        key, pid, creates = job.key, job.prediction_id, 0
        if job.state == "succeeded" and pid:
            how = "refetched"
            log.info("%s: ledger says prediction %s succeeded; fetching its output again", model.id, pid)
        elif job.resumed and pid:
            how = "resumed"
            log.info("%s: resuming prediction %s from the ledger (no new create)", model.id, pid)
        else:
            how = "created"
            if job.resumed:  # intent without an id: the create may have happened before a crash
                pid = self._lookup(model, inp, since=job.intent_at)
                if pid:
                    how = "adopted"
                    log.info("%s: adopting prediction %s found by lookup (no new create)", model.id, pid)
                    self.ledger.set_in_flight(key, pid, adopted=True)
            if not pid:
                pid, adopted, creates = self._create(job, model, inp)
                how = "adopted" if adopted else "created"
                self.ledger.set_in_flight(key, pid, adopted=adopted)
        return self._poll(key, pid, model), how, creates

    # --- create --------------------------------------------------------------------------------

    def _post_create(self, model: ReplicateModel, inp: dict[str, Any]) -> str:
        from replicate.exceptions import ReplicateError

        client = self._api()
        self._tls.retry_after = None
        try:
            if model.version:
                prediction = client.predictions.create(version=model.version, input=inp)
            else:
                prediction = client.models.predictions.create(model=model.ref, input=inp)
            return prediction.id
        except ReplicateError as exc:
            status, detail = exc.status or 0, exc.detail or exc.title or ""
            if status == 429:
                raise _RateLimited(f"HTTP 429: {detail}", self._retry_after(detail)) from None
            if status >= 500:
                raise _Ambiguous(f"HTTP {status}: {detail}") from None
            if status == 401:
                raise self._error("Replicate rejected the API token (HTTP 401); check REPLICATE_API_TOKEN",
                                  retryable=False) from None
            raise self._error(f"Replicate refused the {model.id} prediction (HTTP {status}): {detail}",
                              retryable=False) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _NotSent(f"{type(exc).__name__}: {exc}") from None
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Ambiguous(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # the response did not parse (e.g. a status the client does not know)
            raise _Ambiguous(f"unreadable create response: {type(exc).__name__}") from None

    def _create(self, job: Job, model: ReplicateModel, inp: dict[str, Any]) -> tuple[str, bool, int]:
        """Create the prediction, retrying 429 (after Retry-After), 5xx, timeouts and dropped
        connections; after an ambiguous failure, look it up before creating again. Returns
        (prediction id, adopted, creates sent)."""
        state = {"ambiguous": False, "sent": 0}
        backoff = wait_exponential_jitter(initial=self.backoff_initial_s, max=self.max_backoff_s)

        def wait(rs) -> float:
            exc = rs.outcome.exception()
            if isinstance(exc, _RateLimited) and exc.retry_after is not None:
                return min(self.max_backoff_s, exc.retry_after * (1 + random.uniform(0, 0.1)))
            return backoff(rs)

        def before_sleep(rs) -> None:
            log.warning("%s: create attempt %d failed (%s); retrying in %.2f s", model.id, rs.attempt_number,
                        self._redact(str(rs.outcome.exception())), rs.next_action.sleep)

        def attempt_once() -> tuple[str, bool]:
            if state["ambiguous"]:
                found = self._lookup(model, inp, since=job.intent_at)
                if found:
                    log.info("%s: the earlier create did reach Replicate; adopting prediction %s", model.id, found)
                    return found, True
            state["sent"] += 1
            try:
                pid = self._post_create(model, inp)
            except _Ambiguous:
                state["ambiguous"] = True
                raise
            except ProviderError as exc:  # refused (4xx): nothing was created
                if not state["ambiguous"]:
                    self.ledger.finish(job.key, "failed", error=str(exc), status="refused")
                raise
            log.info("%s: created prediction %s", model.id, pid)
            return pid, False

        retrying = Retrying(stop=stop_after_attempt(self.max_create_attempts), wait=wait,
                            retry=retry_if_exception_type((_RateLimited, _Ambiguous, _NotSent)),
                            before_sleep=before_sleep, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    pid, adopted = attempt_once()
                    return pid, adopted, state["sent"]
        except (_RateLimited, _Ambiguous, _NotSent) as exc:
            if state["ambiguous"]:  # a create may exist: keep the intent, so the next run looks it up again
                found = self._lookup(model, inp, since=job.intent_at)
                if found:
                    return found, True, state["sent"]
            error = self._error(f"could not create a {model.id} prediction after {state['sent']} attempts: {exc}",
                                retryable=True)
            if not state["ambiguous"]:  # certainly nothing created: release the budget reservation
                self.ledger.finish(job.key, "failed", error=str(error), status="not_created")
            raise error from None
        raise AssertionError("unreachable")

    # --- lookup --------------------------------------------------------------------------------

    @staticmethod
    def _matches(p: dict[str, Any], model: ReplicateModel, inp: dict[str, Any]) -> bool:
        if p.get("model") != model.ref:
            return False
        if model.version and p.get("version") != model.version:
            return False
        got = p.get("input")
        if not isinstance(got, dict):
            return False
        for k, v in inp.items():
            if k not in got:
                return False
            g = got[k]
            if g == v:
                continue
            # The API may keep an uploaded copy of a data URI input and show its URL instead.
            if isinstance(v, str) and v.startswith("data:") and isinstance(g, str) and g.startswith(("https://", "http://")):
                continue
            return False
        return True

    def _lookup(self, model: ReplicateModel, inp: dict[str, Any], *, since: float) -> str | None:
        """The id of a prediction of ``model`` with input ``inp`` created since ``since`` (Unix s,
        minus ``lookup_skew_s``), via ``GET /v1/predictions`` (newest first). A succeeded one is
        preferred, then a running one. None if there is none. Raises ProviderError (retryable) if
        the list cannot be read: creating blindly could pay twice."""
        floor = since - self.lookup_skew_s
        path: str | None = f"/v1/predictions?created_after={_iso(floor)}"
        found: list[dict[str, Any]] = []
        for _ in range(self.lookup_max_pages):
            try:
                data = self._get_json(path, what="list predictions",
                                      until=time.monotonic() + 3 * self.request_timeout_s)
            except (_Transient, _NotFound) as exc:
                raise self._error(f"could not look up earlier {model.id} predictions ({exc}); not creating "
                                  "another one, to avoid paying twice", retryable=True) from None
            older = False
            for p in data.get("results") or []:
                created = _parse_time(p.get("created_at"))
                if created is not None and created < floor:
                    older = True
                    continue
                if self._matches(p, model, inp):
                    found.append(p)
            path = data.get("next")
            if older or not path:
                break
            if "://" in path and urlsplit(path)[:2] != urlsplit(self.base_url)[:2]:
                log.warning("not following a predictions page on another origin (the token would go there)")
                break
        if not found:
            return None
        rank = {"succeeded": 0, "processing": 1, "starting": 1}
        best = min(found, key=lambda p: (rank.get(p.get("status"), 2), -(_parse_time(p.get("created_at")) or 0)))
        return best["id"]

    # --- poll ----------------------------------------------------------------------------------

    def _poll(self, key: str, pid: str, model: ReplicateModel) -> dict[str, Any]:
        """Poll prediction ``pid`` until a terminal status; on the deadline, cancel it and raise
        ProviderError(retryable). If the API stays unreachable, raise ProviderError(retryable) and
        leave the ledger in flight so a rerun resumes this prediction."""
        deadline_s = self.deadlines_s[model.kind]
        deadline = time.monotonic() + deadline_s
        interval = self.poll_interval_s
        while True:
            try:
                pred = self._get_json(f"/v1/predictions/{pid}", what=f"prediction {pid}", until=deadline)
            except _NotFound:
                msg = f"{model.id} prediction {pid} does not exist on Replicate (HTTP 404; another account's ledger?)"
                self.ledger.finish(key, "failed", error=msg, status="not_found")
                raise self._error(msg, retryable=False) from None
            except _Transient as exc:
                raise self._error(f"lost contact with Replicate while polling {model.id} prediction {pid} ({exc}); "
                                  "a rerun resumes it", retryable=True) from None
            status = pred.get("status")
            if status in TERMINAL_STATUSES:
                return pred
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._cancel_on_deadline(key, pid, model, deadline_s)
            time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, self.max_poll_interval_s)

    def _cancel_on_deadline(self, key: str, pid: str, model: ReplicateModel, deadline_s: float) -> dict[str, Any]:
        pred: dict[str, Any] = {}
        try:
            pred = self._api()._request("POST", f"/v1/predictions/{pid}/cancel").json()
        except Exception as exc:  # noqa: BLE001 - cancel is best effort; the error below is what matters
            log.warning("could not cancel prediction %s: %s", pid, self._redact(f"{type(exc).__name__}: {exc}"))
        if pred.get("status") == "succeeded":  # it finished while we gave up: use it
            return pred
        msg = self._redact(f"{model.id} prediction {pid} did not finish within its {deadline_s:g} s deadline; "
                           f"canceled it (status now {pred.get('status', 'unknown')})")
        log.warning(msg)
        self.ledger.finish(key, "canceled", error=msg, status=str(pred.get("status") or "canceled"))
        raise ProviderError(msg, retryable=True)

    # --- download ------------------------------------------------------------------------------

    def _check_url(self, url: str) -> None:
        u = urlsplit(url)
        if u.username or u.password:
            raise _OutputUnusable("output URL carries credentials; refused", retryable=False)
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
        raise _OutputUnusable(f"refusing to download from {u.scheme}://{host}{':' + str(u.port) if u.port else ''}: "
                              f"not an allow-listed output host ({', '.join(self.allowed_hosts)})", retryable=False)

    def _download(self, url: str, dest: Path, *, max_bytes: int) -> None:
        """Download ``url`` to ``dest``: allow-listed hosts only (each redirect re-checked), no API
        token sent, at most ``max_bytes``. Transient failures retry; 403/404/410 mean expired."""

        def once() -> None:
            current = url
            with httpx.Client(timeout=httpx.Timeout(self.request_timeout_s, connect=10.0), follow_redirects=False,
                              headers={"User-Agent": "video-pipeline"}) as http:
                for _ in range(5):
                    self._check_url(current)
                    try:
                        with http.stream("GET", current) as resp:
                            if resp.is_redirect and "location" in resp.headers:
                                current = urljoin(current, resp.headers["location"])
                                continue
                            if resp.status_code in (403, 404, 410):
                                raise _OutputUnusable(f"output URL expired or gone (HTTP {resp.status_code})")
                            if resp.status_code == 429 or resp.status_code >= 500:
                                raise _Transient(f"download: HTTP {resp.status_code}")
                            if resp.status_code != 200:
                                raise _OutputUnusable(f"download refused (HTTP {resp.status_code})")
                            length = resp.headers.get("content-length")
                            if length and length.isdigit() and int(length) > max_bytes:
                                raise _OutputUnusable(f"output is {int(length)} bytes, over the {max_bytes}-byte cap",
                                                      retryable=False)
                            part = dest.with_name(dest.name + ".part")
                            total = 0
                            with open(part, "wb") as f:
                                for block in resp.iter_bytes():
                                    total += len(block)
                                    if total > max_bytes:
                                        raise _OutputUnusable(f"output exceeds the {max_bytes}-byte cap",
                                                              retryable=False)
                                    f.write(block)
                            os.replace(part, dest)
                            return
                    except httpx.TransportError as exc:
                        raise _Transient(f"download: {type(exc).__name__}: {exc}") from None
                raise _OutputUnusable("too many redirects", retryable=False)

        retrying = Retrying(stop=stop_after_attempt(self.max_download_attempts),
                            wait=wait_exponential_jitter(initial=self.backoff_initial_s, max=self.max_backoff_s),
                            retry=retry_if_exception_type(_Transient), reraise=True)
        for attempt in retrying:
            with attempt:
                once()

    def _fetch_output(self, pred: dict[str, Any], model: ReplicateModel, request: GenerationRequest,
                      scratch: Path) -> tuple[Path, dict[str, Any]]:
        """Download and verify a succeeded prediction's output. Returns (file, {"seconds", "extra"})."""
        urls = _output_urls(pred.get("output"))
        if not urls:
            raise _OutputUnusable("the prediction returned no output URL")
        url = urls[0]
        ext = Path(urlsplit(url).path).suffix.lower()
        ext = ext if ext in _KNOWN_EXTS else model.output_ext
        raw = scratch / f"output{ext}"
        try:
            self._download(url, raw, max_bytes=self.max_download_bytes[model.kind])
        except _Transient as exc:
            raise self._error(f"could not download the output of {model.id} prediction {pred.get('id')} ({exc}); "
                              "a rerun fetches it again", retryable=True) from None
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
                return raw, {"seconds": info.duration_s,
                             "extra": {"source_width": info.width, "source_height": info.height,
                                       "source_fps": info.fps}}
            info = media.verify_audio(raw)
            return raw, {"seconds": info.audio_duration_s, "extra": {}}
        except media.MediaError as exc:
            raise _OutputUnusable(f"downloaded output does not decode: {str(exc).replace(str(scratch), '')}") from None

    # --- planner -------------------------------------------------------------------------------

    def plan_beats(self, brief: str, *, duration_s: float, style: str, max_beats: int) -> list[BeatSpec]:
        """Ask the planner LLM for beats as JSON, validated with BeatSpec; durations are rescaled to
        sum to ``duration_s`` in 0.5 s steps, none under 5 s. Invalid JSON or beats get one
        corrective retry (a second paid call); a second failure raises ProviderError (not
        retryable) quoting the problem. A succeeded plan in the ledger is reused at no cost."""
        problem: str | None = None
        text = ""
        for _ in range(2):
            prompt = planner_prompt(brief, duration_s=duration_s, style=style, max_beats=max_beats, problem=problem)
            # A GenerationRequest only to carry the prompt to the registry (plans are not media; no Generator).
            request = GenerationRequest(media_type="image", provider=self.name, model=self.planner.id, prompt=prompt,
                                        params={"task": "plan_beats"})
            text = self._run_text(request)
            try:
                return parse_beats(text, duration_s=duration_s, max_beats=max_beats)
            except ValueError as exc:
                problem = str(exc)
                log.warning("planner %s returned unusable beats: %s", self.planner.id, problem)
        raise self._error(f"planner {self.planner.id} returned invalid beats twice: {problem}. "
                          f"Last answer began: {text[:200]!r}", retryable=False)

    def _run_text(self, request: GenerationRequest) -> str:
        model = self.planner
        inp = model.build_input(request, system_prompt=PLANNER_SYSTEM, max_tokens=2048)
        key = sha256_json({"task": "plan_beats", "provider": self.name, "model": model.id, "input": inp})
        job = self.ledger.begin(key, provider=self.name, model=model.id, video_id=None,
                                estimate_usd=model.estimate_usd(request, prompt_chars=len(request.prompt), max_tokens=2048),
                                input_sha256=key, labels={"stage": "plan_beats"})
        if job.state == "succeeded" and isinstance(job.output, dict) and "text" in job.output:
            return job.output["text"]
        pred, how, _ = self._settle(job, model, inp)
        if pred.get("status") != "succeeded":
            self._raise_terminal(key, model, pred)
        out = pred.get("output")
        text = "".join(out) if isinstance(out, list) else str(out or "")
        cost = model.cost({}, metrics=pred.get("metrics") or {}, prompt_chars=len(request.prompt), output_chars=len(text))
        self.ledger.finish(key, "succeeded", cost_usd=cost.usd, output={"text": text}, status="succeeded")
        self.planner_cost_usd += cost.usd
        log.info("planner %s prediction %s (%s): %d tokens, $%.5f", model.id, pred.get("id"), how, cost.units, cost.usd)
        return text


# --- planner prompt and parsing ----------------------------------------------------------------

PLANNER_SYSTEM = ("You are a film editor. You split a narration brief into storyboard beats and answer with "
                  "JSON only: no prose, no code fences.")


def planner_prompt(brief: str, *, duration_s: float, style: str, max_beats: int, problem: str | None = None) -> str:
    """The planner's prompt. The brief sits between ``<<<`` and ``>>>`` lines."""
    low = min(max_beats, max(1, math.ceil(duration_s / 15.0)))
    text = (
        f"Split the brief below into between {low} and {max_beats} beats for a {duration_s:g}-second video "
        f"in this style: {style}.\n"
        f"Rules: keep the brief's order; every beat lasts at least {MIN_BEAT_S:g} seconds; the durations add up to "
        f"exactly {duration_s:g} seconds; each prompt says what is on screen in one or two sentences; "
        "motion is a short camera direction.\n"
        'Answer with only this JSON object: {"beats": [{"prompt": "...", "duration_s": 7.5, "motion": "slow push-in"}]}\n'
        f"BRIEF:\n<<<\n{brief.strip()}\n>>>"
    )
    if problem:
        text += f"\nYour previous answer was rejected: {problem}. Answer again with only the JSON object."
    return text


def parse_beats(text: str, *, duration_s: float, max_beats: int) -> list[BeatSpec]:
    """Beats from the planner's answer: a JSON object ``{"beats": [...]}`` or a JSON list, possibly
    inside code fences. Each item is validated with BeatSpec (prompt, duration_s, motion); durations
    are rescaled to sum to ``duration_s`` (0.5 s steps, at least MIN_BEAT_S each).
    Raises ValueError saying what is wrong."""
    s = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text.strip())
    starts = [i for i in (s.find("{"), s.find("[")) if i >= 0]
    if not starts:
        raise ValueError("the answer contains no JSON")
    start = min(starts)
    end = max(s.rfind("}"), s.rfind("]"))
    try:
        data = json.loads(s[start:end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not valid JSON ({exc.msg} at character {exc.pos})") from None
    items = data.get("beats") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ValueError('expected {"beats": [...]} with at least one beat')
    if len(items) > max_beats:
        raise ValueError(f"{len(items)} beats, but a {duration_s:g} s video holds at most {max_beats}")
    if len(items) * MIN_BEAT_S > duration_s + 1e-9:
        raise ValueError(f"{len(items)} beats of at least {MIN_BEAT_S:g} s do not fit in {duration_s:g} s")
    beats = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"beat {i} is not an object")
        try:
            beats.append(BeatSpec.model_validate({k: item[k] for k in ("prompt", "duration_s", "motion") if k in item}))
        except Exception as exc:  # pydantic ValidationError
            first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
            raise ValueError(f"beat {i}: {'.'.join(map(str, first['loc'])) or 'item'}: {first['msg']}") from None
    total = sum(b.duration_s for b in beats)
    spare = duration_s - MIN_BEAT_S * len(beats)
    extra = [max(0.0, b.duration_s - MIN_BEAT_S) for b in beats]
    weights = extra if sum(extra) > 0 else [b.duration_s / total for b in beats]
    durations = [MIN_BEAT_S + math.floor(spare * w / sum(weights) * 2) / 2 for w in weights]
    durations[-1] = round(duration_s - sum(durations[:-1]), 6)
    return [BeatSpec(prompt=b.prompt, duration_s=d, motion=b.motion) for b, d in zip(beats, durations)]
