"""A fake Replicate HTTP API on 127.0.0.1, for tests and benchmarks.

It implements what the ``replicate`` provider (and the replicate 1.0.x client) uses, conforming to
Replicate's OpenAPI document (``pipeline_tests/openapi/``; checked by test_replicate_conformance.py):

- ``POST /v1/models/{owner}/{name}/predictions`` (official models) and ``POST /v1/predictions``
  (``{"version": id | "owner/name:id" | "owner/name"}``) create a prediction (201), honouring
  ``Cancel-After`` (``30s``, ``5m``, ``1h30m45s``, bare seconds; sets ``deadline``; at the deadline
  a prediction still starting is ``aborted``, not charged, a running one ``canceled``) and
  ``Prefer: wait=n`` (held up to n s: 201 finished, else 202 as it is);
- ``GET /v1/predictions/{id}``, ``POST /v1/predictions/{id}/cancel``, and ``GET /v1/predictions``:
  newest first, 100 a page, cursor ``next``/``previous`` URLs, ``created_after`` (at or after),
  ``created_before`` and ``source`` filters, web predictions included;
- ``POST /v1/files`` (multipart ``content``, optional ``filename``, ``type``, ``metadata``),
  ``GET /v1/files`` (live files newest first, ``page_size`` a page, ``next`` URL),
  ``GET /v1/files/{id}``, ``DELETE /v1/files/{id}`` (204): the Files API. A prediction input naming
  one of these files by URL (``urls.get``) is read from it; an unknown, deleted or expired file URL is
  refused with 422 at create;
- ``GET /v1/models/{owner}/{name}`` (``is_official``, ``latest_version`` with its Cog input schema),
  ``.../versions``, ``.../versions/{id}``;
- ``GET /files/...``: the outputs, served from the same server (no auth, like replicate.delivery);
- ``GET /_fake/stats`` (counters as JSON), ``GET|POST /_fake/config`` (knobs), ``POST
  /_fake/clock`` (``{"advance_s": s}``), ``POST /_fake/seed`` (``{"n": .., "source": "web", ...}``)
  and ``POST /_fake/inject|release|clear`` (faults), no auth.

Like Replicate: errors are problem details (``application/problem+json``); an API prediction's
input, output and logs are removed ``retention_s`` (1 h) after it finishes (``data_removed: true``);
requests are rate limited (600 creates and 3000 others per minute, sliding window; a 429 says
``Request was throttled. Your rate limit resets in ~Ns.`` with ``Retry-After``, ``ratelimit-remaining``
and ``ratelimit-reset`` headers); optionally (``official_echo``) official models' predictions show
another model name and a ``dp-`` version. Knobs, defaults and the server clock: ``FakeReplicate``.

Predictions have realistic JSON (id, model, version, input, status, output, error, logs, metrics,
created_at/started_at/completed_at, urls) and go ``starting`` -> ``processing`` -> terminal in a
worker thread that renders *real* media with the local renderer (``render``). Every input is
checked for the model's required fields. A reference model (``bytedance/seedream-4``) checks its
reference images (``image_input``: a list of 1-10 image data URIs or live uploaded files that
decode as images; 422 otherwise) and draws them on its card, as the local provider does.

Fault injection (``FakeReplicate.inject(kind, times=1, model=None, **options)``):

- create: ``rate_limit`` (a 429 like the rate limit's, ``Retry-After``/``ratelimit-reset`` =
  ``retry_after`` s, fractions kept), ``server_error`` (``status`` 500/503;
  ``after_create=True`` creates the prediction first), ``drop_connection`` (creates, then closes the
  connection without a response), ``hang_after_create`` (creates, then holds the response
  ``seconds`` before dropping it), ``invalid_input`` (422 with ``detail``);
- outcome: ``fail`` (status failed, ``error``), ``abort`` (status aborted), ``never_finish``,
  ``hold`` (runs until ``release()``), ``queued`` (stays ``starting`` until ``release()``),
  ``slow`` (runs ``seconds``), ``corrupt_output``,
  ``expired_output`` (the output URL answers ``status`` 404), ``oversize_output`` (the output is
  padded to ``bytes``, default 80 MB), ``bad_json`` (planner text);
- reads: ``get_error`` / ``list_error`` (``status`` 500), ``download_error`` (``status`` 503);
- uploads: ``upload_error`` (``status`` 500 without storing the file; ``after_store=True`` stores it
  first; ``drop=True`` stores it, then closes the connection without a response).

Latency: ``latency`` (every API request), ``create_latency`` (a create, before the prediction
exists) and ``run_seconds`` (create -> terminal) take a number, a ``(low, high)`` uniform range, or
a callable returning seconds.

Per-prediction control (benchmarks; all optional): ``run_seconds_for(model, input)`` returns a
prediction's run time from its model and input (None: use ``run_seconds``); ``fault_for(model,
input, n)`` returns a fault kind (or a ``(kind, options)`` pair, or None) for a create request,
``n`` counting the earlier create requests with the same model and input (0 for the first);
``render_during_run=True`` renders the output inside the run time instead of after it. Each
prediction records its drawn run time in ``FakePrediction.run_s``.

Counters: ``creates`` counts predictions actually created per (model, canonical input JSON) --
the paid attempts; ``create_requests`` counts every create POST received; ``uploads`` (and
``uploads_by_sha256``) every file uploaded; ``cancels`` lists canceled ids, ``deadline_cancels``
the ids ended by ``Cancel-After``; ``throttled`` the 429s of the rate limits; ``requests`` logs
(method, path, status). ``stats()`` returns
them as JSON, keyed ``"model:sha256(canonical input)"``.

Start it with ``with FakeReplicate(...) as server:`` (``server.base_url``, ``server.origin``,
``server.token``), the ``fake_replicate`` pytest fixture (import it into a test module),
``with FakeServerProcess(...)`` (a subprocess shared by many client processes), or
``python -m pipeline_tests.fake_replicate --port 0 [--create-latency 0.5] [--run-seconds 1 3]``,
which prints ``fake Replicate at http://127.0.0.1:PORT`` once it is ready.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_tests.fake_replicate.process import READY, FakeServerProcess, main
from pipeline_tests.fake_replicate.server import FakeReplicate
from pipeline_tests.fake_replicate.state import (
    DEFAULT_TOKEN,
    FAKE_MODELS,
    FAULT_KINDS,
    MUSICGEN_VERSION,
    OFFICIAL_ECHO_DEFAULT,
    FakePrediction,
    Fault,
    canonical,
    input_key,
)

__all__ = ["DEFAULT_TOKEN", "FAKE_MODELS", "FAULT_KINDS", "MUSICGEN_VERSION", "OFFICIAL_ECHO_DEFAULT", "READY",
           "FakePrediction",
           "FakeReplicate", "FakeServerProcess", "Fault", "canonical", "fake_replicate", "input_key", "main",
           "provider_options"]


def provider_options(server: Any, workspace_root: str | Path, **overrides: Any) -> dict[str, Any]:
    """``get_provider("replicate", **options)`` options for ``server`` (a FakeReplicate or a
    FakeServerProcess): its token, base URL and output origin allow-listed, ledger under
    ``workspace_root``, and fast timings (20 ms polls, 10 ms backoff, 2 s request timeout, 20 s
    deadline). ``overrides`` win."""
    return {"api_token": server.token, "base_url": server.base_url, "allowed_hosts": [server.origin],
            "workspace_root": str(workspace_root), "poll_interval_s": 0.02, "max_poll_interval_s": 0.1,
            "backoff_initial_s": 0.01, "max_backoff_s": 0.2, "request_timeout_s": 2.0, "deadline_s": 20.0,
            **overrides}


try:
    import pytest

    @pytest.fixture
    def fake_replicate():
        """A running FakeReplicate (20-60 ms predictions, quarter-size media); closed afterwards."""
        with FakeReplicate(run_seconds=(0.02, 0.06), render_scale=0.25) as server:
            yield server
except ImportError:  # pragma: no cover - the module also runs standalone
    pass
