"""Replicate's rate limits: how long a 429 says to wait, and the share of the read limit one
process uses.

Replicate allows, per account, 600 prediction creates a minute and 3000 requests a minute to every
other endpoint (reads: ``GET /v1/predictions/{id}``, the list, files, models), with short bursts
above that (https://replicate.com/docs/topics/predictions/rate-limits, read 2026-11). A throttled
request answers 429 with ``{"detail": "Request was throttled. Your rate limit resets in ~30s."}``
and the headers ``ratelimit-remaining`` (requests left) and ``ratelimit-reset`` (seconds until the
limit resets); older answers said ``"Expected available in 1 second."``, and a proxy may add
``Retry-After``. ``retry_after_s`` reads all of them.

``ReadBudget`` spaces one process's reads to ``max_reads_per_minute`` (``ReplicateSettings``;
default 1500, half the account's 3000, because several processes -- concurrent renders, the
daemon's run workers -- share the account and each keeps its own budget). After a read answered
429 every read of the process waits until the limit resets. One budget per (API root, token) per
process: ``shared_budget``.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any

import httpx
from tenacity import RetryCallState

from pipeline.procs import PerProcess
from pipeline.providers.replicate.errors import RateLimited

DEFAULT_MAX_READS_PER_MINUTE = 1500
"""Reads per minute one process may send: half the account's 3000, as several processes share it."""

ACCOUNT_READS_PER_MINUTE = 3000
"""Replicate's limit for every endpoint but create, per account (rate-limits page, read 2026-11)."""

_UNIT_S = {"ms": 0.001, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
           "h": 3600.0, "hour": 3600.0}
_DETAIL = re.compile(r"(?:resets in|available in)\s*~?\s*(\d+(?:\.\d+)?)\s*(ms|sec|second|minute|min|hour|s|m|h)?",
                     re.IGNORECASE)


def _parse_time(value: str) -> float | None:
    """Unix seconds of an HTTP-date (RFC 9110) or ISO 8601 time, else None."""
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _header_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` / ``ratelimit-reset`` value: delta seconds (a number
    over 1e9 is taken as a Unix time), or an HTTP-date / ISO time."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = _parse_time(value)
        return None if when is None else max(0.0, when - now)
    if seconds > 1e9:  # a Unix time, not a delta
        return max(0.0, seconds - now)
    return max(0.0, seconds)


def detail_seconds(detail: str | None) -> float | None:
    """Seconds named by a 429's ``detail``: "Your rate limit resets in ~30s." -> 30.0, "Expected
    available in 1 second." -> 1.0, "... resets in ~2m" -> 120.0; None if it names none."""
    m = _DETAIL.search(detail or "")
    if not m:
        return None
    unit = (m.group(2) or "s").lower()
    return float(m.group(1)) * _UNIT_S.get(unit, 1.0)


def error_detail(response: httpx.Response) -> str:
    """The message of an API error response: its JSON ``detail`` (else ``title``), else the start
    of its body."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "title"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key]
    return response.text[:200].strip()


def retry_after_s(response: httpx.Response, *, now: float | None = None) -> float | None:
    """Seconds a 429 ``response`` says to wait: the larger of its ``Retry-After`` and
    ``ratelimit-reset`` headers when either is present, else the time its ``detail`` names, else
    None (then the caller's own backoff applies)."""
    now = time.time() if now is None else now
    waits = [s for s in (_header_seconds(response.headers.get("retry-after"), now),
                         _header_seconds(response.headers.get("ratelimit-reset"), now)) if s is not None]
    if waits:
        return max(waits)
    return detail_seconds(error_detail(response))


MAX_SERVER_WAIT_S = 120.0
"""The longest a 429's own wait is honoured, seconds (a reset is ~30 s; a larger value is a mistake)."""


def wait_for_server(fallback):
    """A tenacity wait: a RateLimited's ``retry_after`` (plus up to 10 % jitter, at most
    MAX_SERVER_WAIT_S) when the server said how long, else ``fallback`` (another tenacity wait).
    The server's wait is not capped by the caller's backoff limit: retrying before the limit
    resets only buys another 429."""

    def wait(rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return min(MAX_SERVER_WAIT_S, exc.retry_after * (1 + random.uniform(0, 0.1)))
        return fallback(rs)

    return wait


class ReadBudget:
    """At most ``per_minute`` reads a minute from this process, evenly spaced (60/per_minute s
    apart) with bursts of up to ``burst`` reads after a quiet spell, and nothing at all while a
    429 says the account's limit is spent (``pause``). Thread-safe; callers queue in arrival order
    (each reserves the next free slot, then sleeps until it)."""

    def __init__(self, per_minute: float = DEFAULT_MAX_READS_PER_MINUTE, *, burst: int = 5):
        if per_minute <= 0:
            raise ValueError(f"max_reads_per_minute must be positive, not {per_minute}")
        self.per_minute = float(per_minute)
        self.burst = max(1, int(burst))
        self._tat = 0.0  # theoretical arrival time of the next read (GCRA), monotonic seconds
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self.sent = 0
        """Reads let through so far (for measurements)."""

    @property
    def spacing_s(self) -> float:
        """Seconds between reads at the budget's rate."""
        return 60.0 / self.per_minute

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0

    def limit(self, per_minute: float) -> None:
        """Lower the budget to ``per_minute`` (never raises it: the strictest configuration wins)."""
        with self._lock:
            self.per_minute = min(self.per_minute, float(per_minute))

    def reserve(self) -> float:
        """Reserve the next read slot; returns the seconds to sleep before sending it."""
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat, now)
            send = max(now, tat - (self.burst - 1) * self.spacing_s, self._paused_until)
            self._tat = max(tat, send) + self.spacing_s
            self.sent += 1
            return send - now

    def acquire(self) -> None:
        """Block until a read may be sent."""
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)

    def pause(self, seconds: float) -> None:
        """Send no read for ``seconds`` (a 429 said the account's limit is spent)."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + max(0.0, seconds))


_BUDGETS: PerProcess[ReadBudget] = PerProcess()


def shared_budget(key: Any, per_minute: float) -> ReadBudget:
    """The process's ReadBudget for ``key`` (API root and token digest), created at ``per_minute``
    or lowered to it. A forked child starts with none (its parent's state is not its own)."""
    budget = _BUDGETS.get(key, lambda: ReadBudget(per_minute))
    budget.limit(per_minute)
    return budget
