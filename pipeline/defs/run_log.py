"""What a run shows while it works: the stages' progress lines and the provider's own log lines
(prediction created, resumed, succeeded) in the run log as they happen, and the run's cost as run
tags the Runs list can show and filter on.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Iterator

import dagster as dg

from pipeline.costs import money
from pipeline.progress import ProgressCallback

RUN_COST_TAG = "pipeline/cost_usd"
"""Run tag: USD this run's provider calls paid (cache hits and adopted predictions are free)."""
RUN_REUSED_TAG = "pipeline/reused_usd"
"""Run tag: the price (USD) of outputs this run used without paying (cache hits, adopted predictions)."""
VIDEO_COST_TAG = "pipeline/video_cost_usd"
"""Run tag of an assembly run: what the video's calls paid in every attempt (USD, the final cost table's total)."""
RUN_PAID_KEY, RUN_REUSED_KEY = "run_paid_usd", "run_reused_usd"
"""Materialization metadata: the step's share of ``RUN_COST_TAG`` and ``RUN_REUSED_TAG`` (USD)."""

PROVIDER_LOGGER = "pipeline.providers"


def progress_logger(context: dg.AssetExecutionContext) -> ProgressCallback:
    """A ``pipeline.stages`` progress callback that writes each report's line to the run log (INFO)."""
    return lambda event: context.log.info(event.message)


class _ToRunLog(logging.Handler):
    """Copies records of one thread (the step's) to the run log."""

    def __init__(self, context: dg.AssetExecutionContext, thread_id: int):
        super().__init__(logging.INFO)
        self.context, self.thread_id = context, thread_id

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        try:
            self.context.log.log(record.levelno, f"{record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - a log line must never fail the step
            self.handleError(record)


@contextmanager
def provider_logs(context: dg.AssetExecutionContext) -> Iterator[None]:
    """While the block runs, the provider's log lines (``pipeline.providers``: prediction created
    with its id, resumed from the ledger, adopted, retried, succeeded with its cost) written by this
    step's thread also go to the run log, so a Replicate prediction that takes minutes is visible
    when it starts, not only when it ends."""
    logger = logging.getLogger(PROVIDER_LOGGER)
    handler = _ToRunLog(context, threading.get_ident())
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def tag_run_cost(context: dg.AssetExecutionContext, paid_usd: float, reused_usd: float,
                 extra_tags: dict[str, str] | None = None) -> dict[str, float]:
    """Record this step's cost (USD) and set the run's cost tags.

    Returns ``{RUN_PAID_KEY: paid_usd, RUN_REUSED_KEY: reused_usd}`` for the step's materialization
    metadata, and sets ``RUN_COST_TAG`` / ``RUN_REUSED_TAG`` on the run to those amounts plus the
    ones recorded by the run's other materializations so far (``instance.add_run_tags``, which
    Dagster itself uses on running runs; run status changes re-read the stored tags). Each costing
    step sets them again, so after the run's last one they hold the whole run. A step that runs
    twice in a run counts once. ``extra_tags`` are set too. Never raises: a failure to tag is a
    warning in the run log."""
    paid, reused = round(paid_usd, 6), round(reused_usd, 6)
    try:
        others = context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        seen = set()
        for entry in reversed(others):
            mat = entry.asset_materialization
            if mat is None or mat.asset_key == context.asset_key or mat.asset_key in seen:
                continue
            seen.add(mat.asset_key)
            paid += float(getattr(mat.metadata.get(RUN_PAID_KEY), "value", 0) or 0)
            reused += float(getattr(mat.metadata.get(RUN_REUSED_KEY), "value", 0) or 0)
        context.instance.add_run_tags(context.run_id, {RUN_COST_TAG: money(round(paid, 6)),
                                                       RUN_REUSED_TAG: money(round(reused, 6)),
                                                       **(extra_tags or {})})
    except Exception as exc:  # noqa: BLE001 - cost tags are for people; the step's result is not at stake
        context.log.warning(f"could not set the run's cost tags: {type(exc).__name__}: {exc}")
    return {RUN_PAID_KEY: round(paid_usd, 6), RUN_REUSED_KEY: round(reused_usd, 6)}
