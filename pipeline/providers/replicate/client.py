"""HTTP access to the Replicate API: one httpx client per provider and process, the errors a request
can end in, JSON reads (single, or retried with tenacity), creating a prediction with a
server-side deadline (``Cancel-After``), optionally in sync mode (``Prefer: wait=n``: the create is
held until the prediction ends or n seconds pass), and canceling. (The Files API is in ``files``.)

The client is a plain ``httpx.Client`` (no replicate-library internals): bearer token, API root,
timeouts (``DefaultTimeout`` also gives one to any request sent without), no redirects, and no
request to another origin than the API root's (the token would go there). Every read waits for the
process's read budget (``ratelimit.ReadBudget``); a 429 pauses it for as long as the answer says.
The API token is kept in a private attribute and scrubbed (``redact``) from every message.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from pipeline.models import ReplicateModel
from pipeline.providers.base import ProviderError
from pipeline.providers.replicate.errors import Ambiguous, NotFound, NotSent, RateLimited, Transient
from pipeline.providers.replicate.ratelimit import (
    DEFAULT_MAX_READS_PER_MINUTE,
    ReadBudget,
    error_detail,
    retry_after_s,
    shared_budget,
    wait_for_server,
)

__all__ = ["DEFAULT_BASE_URL", "MAX_SYNC_WAIT_S", "MIN_CANCEL_AFTER_S", "Ambiguous", "DefaultTimeout", "NotFound",
           "NotSent", "RateLimited", "ReplicateApi", "Transient", "cancel_after", "iso", "parse_time", "sync_wait",
           "wait_for_server"]

log = logging.getLogger("pipeline.providers.replicate")

DEFAULT_BASE_URL = "https://api.replicate.com"
MIN_CANCEL_AFTER_S = 5.0
"""The shortest ``Cancel-After`` the API accepts, seconds (OpenAPI spec of predictions.create)."""
MAX_SYNC_WAIT_S = 60
"""The longest ``Prefer: wait=n`` the API accepts, seconds (OpenAPI spec: 1 <= n <= 60)."""


class DefaultTimeout(httpx.BaseTransport):
    """Gives requests sent without any timeout (``timeout=None``) the default ``timeout``, so no
    request can hang forever whatever its caller passed."""

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


def parse_time(value: Any) -> float | None:
    """Unix seconds of an ISO 8601 time (``Z`` or an offset; naive means UTC), else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso(ts: float) -> str:
    """ISO 8601 UTC with microseconds and ``Z`` (the API's format) of Unix seconds ``ts``."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cancel_after(seconds: float) -> str:
    """A ``Cancel-After`` duration for ``seconds``: whole hours ("1h"), whole minutes ("30m"), else
    seconds rounded up ("90s", "46s"; at least "1s"), all forms of the OpenAPI spec (``30s``, ``5m``,
    ``1h30m45s``). Replicate cancels (or, if it had not started, aborts) the prediction when it
    has not finished that long after its creation. The API refuses less than MIN_CANCEL_AFTER_S:
    ``ReplicateApi.create`` sends at least that."""
    s = max(1, math.ceil(seconds - 1e-9))
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


def sync_wait(seconds: float) -> int:
    """``seconds`` as a ``Prefer: wait=n`` length: whole seconds from 0 (no sync mode) to
    MAX_SYNC_WAIT_S. Raises ValueError otherwise."""
    if not 0 <= seconds <= MAX_SYNC_WAIT_S or int(seconds) != seconds:
        raise ValueError(f"sync_wait_s: whole seconds from 0 (off) to {MAX_SYNC_WAIT_S}, not {seconds}")
    return int(seconds)


class ReplicateApi:
    """The Replicate HTTP API for one provider.

    ``token``: the API token (needed only when a request is made; ProviderError otherwise).
    ``request_timeout_s``: HTTP timeout per request, seconds. ``poll_interval_s`` ..
    ``max_poll_interval_s``: backoff of retried reads, seconds. ``max_reads_per_minute``: this
    process's read budget (shared by every provider of the same API root and token).
    ``transport``: an httpx transport (tests). The client is created lazily, and again after a fork.
    """

    def __init__(self, *, token: str | None, base_url: str, request_timeout_s: float, poll_interval_s: float,
                 max_poll_interval_s: float, max_reads_per_minute: float = DEFAULT_MAX_READS_PER_MINUTE,
                 transport: httpx.BaseTransport | None = None):
        self.__token = token or None
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.max_reads_per_minute = float(max_reads_per_minute)
        self._transport = transport
        self._client: httpx.Client | None = None
        self._client_pid: int | None = None
        self._lock = threading.Lock()
        digest = hashlib.sha256((token or "").encode()).hexdigest()[:16]
        self.account_key = (self.base_url, digest, id(transport) if transport is not None else None)
        """Who shares a read budget and a poller: API root, token digest (never the token), transport."""

    def __repr__(self) -> str:  # never the token
        return f"ReplicateApi(base_url={self.base_url!r})"

    @property
    def reads(self) -> ReadBudget:
        """This process's read budget for this API root and token."""
        return shared_budget(self.account_key, self.max_reads_per_minute)

    def redact(self, text: str) -> str:
        """``text`` with the API token replaced by ``[REDACTED]``."""
        token = self.__token
        return text.replace(token, "[REDACTED]") if token else text

    def error(self, message: str, *, retryable: bool) -> ProviderError:
        """A ProviderError with ``message`` redacted."""
        return ProviderError(self.redact(message), retryable=retryable)

    def client(self) -> httpx.Client:
        """The httpx client of this process. Raises ProviderError (permanent) without a token."""
        if not self.__token:
            raise ProviderError("REPLICATE_API_TOKEN is not set: the replicate provider needs an API token "
                                "(set the environment variable or pass api_token)", retryable=False)
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                timeout = httpx.Timeout(self.request_timeout_s, connect=min(10.0, self.request_timeout_s))
                transport = DefaultTimeout(self._transport or httpx.HTTPTransport(), timeout)
                self._client = httpx.Client(
                    base_url=self.base_url, timeout=timeout, transport=transport, follow_redirects=False,
                    headers={"Authorization": f"Bearer {self.__token}", "User-Agent": "video-pipeline (httpx)"})
                self._client_pid = os.getpid()
            return self._client

    def close(self) -> None:
        """Close the client's connections (a later request opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request to ``path`` (an API path, or an absolute URL on the API root's origin).
        Raises ProviderError for a URL on another origin (it would carry the token), and httpx
        errors as they come."""
        if "://" in path and urlsplit(path)[:2] != urlsplit(self.base_url)[:2]:
            raise self.error(f"refusing to send the API token to {urlsplit(path).scheme}://{urlsplit(path).netloc} "
                             f"(not the API root {self.base_url})", retryable=False)
        return self.client().request(method, path, **kwargs)

    def refusal(self, response: httpx.Response, what: str) -> Exception:
        """The error of a non-2xx read/upload answer: NotFound, RateLimited, Transient or ProviderError."""
        status, detail = response.status_code, error_detail(response)
        if status == 404:
            return NotFound(f"{what}: not found (HTTP 404: {detail})")
        if status == 429:
            wait = retry_after_s(response)
            return RateLimited(f"{what}: HTTP 429: {detail}", wait)
        if status >= 500:
            return Transient(f"{what}: HTTP {status} {detail}".strip())
        if status == 401:
            return self.error("Replicate rejected the API token (HTTP 401); check REPLICATE_API_TOKEN", retryable=False)
        return self.error(f"{what}: HTTP {status}: {detail}", retryable=False)

    def read_json(self, path: str, *, what: str) -> dict[str, Any]:
        """One GET of ``path`` as JSON, after waiting for the read budget (a 429 pauses the budget
        for as long as it says). Raises NotFound, RateLimited / Transient (5xx, connection errors,
        unreadable JSON) or ProviderError (401, other 4xx, a foreign URL)."""
        budget = self.reads
        budget.acquire()
        try:
            response = self.send("GET", path)
        except httpx.TransportError as exc:
            raise Transient(f"{what}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 300:
            exc = self.refusal(response, what)
            if isinstance(exc, RateLimited):
                budget.pause(exc.retry_after if exc.retry_after is not None else 1.0)
            raise exc
        try:
            data = response.json()
        except ValueError:
            raise Transient(f"{what}: unreadable JSON") from None
        if not isinstance(data, dict):
            raise Transient(f"{what}: expected a JSON object")
        return data

    def get_json(self, path: str, *, what: str, until: float) -> dict[str, Any]:
        """``read_json`` retried (tenacity) on transient failures until the monotonic time ``until``,
        with backoff ``poll_interval_s`` .. ``max_poll_interval_s`` (a 429's wait wins). Raises
        NotFound (404), Transient (exhausted) or ProviderError."""
        retrying = Retrying(
            stop=stop_after_delay(max(0.0, until - time.monotonic())) | stop_after_attempt(1000),
            wait=wait_for_server(wait_exponential_jitter(initial=self.poll_interval_s, max=self.max_poll_interval_s)),
            retry=retry_if_exception_type(Transient), reraise=True,
            before_sleep=lambda rs: log.warning("retrying %s after %s", what, self.redact(str(rs.outcome.exception()))))
        return retrying(self.read_json, path, what=what)

    def create(self, model: ReplicateModel, inp: dict[str, Any], *, deadline_s: float,
               wait_s: int = 0) -> dict[str, Any]:
        """POST one create (never retried here) with ``Cancel-After`` = ``deadline_s`` seconds (at
        least MIN_CANCEL_AFTER_S). Official models go to ``/v1/models/{owner}/{name}/predictions``,
        pinned versions to ``/v1/predictions``. ``wait_s`` (whole seconds, 1..MAX_SYNC_WAIT_S; 0:
        none) asks for sync mode, ``Prefer: wait=<wait_s>``: Replicate holds the request until the
        prediction ends or ``wait_s`` pass, and answers with it as it is then (terminal, or still
        starting/processing); the read timeout of this request is ``request_timeout_s`` *plus*
        ``wait_s``, so a held answer is never taken for a lost one. Returns the prediction JSON.
        Raises RateLimited (429, with the server's wait), Ambiguous (5xx, timeout, dropped
        connection, unreadable answer), NotSent (no connection), or ProviderError (permanent: 4xx,
        e.g. invalid input or content policy)."""
        self.client()  # no token: ProviderError before anything else
        path, body = ((f"/v1/models/{model.ref}/predictions", {"input": inp}) if not model.version
                      else ("/v1/predictions", {"version": model.version, "input": inp}))
        headers = {"Cancel-After": cancel_after(max(MIN_CANCEL_AFTER_S, deadline_s))}
        extra: dict[str, Any] = {}
        if sync_wait(wait_s):
            headers["Prefer"] = f"wait={int(wait_s)}"
            extra["timeout"] = httpx.Timeout(self.request_timeout_s + wait_s, connect=min(10.0, self.request_timeout_s))
        try:
            response = self.send("POST", path, json=body, headers=headers, **extra)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotSent(f"{type(exc).__name__}: {exc}") from None
        except httpx.TransportError as exc:
            raise Ambiguous(f"{type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status >= 300:
            detail = error_detail(response)
            if status == 429:
                raise RateLimited(f"HTTP 429: {detail}", retry_after_s(response))
            if status >= 500:
                raise Ambiguous(f"HTTP {status}: {detail}")
            if status == 401:
                raise self.error("Replicate rejected the API token (HTTP 401); check REPLICATE_API_TOKEN",
                                 retryable=False)
            raise self.error(f"Replicate refused the {model.id} prediction (HTTP {status}): {detail}", retryable=False)
        try:
            pred = response.json()
        except ValueError:
            raise Ambiguous("unreadable create response: not JSON") from None
        if not isinstance(pred, dict) or not isinstance(pred.get("id"), str):
            raise Ambiguous("unreadable create response: no prediction id")
        return pred

    def cancel(self, prediction_id: str) -> dict[str, Any]:
        """POST ``/v1/predictions/{id}/cancel``; the prediction JSON. Raises httpx errors, or
        ProviderError / Transient / NotFound for a refusal."""
        response = self.send("POST", f"/v1/predictions/{prediction_id}/cancel")
        if response.status_code >= 300:
            raise self.refusal(response, f"cancel of prediction {prediction_id}")
        return response.json()
