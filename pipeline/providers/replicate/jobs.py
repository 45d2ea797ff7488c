"""The ledger protocol of one paid call: claim the job, wait for a live owner, adopt what was paid
for, or own it (resume, look up, create, poll, use the output) under a renewed lease.

``Jobs.obtain(call)`` is the one path of every Replicate call, media and the planner's text alike:

1. ``Ledger.begin`` claims the cache key (budget checked in the same transaction as the intent).
2. **busy** (another live process owns it): wait, polling the ledger with backoff up to the poll
   interval cap, until the job ends or its lease lapses / its owner dies; then claim again. If the
   attempt waited on failed, its error is raised here too (nothing is bought for it).
3. **succeeded**: *adopt*: the output from the ledger (text) or by fetching the prediction by id
   and downloading it: free, reported as ``cost_usd = 0`` with the price as ``reused_cost_usd``
   and the paying video as ``paid_by``.
4. **owner**: under ``Ledger.hold`` (lease renewed every lease/3 through create, polling, download
   and verification): resume an ``in_flight`` prediction, look up an ``intent`` left by a crash,
   or create; poll (not when the sync-mode create's answer had ended: ``predictions``); use the
   output; record the terminal state and cost.

Unusable paid outputs: the cause is counted on the job (``unusable``). A deterministic cause
(``too_large``, ``refused_host``) is a permanent error at once; any other may be bought once more,
and a second unusable output of the request (same cause or not) is permanent. Before any new
purchase the counts are checked again, so no retry policy can buy a third time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from pipeline.ledger import Job, Lease, Ledger, owner_is_gone
from pipeline.models import ReplicateModel, charge_for
from pipeline.providers.base import ProviderError
from pipeline.providers.replicate.client import NotFound, ReplicateApi, Transient, parse_time
from pipeline.providers.replicate.download import OutputUnusable
from pipeline.providers.replicate.poller import TERMINAL_STATUSES
from pipeline.providers.replicate.predictions import Predictions
from pipeline.providers.replicate.unusable import ADVICE, RETENTION_S, Unusable, blocking_cause, removed_output

__all__ = ["ADVICE", "Call", "Jobs", "Obtained", "Used", "blocking_cause"]

log = logging.getLogger("pipeline.providers.replicate")

@dataclass
class Used:
    """A succeeded prediction made usable: the caller's ``value``, what it cost (``cost_usd``, USD),
    the ``output`` JSON kept in the ledger, and facts for the manifest (``info``)."""

    value: Any
    cost_usd: float
    output: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Call:
    """One paid call. ``use(prediction JSON)`` downloads/verifies/prices a succeeded prediction
    (raising OutputUnusable); ``reuse(job)`` returns the value straight from a succeeded job's
    ledger output, or None to fetch it; ``may_rebuy(cause, details)`` says whether a recorded
    deterministic cause no longer applies (the configuration changed since)."""

    key: str
    model: ReplicateModel
    inp: dict[str, Any]
    estimate_usd: float
    max_cost_usd: float | None
    video_id: str | None
    labels: dict[str, str]
    input_sha256: str | None
    use: Callable[[dict[str, Any]], Used]
    reuse: Callable[[Job], Any] = lambda job: None
    may_rebuy: Callable[[str, dict[str, Any]], bool] = lambda cause, details: False
    params: dict[str, Any] = field(default_factory=dict)
    """The request's ``params`` (width/height pick the price tier; ``duration_s`` the seconds asked)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step, filled as the call runs (``Predictions.create``/``poll``, and ``use``)."""

    def charge(self, pred: dict[str, Any]) -> float:
        """USD Replicate bills for prediction JSON ``pred`` as it ended (``models.charge_for``):
        aborted 0, canceled/failed by the model's billing rule (run seconds from ``metrics.predict_time``,
        else ``completed_at - started_at``). A status that is not terminal (a cancel that was not
        confirmed) is priced as canceled now."""
        status = str(pred.get("status") or "canceled")
        if status not in TERMINAL_STATUSES:
            status = "canceled"
        started, ended = parse_time(pred.get("started_at")), parse_time(pred.get("completed_at"))
        run_s = (ended if ended is not None else time.time()) - started if started is not None else None
        seconds = (self.model.generated_seconds(self.params)
                   if self.model.kind in ("video", "audio") and "duration_s" in self.params else None)
        return charge_for(self.model, status, metrics=pred.get("metrics") or {}, predict_time_s=run_s,
                          seconds_requested=seconds, params=self.params)


@dataclass
class Obtained:
    """What a call got: ``value``, the prediction (id, JSON when fetched), ``how`` (created,
    adopted, resumed, refetched, waited), create requests sent, and the money: ``cost_usd`` this
    call paid, ``reused_cost_usd`` the price of an already-paid prediction it adopted, ``paid_by``
    the video that paid (USD)."""

    value: Any
    prediction_id: str | None
    pred: dict[str, Any] | None
    how: str
    creates: int
    cost_usd: float
    reused_cost_usd: float
    paid_by: str | None
    info: dict[str, Any] = field(default_factory=dict)


_KEY_LOCKS: dict[tuple[str, str], list] = {}
_KEY_LOCKS_GUARD = threading.Lock()


class _KeyLock:
    """Serializes the threads of this process on one (ledger, key): the ledger's owner is a process,
    so two threads must not both act as it."""

    def __init__(self, ledger: Ledger, key: str):
        self.id = (ledger.url, key)

    def __enter__(self) -> None:
        with _KEY_LOCKS_GUARD:
            entry = _KEY_LOCKS.setdefault(self.id, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()

    def __exit__(self, *exc: object) -> None:
        with _KEY_LOCKS_GUARD:
            entry = _KEY_LOCKS[self.id]
            entry[0].release()
            entry[1] -= 1
            if entry[1] == 0:
                del _KEY_LOCKS[self.id]


class Jobs:
    """Runs calls through the ledger (see the module doc). ``lease_s``: ownership lease, seconds;
    ``poll_interval_s`` .. ``max_poll_interval_s``: backoff while waiting for another owner;
    ``wait_limit_s``: the longest wait for one owner, by model kind, seconds."""

    def __init__(self, api: ReplicateApi, ledger: Ledger, predictions: Predictions, *, lease_s: float,
                 poll_interval_s: float, max_poll_interval_s: float, wait_limit_s: dict[str, float]):
        self.api, self.ledger, self.predictions = api, ledger, predictions
        self.lease_s = float(lease_s)
        self.poll_interval_s, self.max_poll_interval_s = poll_interval_s, max_poll_interval_s
        self.wait_limit_s = wait_limit_s
        self.unusable = Unusable(api, ledger)

    def obtain(self, call: Call) -> Obtained:
        """Run ``call`` once through the ledger. Raises ProviderError / BudgetExceededError."""
        with _KeyLock(self.ledger, call.key):
            for _ in range(1000):
                job = self._begin(call)
                if job.claim == "succeeded":
                    return self._adopt(call, job, how="refetched")
                if job.claim == "owner":
                    return self._own(call, job)
                after = self._wait(call, job)
                if after is not None and after.state in ("failed", "canceled") and after.attempts == job.attempts:
                    raise self.api.error(f"{call.model.id}: the job this call waited for (owned by {job.owner}) "
                                         f"ended {after.state}: {after.error}",
                                         retryable=True if after.retryable is None else after.retryable)
                if after is not None and after.state == "succeeded":
                    return self._adopt(call, after, how="waited")
        raise AssertionError("unreachable")

    def _begin(self, call: Call) -> Job:
        return self.ledger.begin(call.key, provider="replicate", model=call.model.id, video_id=call.video_id,
                                 estimate_usd=call.estimate_usd, max_cost_usd=call.max_cost_usd,
                                 input_sha256=call.input_sha256, labels=call.labels, lease_s=self.lease_s)

    # --- waiting for another owner -------------------------------------------------------------

    def _wait(self, call: Call, busy: Job) -> Job | None:
        """Wait while ``busy``'s owner is alive and within its lease. Returns the job as last read."""
        limit = self.wait_limit_s[call.model.kind]
        log.info("%s: job %s belongs to %s (lease until %.1f); waiting for it", call.model.id, call.key[:12],
                 busy.owner, busy.lease_until or 0)

        def held(job: Job | None) -> bool:
            return (job is not None and job.is_open and job.owner == busy.owner and job.attempts == busy.attempts
                    and (job.lease_until or 0) > time.time() and not owner_is_gone(job.owner))

        retrying = Retrying(retry=retry_if_result(held), stop=stop_after_delay(limit),
                            wait=wait_exponential(multiplier=self.poll_interval_s, exp_base=1.5,
                                                  max=self.max_poll_interval_s),
                            retry_error_callback=lambda rs: rs.outcome.result())
        job = retrying(self.ledger.get, call.key)
        if held(job):
            raise self.api.error(f"{call.model.id}: waited {limit:g} s for job {call.key[:12]} of {busy.owner}, which "
                                 "still holds it; try again later", retryable=True)
        return job

    # --- adopting what was paid for ------------------------------------------------------------

    def _adopt(self, call: Call, job: Job, *, how: str) -> Obtained:
        """The output of a succeeded job, free: from the ledger, or by fetching its prediction."""
        value = call.reuse(job)
        pred: dict[str, Any] | None = None
        info: dict[str, Any] = {}
        if value is None:
            pid = job.prediction_id or ""
            log.info("%s: prediction %s was paid already (by %s); fetching its output (no new create)",
                     call.model.id, pid, job.video_id or "the planner")
            try:
                pred = self.predictions.get(pid, until=time.monotonic() + 3 * self.api.request_timeout_s)
                gone = removed_output(call, job, pred, deadline_s=self.predictions.deadlines_s[call.model.kind])
                if gone is not None:
                    raise gone
                used = call.use(pred)
            except NotFound:
                gone = OutputUnusable("expired", f"prediction {pid} no longer exists (HTTP 404)")
                self.unusable.record(call, job, gone, owner=None)
            except Transient as exc:
                raise self.api.error(f"could not fetch the output of {call.model.id} prediction {pid} ({exc}); "
                                     "a rerun fetches it again", retryable=True) from None
            except OutputUnusable as exc:
                if exc.cause in ("expired", "no_output"):  # gone for everyone: count it, allow one re-buy
                    self.unusable.record(call, job, exc, owner=None)
                raise self.api.error(f"{call.model.id} prediction {pid} (paid by {job.video_id}) has an output this "
                                     f"call cannot use ({exc.cause}): {exc}", retryable=not exc.deterministic) from None
            value, info = used.value, used.info
        return Obtained(value=value, prediction_id=job.prediction_id, pred=pred, how=how, creates=0, cost_usd=0.0,
                        reused_cost_usd=job.cost_usd, paid_by=job.video_id, info=info)

    # --- owning the job ------------------------------------------------------------------------

    def _own(self, call: Call, job: Job) -> Obtained:
        model, key = call.model, call.key
        with self.ledger.hold(job, self.lease_s) as lease:
            if job.prediction_id is None:
                self.unusable.refuse_rebuy(call, job, lease)
            pred, how, creates = self._settle(call, job, lease)
            pid = pred["id"]
            if pred.get("status") != "succeeded":
                self._raise_terminal(call, pred, lease)
            gone = removed_output(call, job, pred, deadline_s=self.predictions.deadlines_s[model.kind])
            if gone is not None:  # resumed after Replicate's retention: paid, output gone
                self.unusable.record(call, self.ledger.get(key) or job, gone, owner=lease.owner, pid=pid,
                                     cost_usd=gone.details["cost_usd"])
            try:
                used = call.use(pred)
            except OutputUnusable as exc:
                self.unusable.record(call, self.ledger.get(key) or job, exc, owner=lease.owner, pid=pid)
            done = self.ledger.finish(key, "succeeded", cost_usd=used.cost_usd, output=used.output,
                                      status="succeeded", owner=lease.owner)
        paid = done is not None and done.video_id == call.video_id
        payer = done.video_id if done is not None else (self.ledger.get(key) or job).video_id
        log.info("%s prediction %s succeeded (%s), $%.4f%s", model.id, pid, how, used.cost_usd,
                 "" if paid else f" paid by {payer}")
        return Obtained(value=used.value, prediction_id=pid, pred=pred, how=how, creates=creates,
                        cost_usd=used.cost_usd if paid else 0.0, reused_cost_usd=0.0 if paid else used.cost_usd,
                        paid_by=payer, info=used.info)

    def _settle(self, call: Call, job: Job, lease: Lease) -> tuple[dict[str, Any], str, int]:
        """Bring an owned job to a terminal prediction: resume its id, adopt one found by lookup,
        or create one. Returns (prediction JSON, how, creates sent)."""
        model, key, pid, creates = call.model, job.key, job.prediction_id, 0
        if pid:
            how = "resumed"
            log.info("%s: resuming prediction %s from the ledger (no new create)", model.id, pid)
        else:
            how = "created"
            if job.resumed:  # intent without an id: the create may have happened before a crash
                age_s = time.time() - job.intent_at
                if age_s > RETENTION_S + self.predictions.deadlines_s[model.kind]:
                    log.warning("%s: job %s's intent is %.0f s old, past Replicate's retention (%g s) and the "
                                "deadline: a prediction created before the crash has lost its input and cannot be "
                                "found by the lookup (if it existed it was paid, and this buys the request again)",
                                model.id, key[:12], age_s, RETENTION_S)
                pid = self.predictions.lookup(model, call.inp, since=job.intent_at)
                if pid:
                    how = "adopted"
                    log.info("%s: adopting prediction %s found by lookup (no new create)", model.id, pid)
                    self.ledger.set_in_flight(key, pid, adopted=True, owner=lease.owner)
            if not pid:
                pid, adopted, creates = self.predictions.create(job, model, call.inp, lease, timings=call.timings)
                how = "adopted" if adopted else "created"
                self.ledger.set_in_flight(key, pid, adopted=adopted, owner=lease.owner)
        return self.predictions.poll(key, pid, model, lease, charge=call.charge, timings=call.timings), how, creates

    def _raise_terminal(self, call: Call, pred: dict[str, Any], lease: Lease) -> None:
        """Close the job of a prediction that ended without output (failed, canceled, aborted) with
        what Replicate bills for it (``Call.charge``) and raise ProviderError: permanent for failed,
        retryable otherwise."""
        model = call.model
        pid, status = pred.get("id"), pred.get("status")
        error = pred.get("error") or "no error message"
        charged = call.charge(pred)
        billed = f" (billed ${charged:.4f})" if charged else " (not billed)"
        if status == "failed":
            msg = self.api.redact(f"{model.id} prediction {pid} failed: {error}{billed}")
            self.ledger.finish(call.key, "failed", cost_usd=charged, error=msg, status="failed", owner=lease.owner,
                               retryable=False)
            raise ProviderError(msg, retryable=False)
        msg = self.api.redact(f"{model.id} prediction {pid} ended {status} without output"
                              + (f": {pred.get('error')}" if pred.get("error") else "") + billed)
        self.ledger.finish(call.key, "canceled", cost_usd=charged, error=msg, status=str(status),
                           owner=lease.owner, retryable=True)
        raise ProviderError(msg, retryable=True)
