"""Paid outputs that cannot be used: what each cause means for buying the request again, the
advice a message gives, and recording the cause on the ledger job (see ``jobs`` for where).

A deterministic cause (``too_large``, ``refused_host``) is a permanent error at once, unless the
configuration changed since (``Call.may_rebuy``); any other cause may be bought once more, and a
second unusable output of the request (same cause or not) is permanent.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from pipeline.ledger import Job, Lease, Ledger
from pipeline.providers.base import ProviderError
from pipeline.providers.replicate.client import ReplicateApi
from pipeline.providers.replicate.download import DETERMINISTIC_CAUSES, OutputUnusable

if TYPE_CHECKING:
    from pipeline.providers.replicate.jobs import Call

log = logging.getLogger("pipeline.providers.replicate")

ADVICE = {
    "too_large": "raise max_download_bytes for this kind of output, or ask the model for a smaller output "
                 "(shorter, lower resolution, compressed format)",
    "refused_host": "add the output host to REPLICATE_OUTPUT_HOSTS (allowed_hosts) if you trust it",
    "expired": "outputs vanish an hour after a prediction ends; check that downloads can finish in time "
               "(network, request_timeout_s) and that nothing delays them",
    "undecodable": "the model's output does not decode as the promised medium; choose another model or other "
                   "parameters, or report it to the model's maintainers",
    "no_output": "the model succeeded without output; check its inputs (e.g. a safety filter that drops outputs) "
                 "or choose another model",
}


RETENTION_S = 3600.0
"""How long Replicate keeps an API prediction's input, output and logs after it finishes, seconds
(https://replicate.com/docs/topics/predictions/data-retention: "removed after an hour"); the
prediction then shows ``data_removed: true`` and ``output: null``."""


def removed_output(call: "Call", job: Job, pred: dict[str, Any], *, deadline_s: float) -> OutputUnusable | None:
    """The ``expired`` OutputUnusable of a succeeded prediction whose output Replicate removed, else
    None: ``pred`` shows ``data_removed``, or it has no output and ``job``'s intent is older than
    RETENTION_S + ``deadline_s`` (it must have finished and been removed since). The message says
    when it finished (``completed_at``), what it cost (USD: the job's recorded cost, else
    ``Call.charge``) and which video paid; details carry ``completed_at``, ``cost_usd``, ``paid_by``."""
    if pred.get("status") != "succeeded":
        return None
    late = time.time() - job.intent_at > RETENTION_S + deadline_s
    if not (pred.get("data_removed") or (late and pred.get("output") in (None, "", [], {}))):
        return None
    cost = job.cost_usd if job.state == "succeeded" and job.cost_usd else call.charge(pred)
    payer = job.video_id or "the planner"
    completed = pred.get("completed_at") or "an unknown time"
    msg = (f"Replicate removed its output an hour after it finished (completed_at {completed}; API predictions "
           f"keep input, output and logs for {RETENTION_S / 3600:g} h, then show data_removed); it cost "
           f"${cost:.4f}, paid by {payer}, and that spend stays in the ledger")
    return OutputUnusable("expired", msg, completed_at=pred.get("completed_at"), cost_usd=cost, paid_by=payer)


def blocking_cause(unusable: dict[str, dict[str, Any]], may_rebuy: Callable[[str, dict[str, Any]], bool]
                   ) -> tuple[str, dict[str, Any]] | None:
    """The recorded unusable cause that forbids buying the request again, or None: a deterministic
    cause that still applies, or a second unusable output of any other cause."""
    transient = 0
    for cause, entry in unusable.items():
        if cause in DETERMINISTIC_CAUSES:
            if not may_rebuy(cause, entry):
                return cause, entry
        else:
            transient += int(entry.get("count", 0))
    if transient >= 2:
        cause = max((c for c in unusable if c not in DETERMINISTIC_CAUSES), key=lambda c: unusable[c].get("count", 0))
        return cause, unusable[cause]
    return None


def bought(entry: dict[str, Any]) -> str:
    """"N paid predictions (ids) [size/limit bytes]" of an unusable-cause ledger entry."""
    pids = [p for p in entry.get("predictions", []) if p]
    sizes = ", ".join(f"{k} {entry[k]} bytes" for k in ("size", "limit") if entry.get(k) is not None)
    return (f"{len(pids)} paid prediction{'s' if len(pids) != 1 else ''} ({', '.join(pids)})"
            + (f" [{sizes}]" if sizes else ""))


class Unusable:
    """Records unusable paid outputs of one provider's calls on its ledger (messages redacted by ``api``)."""

    def __init__(self, api: ReplicateApi, ledger: Ledger):
        self.api, self.ledger = api, ledger

    def refuse_rebuy(self, call: "Call", job: Job, lease: Lease) -> None:
        """Raise (permanent ProviderError, job closed ``failed``) if ``job``'s recorded unusable
        outputs forbid buying ``call`` again (``blocking_cause``); else return."""
        blocked = blocking_cause(job.unusable, call.may_rebuy)
        if blocked is None:
            return
        cause, entry = blocked
        msg = self.api.redact(
            f"not buying {call.model.id} again for this request (cache key {call.key[:12]}): "
            f"{bought(entry)} had unusable output ({cause}: {entry.get('message')}). To get it: {ADVICE[cause]}")
        self.ledger.finish(call.key, "failed", error=msg, status="refused_rebuy", owner=lease.owner, retryable=False)
        raise ProviderError(msg, retryable=False)

    def record(self, call: "Call", job: Job, exc: OutputUnusable, *, owner: str | None,
               pid: str | None = None, cost_usd: float | None = None) -> NoReturn:
        """Record a paid prediction's unusable output on the job and raise the ProviderError: permanent
        for a deterministic cause or a second unusable output, else retryable (one re-buy). The job
        keeps ``cost_usd`` (USD; default its recorded cost if it had succeeded, else the estimate)."""
        pid = pid or job.prediction_id
        counts = {c: dict(e) for c, e in job.unusable.items()}
        entry = counts.setdefault(exc.cause, {"count": 0, "predictions": []})
        entry.update({**exc.details, "count": int(entry.get("count", 0)) + 1,
                      "predictions": [*entry.get("predictions", []), pid]})
        permanent = blocking_cause(counts, lambda cause, details: False) is not None
        if permanent and exc.deterministic:
            msg = (f"{call.model.id} prediction {pid} succeeded (paid, ${job.cost_usd or call.estimate_usd:.4f}) but its "
                   f"output is unusable ({exc.cause}): {exc}. Not buying it again: {ADVICE[exc.cause]}")
        elif permanent:
            msg = (f"bought {call.model.id} twice for the same request (cache key {call.key[:12]}), and neither "
                   f"output was usable: {bought(entry)}; last cause {exc.cause}: {exc}. Not buying a third time: "
                   f"{ADVICE[exc.cause]}")
        else:
            msg = (f"{call.model.id} prediction {pid} succeeded but its output is unusable ({exc.cause}): {exc}; "
                   "a retry buys it once more (an output unusable for this cause may be bought again once; a "
                   "second unusable output of the request is not bought)")
        msg = self.api.redact(msg)
        cost = cost_usd if cost_usd is not None else job.cost_usd if job.state == "succeeded" else call.estimate_usd
        self.ledger.finish(call.key, "failed", cost_usd=cost, error=msg, status="succeeded", owner=owner,
                           retryable=not permanent, unusable=(exc.cause, exc.details),
                           expect_state="succeeded" if owner is None else None)
        log.error(msg)
        raise ProviderError(msg, retryable=not permanent) from None
