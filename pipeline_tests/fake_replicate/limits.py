"""Request headers and limits of the fake Replicate API: ``Cancel-After`` durations, ``Prefer: wait``,
and the sliding-window rate limits with their 429 answer.

Sources: the ``Cancel-After`` and ``Prefer`` parameters of Replicate's OpenAPI document
(``pipeline_tests/openapi/replicate-openapi.json``: durations ``30s``, ``5m``, ``1h30m45s``, bare
seconds, minimum 5 s; ``wait=n`` with 1 <= n <= 60), and https://replicate.com/docs/topics/predictions/rate-limits
(600 creates and 3000 other requests per minute; 429 body ``{"detail": "Request was throttled. Your rate
limit resets in ~30s."}``). A real 429 body quoted in github.com/nodetool-ai/nodetool/issues/5196
(2026-08) also carries ``"status": 429`` and ``"retry_after": 5``. Assumed, not documented: the
``Retry-After`` header (Django REST Framework, whose throttle message Replicate's older "Expected
available in 1 second." is, sends it with every throttled answer) equal to ``ratelimit-reset``, and
both headers only on 429s.
"""

from __future__ import annotations

import math
import re
from collections import deque

SPEC_MIN_CANCEL_AFTER_S = 5.0
"""The document's minimum ``Cancel-After`` (seconds)."""

CREATE_LIMIT_PER_MIN = 600
"""Replicate's limit on prediction creates, per minute (rate-limits doc)."""

READ_LIMIT_PER_MIN = 3000
"""Replicate's limit on every other API request, per minute (rate-limits doc)."""

MAX_PREFER_WAIT_S = 60
"""The longest ``Prefer: wait=n`` (seconds); a bare ``wait`` means this."""

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds of a ``Cancel-After`` value: units ``h``, ``m``, ``s`` (and ``ms``) combined in that
    order ("30s", "5m", "2h30m", "1h30m45s"), or a bare number of seconds ("30"). Raises ValueError
    (naming the header) for anything else, e.g. "1d", "-5m", "soon", "5m1h"."""
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    num = r"(\d+(?:\.\d+)?)"
    m = re.fullmatch(rf"(?:{num}h)?(?:{num}m(?!s))?(?:{num}s)?(?:{num}ms)?", text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"invalid Cancel-After header {value!r}: expected a duration such as 30s, 5m, 1h30m45s "
                         "or a number of seconds")
    return sum(float(n) * _UNITS[u] for n, u in zip(m.groups(), ("h", "m", "s", "ms")) if n)


def parse_prefer_wait(value: str | None) -> float | None:
    """Seconds to hold a create for a ``Prefer`` header: ``wait`` -> 60, ``wait=n`` -> n (1..60);
    None without a ``wait`` preference (other preferences are ignored, RFC 7240). Raises ValueError
    for a ``wait`` outside 1..60 or malformed."""
    if not value:
        return None
    for pref in (p.strip() for p in value.split(",")):
        if pref == "wait":
            return float(MAX_PREFER_WAIT_S)
        if pref.startswith("wait="):
            n = pref[len("wait="):].strip()
            if not n.isdigit() or not 1 <= int(n) <= MAX_PREFER_WAIT_S:
                raise ValueError(f"invalid Prefer header {value!r}: wait=n needs a whole number of seconds "
                                 f"from 1 to {MAX_PREFER_WAIT_S}")
            return float(n)
    return None


class RateLimiter:
    """A sliding-window limit: at most ``limit`` requests in any ``window_s`` seconds (None: no
    limit). ``hit(now)`` counts a request at Unix time ``now`` and returns (allowed, remaining,
    reset seconds): reset is how long until the oldest counted request leaves the window, i.e.
    until a refused request would be allowed. Refused requests are not counted. Not thread-safe:
    the caller holds the server lock."""

    def __init__(self, limit: int | None, window_s: float = 60.0):
        self.limit, self.window_s = limit, window_s
        self._hits: deque[float] = deque()

    def hit(self, now: float) -> tuple[bool, int, float]:
        while self._hits and self._hits[0] <= now - self.window_s:
            self._hits.popleft()
        if self.limit is None:
            return True, 1 << 30, 0.0
        if len(self._hits) >= self.limit:
            return False, 0, max(0.0, self._hits[0] + self.window_s - now)
        self._hits.append(now)
        return True, self.limit - len(self._hits), max(0.0, self._hits[0] + self.window_s - now)


def throttled(reset_s: float, retry_after: float | None = None) -> tuple[dict, dict[str, str]]:
    """(body, headers) of a 429: Replicate's documented body, ``ratelimit-remaining: 0``,
    ``ratelimit-reset`` and ``Retry-After`` in whole seconds (at least 1), ``status`` and
    ``retry_after`` in the body as real 429s carry them. ``retry_after`` (fault injection) overrides
    the header value as given, fractions included, so tests can wait less than a second."""
    whole = max(1, math.ceil(reset_s - 1e-9))
    header = f"{retry_after:g}" if retry_after is not None else str(whole)
    body = {"detail": f"Request was throttled. Your rate limit resets in ~{whole}s.", "status": 429,
            "retry_after": retry_after if retry_after is not None else whole}
    return body, {"Retry-After": header, "ratelimit-remaining": "0", "ratelimit-reset": header}
