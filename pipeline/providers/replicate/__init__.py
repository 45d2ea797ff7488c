"""The ``replicate`` provider: real models through the Replicate HTTP API, with a durable ledger.

Every call follows DESIGN.md "Generation: cache, ledger, retries" (the Generator has already
checked the cache when a provider method runs). The modules of this package:

- ``provider``: ``ReplicateProvider``, its options and the Provider interface; ``calls``: one
  media or planner request turned into a paid call and back into a result.
- ``client``: the httpx client (token, API root, timeouts, same-origin only), JSON reads (single or
  retried), create with ``Cancel-After``, cancel; ``errors``: what a request can end in.
- ``ratelimit``: how long a 429 says to wait (``ratelimit-reset``, Retry-After, its detail) and the
  process's read budget (``max_reads_per_minute``).
- ``poller``: the process's one poller: every prediction in flight, read within the budget, batched
  through the list endpoint when many are in flight.
- ``jobs``: the ledger protocol: claim the cache key (budget checked with the intent), wait for a
  live owner and adopt its result for free, or own the job under a renewed lease; ``unusable``:
  paid outputs that cannot be used, and when that forbids buying again.
- ``predictions``: create (retried; looked up after an ambiguous failure), lookup, poll, cancel.
- ``download``: allow-listed, size-capped downloads and verification; causes of unusable outputs.
- ``files``: input images, always lossless PNG, as data URIs or Files API uploads (once per
  content; an upload whose answer was lost is found by its checksum, not sent twice).
- ``planner``: the brief-to-beats prompt and the parsing of its answer.

Errors: ProviderError(retryable=False) for permanent failures (invalid input, content policy, a
failed prediction, a refused or oversized output, an output that was unusable twice);
ProviderError(retryable=True) for transient ones that exhausted their retries (rate limits, 5xx,
deadline, an expired or corrupt output bought once). The API token is never logged nor put in any
message, manifest or ledger row.
"""

from __future__ import annotations

from pipeline.providers.replicate.client import DEFAULT_BASE_URL, MIN_CANCEL_AFTER_S, cancel_after
from pipeline.providers.replicate.download import DEFAULT_MAX_DOWNLOAD_BYTES, DEFAULT_OUTPUT_HOSTS
from pipeline.providers.replicate.files import MAX_DATA_URI_PNG_BYTES, image_data_uri
from pipeline.providers.replicate.planner import PLANNER_SYSTEM, parse_beats, planner_prompt
from pipeline.providers.replicate.poller import TERMINAL_STATUSES
from pipeline.providers.replicate.provider import DEFAULT_DEADLINES_S, ReplicateProvider
from pipeline.providers.replicate.ratelimit import DEFAULT_MAX_READS_PER_MINUTE

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_DEADLINES_S", "DEFAULT_MAX_DOWNLOAD_BYTES", "DEFAULT_MAX_READS_PER_MINUTE",
           "DEFAULT_OUTPUT_HOSTS", "MAX_DATA_URI_PNG_BYTES", "MIN_CANCEL_AFTER_S", "PLANNER_SYSTEM",
           "TERMINAL_STATUSES", "ReplicateProvider", "cancel_after", "image_data_uri", "parse_beats",
           "planner_prompt"]
