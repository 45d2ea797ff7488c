"""Charges: what Replicate bills for one prediction by how it ended (succeeded, canceled, failed,
aborted), from the model's price and billing rule (``pipeline.model_prices``).

Money in USD (rounded to 1e-6), times in seconds. Raises ValueError for a status that is not
terminal. ``pipeline.models`` re-exports ``charge_for``. Nothing here makes a network call or
imports Dagster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.models import ReplicateModel


def charge_for(model: ReplicateModel, status: str, *, metrics: dict[str, Any] | None = None,
               predict_time_s: float | None = None, seconds_requested: float | None = None,
               params: dict[str, Any] | None = None) -> float:
    """USD Replicate bills for one prediction of ``model`` that ended with ``status``.

    - "aborted" (its ``Cancel-After`` deadline passed before it started): 0.
    - "succeeded": the whole price (``rule = "full"``).
    - "canceled" / "failed": ``model.billing.canceled``: "nothing" -> 0; "full" -> the whole price;
      "time_run" -> run seconds x ``price.usd``; "tokens_so_far" -> input tokens x ``usd`` + output
      tokens x ``usd_out``, from ``metrics`` (0 when it reports none).

    The whole price is 1 unit x ``usd`` for per-image/-file prices, ``seconds_requested`` (s) x
    ``usd`` for per-second prices, run seconds x ``usd`` for GPU-time prices, tokens for token prices.
    Run seconds: ``metrics["predict_time"]``, else ``predict_time_s`` (e.g. completed_at - started_at),
    else 0. ``params`` (width/height) pick the price tier. Rounded to 1e-6 USD.

    Sources: https://replicate.com/docs/topics/predictions/lifecycle ("Aborted (never started): No
    charge"; "Canceled (started running): You pay for the time the prediction ran before it was
    canceled"); per-model rules and their sources in ``pipeline.model_prices.BILLING``. Raises
    ValueError for a status that is not terminal, or a per-second price without ``seconds_requested``.
    """
    if status == "aborted":
        return 0.0
    if status not in ("succeeded", "canceled", "failed"):
        raise ValueError(f"{model.id}: {status!r} is not a terminal prediction status "
                         "(succeeded, failed, canceled, aborted)")
    metrics = metrics or {}
    price = model.price(params or {})
    rule = "full" if status == "succeeded" else model.billing.canceled
    run_s = float(metrics.get("predict_time") or predict_time_s or 0.0)
    tokens = (float(metrics.get("input_token_count") or 0), float(metrics.get("output_token_count") or 0))
    if rule == "nothing":
        return 0.0
    if rule == "tokens_so_far" or price.unit == "token":
        return round(tokens[0] * price.usd + tokens[1] * price.usd_out, 6)
    if rule == "time_run" or price.unit == "gpu_second":
        return round(run_s * price.usd, 6)
    if price.unit in ("video_second", "audio_second"):
        if seconds_requested is None:
            raise ValueError(f"{model.id}: a per-second price needs seconds_requested to price a {status} prediction")
        return round(float(seconds_requested) * price.usd, 6)
    return round(price.usd, 6)
