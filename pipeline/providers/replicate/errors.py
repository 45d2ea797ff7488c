"""What a request to the Replicate API can end in, besides an answer (a ``ProviderError`` is the
provider's final word; these are what its retries decide on)."""

from __future__ import annotations


class Transient(Exception):
    """A read (GET, download, upload) failed in a way that may pass."""


class RateLimited(Transient):
    """HTTP 429; ``retry_after`` is the server's wait in seconds, if it said (``ratelimit.retry_after_s``)."""

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


class Ambiguous(Exception):
    """A create request may or may not have reached Replicate (timeout, dropped connection, 5xx)."""


class NotSent(Exception):
    """A request certainly did not reach Replicate (connection refused)."""


class NotFound(Exception):
    """HTTP 404."""
