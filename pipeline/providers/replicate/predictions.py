"""One prediction's life on the API: create (retried, with a lookup after every ambiguous failure),
look up an earlier create, poll to a terminal status, cancel at the deadline.

- **Create** is never blindly repeated: 429 waits as long as the answer says (``ratelimit-reset``,
  Retry-After or its detail: ``ratelimit.retry_after_s``); after an *ambiguous* failure
  (timeout, dropped connection, 5xx) the next attempt first looks the prediction up
  (``GET /v1/predictions``), so a create that reached Replicate is adopted rather than paid twice.
  4xx answers (invalid input, content policy, 401/402) are permanent. Every create carries
  ``Cancel-After`` = the polling deadline, so a killed process leaves nothing running for long.
  A create is only sent while the caller's ledger lease is held.
- **Sync mode** (``sync_wait_s``, default 60; 0 off): creates carry ``Prefer: wait=n`` (n at most
  the polling deadline): Replicate holds the answer until the prediction ends or n s pass. One that
  ends within n s is in the answer, seen at once instead of a poll interval late (~1 s on average
  at the 2 s cap), and ``poll`` returns it without a read (the id is recorded in the ledger first,
  and the outcome handled, exactly as after a polled one); a longer one is polled. Default 60, the
  API's maximum: a held create costs an open connection and no read budget, and any less sends
  more predictions back to polling. Crash safety is unchanged: the intent is recorded before the
  POST, the lease is renewed by its own thread while the answer is held, a held create that times
  out (read timeout: the request timeout plus n) or loses its connection is ambiguous like any
  other, and a process killed meanwhile leaves an intent its successor resolves by lookup. An
  answer with ``data:`` URIs in its output (files inlined) is not used: the prediction is read by id.
- **Poll** (a prediction not ended within the sync wait, resumed or adopted) through the process's
  one ``poller.Poller`` (reads ``poll_interval_s`` x1.5 up to ``max_poll_interval_s`` apart,
  within the read budget, batched when many are in flight) until ``succeeded``, ``failed``,
  ``canceled`` or ``aborted``, or the per-kind deadline, when the prediction is canceled and the
  ledger job closed as ``canceled``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from pipeline.ledger import Job, Lease, Ledger
from pipeline.models import MODELS, ReplicateModel
from pipeline.providers.base import ProviderError
from pipeline.providers.replicate.client import (
    Ambiguous,
    NotFound,
    NotSent,
    RateLimited,
    ReplicateApi,
    Transient,
    iso,
    parse_time,
    sync_wait,
    wait_for_server,
)
from pipeline.providers.replicate.download import inlined
from pipeline.providers.replicate.poller import TERMINAL_STATUSES, shared_poller

log = logging.getLogger("pipeline.providers.replicate")


@contextmanager
def timed(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[name]`` (nothing if ``timings`` is None)."""
    started = time.monotonic()
    try:
        yield
    finally:
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + (time.monotonic() - started)

_VERSION_HASH = re.compile(r"[0-9a-f]{64}")


def is_version_hash(value: Any) -> bool:
    """True for a real Replicate version id (64 lowercase hex digits); False for what official
    models echo instead (``hidden``, ``dp-<hex>``) or anything else."""
    return isinstance(value, str) and _VERSION_HASH.fullmatch(value) is not None


class Predictions:
    """Create, look up, poll and cancel predictions for one provider (see the module doc).

    Times in seconds: ``deadlines_s`` polling deadline by model kind; ``poll_interval_s`` ..
    ``max_poll_interval_s`` polling backoff; ``max_create_attempts`` with backoff
    ``backoff_initial_s`` .. ``max_backoff_s``; ``lookup_skew_s`` how far before an intent a lookup
    still matches; ``lookup_max_pages`` pages of ``GET /v1/predictions`` read at most.
    ``normalize`` maps an input value to what it is compared as (upload URL -> content sha256).
    ``sync_wait_s``: whole seconds a create asks Replicate to hold its answer (``Prefer: wait``,
    0..60; 0: no sync mode, every prediction is polled).
    """

    def __init__(self, api: ReplicateApi, ledger: Ledger, *, deadlines_s: dict[str, float], poll_interval_s: float,
                 max_poll_interval_s: float, max_create_attempts: int, backoff_initial_s: float, max_backoff_s: float,
                 lookup_skew_s: float, lookup_max_pages: int, normalize: Callable[[Any], Any] = lambda v: v,
                 sync_wait_s: int = 0):
        self.api, self.ledger = api, ledger
        self.deadlines_s = deadlines_s
        self.poll_interval_s, self.max_poll_interval_s = poll_interval_s, max_poll_interval_s
        self.max_create_attempts = max(1, max_create_attempts)
        self.backoff_initial_s, self.max_backoff_s = backoff_initial_s, max_backoff_s
        self.lookup_skew_s, self.lookup_max_pages = lookup_skew_s, lookup_max_pages
        self.normalize = normalize
        self.sync_wait_s = sync_wait(sync_wait_s)
        self._created_at: dict[str, float | None] = {}  # prediction id -> creation time (Unix s), until polled
        self._ended: dict[str, dict[str, Any]] = {}  # prediction id -> its terminal create answer, until polled

    # --- create --------------------------------------------------------------------------------

    def create(self, job: Job, model: ReplicateModel, inp: dict[str, Any], lease: Lease,
               timings: dict[str, float] | None = None) -> tuple[str, bool, int]:
        """Create ``job``'s prediction, retrying 429 (after the wait it names), 5xx, timeouts and dropped
        connections; after an ambiguous failure, look it up before creating again. Returns
        (prediction id, adopted, creates sent). ``timings`` gets ``create_s``: seconds of the whole
        create, retries, their waits and the sync wait included; an answer showing the prediction
        ended is kept for ``poll``. Raises ProviderError: permanent for a refusal (the job is closed
        ``failed``), retryable when retries are exhausted or the lease was lost."""
        with timed(timings, "create_s"):
            return self._create(job, model, inp, lease)

    def _create(self, job: Job, model: ReplicateModel, inp: dict[str, Any], lease: Lease) -> tuple[str, bool, int]:
        state = {"ambiguous": False, "sent": 0}
        wait = wait_for_server(wait_exponential_jitter(initial=self.backoff_initial_s, max=self.max_backoff_s))
        deadline_s = self.deadlines_s[model.kind]
        wait_s = min(self.sync_wait_s, math.floor(deadline_s))  # never held past the polling deadline

        def before_sleep(rs: RetryCallState) -> None:
            log.warning("%s: create attempt %d failed (%s); retrying in %.2f s", model.id, rs.attempt_number,
                        self.api.redact(str(rs.outcome.exception())), rs.next_action.sleep)

        def attempt_once() -> tuple[str, bool]:
            if state["ambiguous"]:
                found = self.lookup(model, inp, since=job.intent_at)
                if found:
                    log.info("%s: the earlier create did reach Replicate; adopting prediction %s", model.id, found)
                    return found, True
            if lease.lost:
                raise ProviderError(f"{model.id}: another process took over job {job.key[:12]} (this process lost "
                                    "its ledger lease); not creating a prediction", retryable=True)
            state["sent"] += 1
            try:
                pred = self.api.create(model, inp, deadline_s=deadline_s, wait_s=wait_s)
            except Ambiguous:
                state["ambiguous"] = True
                raise
            except ProviderError as exc:  # refused (4xx): nothing was created
                if not state["ambiguous"]:
                    self.ledger.finish(job.key, "failed", error=str(exc), status="refused", owner=lease.owner,
                                       retryable=False)
                raise
            self._created_at[pred["id"]] = parse_time(pred.get("created_at"))
            status = pred.get("status")
            if status in TERMINAL_STATUSES and not (model.kind != "text" and inlined(pred.get("output"))):
                self._ended[pred["id"]] = pred
            log.info("%s: created prediction %s (%s)", model.id, pred["id"], status)
            return pred["id"], False

        retrying = Retrying(stop=stop_after_attempt(self.max_create_attempts), wait=wait,
                            retry=retry_if_exception_type((RateLimited, Ambiguous, NotSent)),
                            before_sleep=before_sleep, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    pid, adopted = attempt_once()
                    return pid, adopted, state["sent"]
        except (RateLimited, Ambiguous, NotSent) as exc:
            if state["ambiguous"]:  # a create may exist: keep the intent, so the next run looks it up again
                found = self.lookup(model, inp, since=job.intent_at)
                if found:
                    return found, True, state["sent"]
            error = self.api.error(f"could not create a {model.id} prediction after {state['sent']} attempts: {exc}",
                                   retryable=True)
            if not state["ambiguous"]:  # certainly nothing created: release the budget reservation
                self.ledger.finish(job.key, "failed", error=str(error), status="not_created", owner=lease.owner,
                                   retryable=True)
            raise error from None
        raise AssertionError("unreachable")

    # --- lookup --------------------------------------------------------------------------------

    def matches(self, p: dict[str, Any], model: ReplicateModel, inp: dict[str, Any]) -> bool:
        """True if prediction JSON ``p`` can be ``model`` run on ``inp``: every field of ``inp`` is in
        ``p["input"]`` with the same normalized value (an uploaded file counts as its content; a data
        URI matches a URL, the API may show an uploaded copy).

        The echoed ``model`` is not compared to ``model.ref``: official models show another name
        (``replicate/lifeboat-70b`` for ``meta/llama-2-70b-chat``, ``replicate-internal/...``); only
        another model of the registry is a mismatch. ``version`` is compared only when ``model`` is
        pinned and the echoed one is a real version hash (64 hex digits; not ``hidden`` or ``dp-...``).
        A prediction whose data was removed (``input`` ``{}``) never matches."""
        shown_model, shown_version = p.get("model"), p.get("version")
        if isinstance(shown_model, str) and shown_model != model.ref and shown_model in MODELS:
            return False
        if model.version and is_version_hash(shown_version) and shown_version != model.version:
            return False
        got = p.get("input")
        if not isinstance(got, dict) or not got:
            return False
        for k, v in inp.items():
            if k not in got:
                return False
            if not self._same(got[k], v):
                return False
        return True

    def _same(self, g: Any, v: Any) -> bool:
        """Whether the echoed input value ``g`` is the value ``v`` sent: equal, the same uploaded
        content, a data URI shown as a URL; lists (reference images) element by element."""
        if g == v or (isinstance(v, str) and isinstance(g, str) and self.normalize(g) == self.normalize(v)):
            return True
        if isinstance(v, str) and v.startswith("data:") and isinstance(g, str) and g.startswith(("https://", "http://")):
            return True
        return (isinstance(v, list) and isinstance(g, list) and len(g) == len(v)
                and all(self._same(a, b) for a, b in zip(g, v)))

    def lookup(self, model: ReplicateModel, inp: dict[str, Any], *, since: float) -> str | None:
        """The id of a prediction matching ``model`` and ``inp`` (``matches``) created between ``since``
        (Unix s, the ledger intent) minus ``lookup_skew_s`` and now plus ``lookup_skew_s`` (clock
        skew between this machine and Replicate), via ``GET /v1/predictions?created_after=..&
        created_before=..`` (newest first, at most ``lookup_max_pages`` pages). A succeeded one is
        preferred, then a running one. None if there is none. Raises ProviderError (retryable) if
        the list cannot be read: creating blindly could pay twice."""
        floor = since - self.lookup_skew_s
        ceiling = time.time() + self.lookup_skew_s
        path: str | None = f"/v1/predictions?created_after={iso(floor)}&created_before={iso(ceiling)}"
        found: list[dict[str, Any]] = []
        for _ in range(self.lookup_max_pages):
            try:
                data = self.api.get_json(path, what="list predictions",
                                         until=time.monotonic() + 3 * self.api.request_timeout_s)
            except (Transient, NotFound) as exc:
                raise self.api.error(f"could not look up earlier {model.id} predictions ({exc}); not creating "
                                     "another one, to avoid paying twice", retryable=True) from None
            older = False
            for p in data.get("results") or []:
                created = parse_time(p.get("created_at"))
                if created is not None and created < floor:
                    older = True
                    continue
                if self.matches(p, model, inp):
                    found.append(p)
            path = data.get("next")
            if older or not path:
                break
            if "://" in path and urlsplit(path)[:2] != urlsplit(self.api.base_url)[:2]:
                log.warning("not following a predictions page on another origin (the token would go there)")
                break
        if not found:
            return None
        rank = {"succeeded": 0, "processing": 1, "starting": 1}
        best = min(found, key=lambda p: (rank.get(p.get("status"), 2), -(parse_time(p.get("created_at")) or 0)))
        return best["id"]

    # --- poll ----------------------------------------------------------------------------------

    def get(self, pid: str, *, until: float) -> dict[str, Any]:
        """The prediction JSON of ``pid``, retrying transient failures until monotonic ``until``.
        Raises NotFound, Transient or ProviderError."""
        return self.api.get_json(f"/v1/predictions/{pid}", what=f"prediction {pid}", until=until)

    def poll(self, key: str, pid: str, model: ReplicateModel, lease: Lease,
             charge: Callable[[dict[str, Any]], float] = lambda pred: 0.0,
             timings: dict[str, float] | None = None) -> dict[str, Any]:
        """Wait (through the process's Poller) until prediction ``pid`` has a terminal status; on the
        deadline, cancel it, close the job ``canceled`` with ``charge(prediction JSON)`` (USD, what
        Replicate bills for it: ``jobs.Call.charge``) and raise ProviderError(retryable). If the API
        stays unreachable, raise ProviderError(retryable) and leave the ledger in flight so a rerun
        resumes this prediction. ``timings`` gets ``poll_s`` (seconds waited) and ``seen_late_s``
        (its ``completed_at`` -> seen: this machine's clock against Replicate's, at least 0).

        A prediction whose create answer showed it ended (sync mode, see the module doc) is not read
        again: that answer is returned (``poll_s`` ~0, and ``seen_late_s`` from the same clocks)."""
        deadline_s = self.deadlines_s[model.kind]
        created_at, ended = self._created_at.pop(pid, None), self._ended.pop(pid, None)
        try:
            with timed(timings, "poll_s"):
                pred = ended or shared_poller(self.api).wait(pid, timeout_s=deadline_s,
                                                             first_interval_s=self.poll_interval_s,
                                                             max_interval_s=self.max_poll_interval_s,
                                                             created_at=created_at)
            completed = parse_time(pred.get("completed_at"))
            if timings is not None and completed is not None:
                timings["seen_late_s"] = max(0.0, time.time() - completed)
        except NotFound:
            msg = f"{model.id} prediction {pid} does not exist on Replicate (HTTP 404; another account's ledger?)"
            self.ledger.finish(key, "failed", error=msg, status="not_found", owner=lease.owner, retryable=False)
            raise self.api.error(msg, retryable=False) from None
        except Transient as exc:
            raise self.api.error(f"lost contact with Replicate while polling {model.id} prediction {pid} ({exc}); "
                                 "a rerun resumes it", retryable=True) from None
        if pred.get("status") in TERMINAL_STATUSES:
            return pred
        return self._cancel_on_deadline(key, pid, model, deadline_s, lease, charge, last=pred)

    def _cancel_on_deadline(self, key: str, pid: str, model: ReplicateModel, deadline_s: float, lease: Lease,
                            charge: Callable[[dict[str, Any]], float], *, last: dict[str, Any]) -> dict[str, Any]:
        pred: dict[str, Any] = {}
        try:
            pred = self.api.cancel(pid)
        except Exception as exc:  # noqa: BLE001 - cancel is best effort; the error below is what matters
            log.warning("could not cancel prediction %s: %s", pid, self.api.redact(f"{type(exc).__name__}: {exc}"))
        if pred.get("status") == "succeeded":  # it finished while we gave up: use it
            return pred
        charged = charge({**last, **pred} if pred else last)
        msg = self.api.redact(f"{model.id} prediction {pid} did not finish within its {deadline_s:g} s deadline; "
                              f"canceled it (status now {pred.get('status', 'unknown')}; billed ${charged:.4f})")
        log.warning(msg)
        self.ledger.finish(key, "canceled", cost_usd=charged, error=msg, status=str(pred.get("status") or "canceled"),
                           owner=lease.owner, retryable=True)
        raise ProviderError(msg, retryable=True)
