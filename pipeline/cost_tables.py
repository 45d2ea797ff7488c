"""Cost tables: cost lines as DataFrames with real dtypes (``COLUMNS``; segment keys are strings,
"000"), rendered with empty cells for missing values (never ``nan``), money with ``money``; and
what the ledger says was paid in a time window (``window_costs``).

Money in USD, times in Unix seconds or aware datetimes. ``pipeline.costs`` re-exports all of it,
so ``costs.cost_frame`` etc. keep working. No Dagster here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

import pandas as pd

from pipeline.ledger import Ledger
from pipeline.manifests import CostLine, money

COLUMNS = {
    "stage": "string", "segment": "string", "item": "string", "provider": "string", "model": "string",
    "units": "Float64", "unit": "string", "paid_usd": "float64", "reused_usd": "float64", "paid_by": "string",
    "cache_hit": "boolean", "prediction_id": "string", "source": "string", "note": "string",
}
"""The cost table's columns and their pandas dtypes (nullable where a value may be missing)."""


# --- a time window -----------------------------------------------------------------------------

WINDOW_COLUMNS = {"video_id": "string", "provider": "string", "model": "string", "predictions": "Int64",
                  "paid_usd": "float64"}


def window_costs(ledger: Ledger, since: float | datetime | None = None,
                 until: float | datetime | None = None) -> pd.DataFrame:
    """What was paid in ``[since, until)`` (Unix seconds or aware datetimes; None: unbounded), by
    the predictions' ``created_at``: one row per (video_id, provider, model) with the number of
    predictions and their cost (USD), sorted. ``video_id`` is missing for calls made outside any
    video (the brief planner). The rows' ``paid_usd`` sum is the window's total spend."""
    lo, hi = (w.timestamp() if isinstance(w, datetime) else w for w in (since, until))
    groups: dict[tuple, list[float]] = {}
    for p in ledger.predictions():
        if (lo is None or p.created_at >= lo) and (hi is None or p.created_at < hi):
            groups.setdefault((p.video_id, p.provider, p.model), []).append(p.cost_usd)
    rows = [{"video_id": v, "provider": prov, "model": m, "predictions": len(c), "paid_usd": round(sum(c), 6)}
            for (v, prov, m), c in sorted(groups.items(), key=lambda kv: tuple(x or "" for x in kv[0]))]
    return pd.DataFrame(rows, columns=list(WINDOW_COLUMNS)).astype(WINDOW_COLUMNS)


# --- tables --------------------------------------------------------------------------------------

def cost_frame(lines: Iterable[CostLine]) -> pd.DataFrame:
    """``lines`` as a DataFrame with ``COLUMNS`` and their dtypes (no total row)."""
    rows = [{c: getattr(line, c) for c in COLUMNS} for line in lines]
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)


def _cell(column: str, value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if column.endswith("_usd"):
        return money(float(value))
    if pd.api.types.is_bool(value):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def display_rows(df: pd.DataFrame, *, total: bool = True) -> list[dict[str, str]]:
    """Rows of ``df`` as {column: text}: money with ``money``, booleans yes/no, missing values "".
    With ``total``, a last row labelled "total" (first column) sums every ``*_usd`` and integer column."""
    rows = [{c: _cell(c, v) for c, v in zip(df.columns, values)} for values in df.itertuples(index=False)]
    if total and len(df.columns):
        first = df.columns[0]
        row = {c: "" for c in df.columns} | {first: "total"}
        for c in df.columns:
            if c.endswith("_usd"):
                row[c] = money(round(float(df[c].sum()), 6))
            elif pd.api.types.is_integer_dtype(df[c]) and c != first:
                row[c] = str(int(df[c].sum()))
        if "item" in df.columns and first != "item":
            row["item"] = f"{len(df)} line{'' if len(df) == 1 else 's'}"
        rows.append(row)
    return rows


def markdown(df: pd.DataFrame, *, total: bool = True, columns: list[str] | None = None) -> str:
    """``df`` (``columns`` of it, default all but cache_key) as a markdown table (``to_markdown``, number
    parsing off: "000" stays "000"), cells from ``display_rows``: nothing reads ``nan``."""
    rows = display_rows(df, total=total)
    keep = columns or [c for c in df.columns if c != "cache_key"]
    return pd.DataFrame([{c: r[c] for c in keep} for r in rows], columns=keep).to_markdown(
        index=False, disable_numparse=True)
