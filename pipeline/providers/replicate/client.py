"""HTTP access to the Replicate API: one client per process, the errors a request can end in, JSON
reads with retries, creating a prediction (with a server-side deadline), canceling, and the Files API.

The replicate 1.0.x client supplies the HTTP client (auth header, base URL, its GET retries on
429/503/504) and the Files API multipart upload; reads go through its transport as raw JSON because
its ``Prediction`` model rejects statuses it does not know (``aborted``). The API token is kept in
a private attribute and scrubbed (``redact``) from every message this module produces.
"""

from __future__ import annotations

import email.utils
import io
import logging
import math
import os
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from pipeline.models import ReplicateModel
from pipeline.providers.base import ProviderError

log = logging.getLogger("pipeline.providers.replicate")

DEFAULT_BASE_URL = "https://api.replicate.com"


class RateLimited(Exception):
    """HTTP 429; ``retry_after`` is the server's wait in seconds, if it said."""

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


class Ambiguous(Exception):
    """A create request may or may not have reached Replicate (timeout, dropped connection, 5xx)."""


class NotSent(Exception):
    """A request certainly did not reach Replicate (connection refused)."""


class Transient(Exception):
    """A read (GET, download, upload) failed in a way that may pass."""


class NotFound(Exception):
    """HTTP 404."""


class DefaultTimeout(httpx.BaseTransport):
    """Gives requests sent without any timeout a default one.

    replicate 1.0.x sends create and file uploads with ``timeout=None`` (no timeout at all); a hung
    request would block forever. This transport puts ``timeout`` on such requests.
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
    """A ``Cancel-After`` header value for a deadline of ``seconds``: whole hours ("1h"), whole
    minutes ("30m"), else seconds rounded up ("45s"; at least "1s"). Replicate cancels (or, if it
    had not started, aborts) the prediction when it has not finished that long after its creation
    (https://replicate.com/docs/topics/predictions/lifecycle)."""
    s = max(1, math.ceil(seconds - 1e-9))
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


class ReplicateApi:
    """The Replicate HTTP API for one provider.

    ``token``: the API token (needed only when a request is made; ProviderError otherwise).
    ``request_timeout_s``: HTTP timeout per request, seconds. ``poll_interval_s`` ..
    ``max_poll_interval_s``: backoff of retried reads, seconds. ``transport``: an httpx transport
    (tests). The client is created lazily, and again after a fork.
    """

    def __init__(self, *, token: str | None, base_url: str, request_timeout_s: float, poll_interval_s: float,
                 max_poll_interval_s: float, transport: httpx.BaseTransport | None = None):
        self.__token = token or None
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self._transport = transport
        self._client = None
        self._client_pid: int | None = None
        self._lock = threading.Lock()
        self._tls = threading.local()

    def __repr__(self) -> str:  # never the token
        return f"ReplicateApi(base_url={self.base_url!r})"

    def redact(self, text: str) -> str:
        """``text`` with the API token replaced by ``[REDACTED]``."""
        token = self.__token
        return text.replace(token, "[REDACTED]") if token else text

    def error(self, message: str, *, retryable: bool) -> ProviderError:
        """A ProviderError with ``message`` redacted."""
        return ProviderError(self.redact(message), retryable=retryable)

    def client(self):
        """The replicate.Client of this process. Raises ProviderError (permanent) without a token."""
        if not self.__token:
            raise ProviderError("REPLICATE_API_TOKEN is not set: the replicate provider needs an API token "
                                "(set the environment variable or pass api_token)", retryable=False)
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                import replicate

                timeout = httpx.Timeout(self.request_timeout_s, connect=min(10.0, self.request_timeout_s))
                transport = DefaultTimeout(self._transport or httpx.HTTPTransport(), timeout)
                self._client = replicate.Client(api_token=self.__token, base_url=self.base_url, timeout=timeout,
                                                transport=transport, event_hooks={"response": [self._on_response]})
                self._client_pid = os.getpid()
            return self._client

    def close(self) -> None:
        """Close the client's connections (a later request opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client._client.close()  # replicate.Client has no close(); its httpx client does
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

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
                    when = parse_time(value)
                if when is not None:
                    return max(0.0, when - time.time())
        m = re.search(r"available in ~?(\d+(?:\.\d+)?) second", detail or "")
        return float(m.group(1)) if m else None

    def _classify(self, exc: Exception, what: str) -> Exception:
        """The error a failed read/upload becomes: NotFound, Transient, or a ProviderError."""
        from replicate.exceptions import ReplicateError

        if isinstance(exc, ReplicateError):
            status = exc.status or 0
            if status == 404:
                return NotFound(f"{what}: not found (HTTP 404)")
            if status == 429 or status >= 500:
                return Transient(f"{what}: HTTP {status} {exc.detail or exc.title or ''}".strip())
            if status == 401:
                return self.error("Replicate rejected the API token (HTTP 401); check REPLICATE_API_TOKEN",
                                  retryable=False)
            return self.error(f"{what}: HTTP {status}: {exc.detail or exc.title}", retryable=False)
        if isinstance(exc, (httpx.TransportError, ValueError)):
            return Transient(f"{what}: {type(exc).__name__}: {exc}")
        return exc

    def _retrying(self, until: float, what: str) -> Retrying:
        return Retrying(
            stop=stop_after_delay(max(0.0, until - time.monotonic())) | stop_after_attempt(1000),
            wait=wait_exponential_jitter(initial=self.poll_interval_s, max=self.max_poll_interval_s),
            retry=retry_if_exception_type(Transient), reraise=True,
            before_sleep=lambda rs: log.warning("retrying %s after %s", what, self.redact(str(rs.outcome.exception()))),
        )

    def get_json(self, path: str, *, what: str, until: float) -> dict[str, Any]:
        """GET ``path`` (API path or absolute URL) as JSON, retrying transient failures until the
        monotonic time ``until``. Raises NotFound (404), Transient (exhausted) or ProviderError."""
        for attempt in self._retrying(until, what):
            with attempt:
                try:
                    return self.client()._request("GET", path).json()
                except Exception as exc:  # noqa: BLE001 - classified below
                    raise self._classify(exc, what) from None
        raise AssertionError("unreachable")

    def create(self, model: ReplicateModel, inp: dict[str, Any], *, deadline_s: float) -> dict[str, Any]:
        """POST one create (never retried here) with ``Cancel-After`` = ``deadline_s`` seconds.
        Official models go to ``/v1/models/{owner}/{name}/predictions``, pinned versions to
        ``/v1/predictions``. Returns the prediction JSON. Raises RateLimited (429), Ambiguous (5xx,
        timeout, dropped connection, unreadable answer), NotSent (no connection), or ProviderError
        (permanent: 4xx, e.g. invalid input or content policy)."""
        from replicate.exceptions import ReplicateError

        client = self.client()
        self._tls.retry_after = None
        path, body = ((f"/v1/models/{model.ref}/predictions", {"input": inp}) if not model.version
                      else ("/v1/predictions", {"version": model.version, "input": inp}))
        try:
            pred = client._request("POST", path, json=body, headers={"Cancel-After": cancel_after(deadline_s)}).json()
            if not isinstance(pred, dict) or not isinstance(pred.get("id"), str):
                raise ValueError("no prediction id")
            return pred
        except ReplicateError as exc:
            status, detail = exc.status or 0, exc.detail or exc.title or ""
            if status == 429:
                raise RateLimited(f"HTTP 429: {detail}", self._retry_after(detail)) from None
            if status >= 500:
                raise Ambiguous(f"HTTP {status}: {detail}") from None
            if status == 401:
                raise self.error("Replicate rejected the API token (HTTP 401); check REPLICATE_API_TOKEN",
                                 retryable=False) from None
            raise self.error(f"Replicate refused the {model.id} prediction (HTTP {status}): {detail}",
                             retryable=False) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotSent(f"{type(exc).__name__}: {exc}") from None
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise Ambiguous(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # the response did not parse
            raise Ambiguous(f"unreadable create response: {type(exc).__name__}") from None

    def cancel(self, prediction_id: str) -> dict[str, Any]:
        """POST ``/v1/predictions/{id}/cancel``; the prediction JSON. Raises like any request."""
        return self.client()._request("POST", f"/v1/predictions/{prediction_id}/cancel").json()

    def upload(self, data: bytes, *, filename: str, content_type: str, attempts: int = 4) -> dict[str, Any]:
        """Upload ``data`` with ``POST /v1/files`` (multipart field ``content``), retrying transient
        failures ``attempts`` times. Returns the file JSON (``id``, ``urls.get``, ``expires_at``...).
        Raises ProviderError (retryable when transient failures persist)."""
        what = f"upload of {filename} ({len(data)} bytes)"
        try:
            for attempt in Retrying(stop=stop_after_attempt(max(1, attempts)),
                                    wait=wait_exponential_jitter(initial=self.poll_interval_s,
                                                                 max=self.max_poll_interval_s),
                                    retry=retry_if_exception_type(Transient), reraise=True):
                with attempt:
                    try:
                        f = self.client().files.create(io.BytesIO(data), filename=filename, content_type=content_type)
                    except Exception as exc:  # noqa: BLE001 - classified below
                        raise self._classify(exc, what) from None
                    return {"id": f.id, "urls": dict(f.urls or {}), "expires_at": f.expires_at, "size": f.size}
        except (Transient, NotFound) as exc:
            raise self.error(f"could not upload an input file to Replicate: {exc}", retryable=True) from None
        raise AssertionError("unreachable")

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        """``GET /v1/files/{id}``: the file JSON, or None if it does not exist (404). Raises
        Transient if it cannot be told, ProviderError for other refusals."""
        return self._maybe(lambda: self.get_json(f"/v1/files/{file_id}", what=f"file {file_id}",
                                                 until=time.monotonic() + 2 * self.request_timeout_s))

    @staticmethod
    def _maybe(read):
        try:
            return read()
        except NotFound:
            return None
