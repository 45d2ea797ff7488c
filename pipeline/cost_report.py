"""Cost reports for the command line (``pipeline cost VIDEO_ID``, ``pipeline cost --since/--until``)
and the one-line totals ``pipeline status`` prints. The numbers come from ``pipeline.costs``; this
module only parses times and lays tables out (rich tables, or plain markdown text).
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.costs import VideoCosts, display_rows, markdown, money, open_ledger, video_costs, window_costs
from pipeline.store import TextObjects

VIDEO_COLUMNS = ["stage", "segment", "item", "provider", "model", "units", "unit", "paid_usd", "reused_usd",
                 "paid_by", "cache_hit", "note"]
"""Columns of a video's cost table in CLI output (the DataFrame has more: provider, prediction_id, ...)."""

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, *, now: float | None = None) -> float:
    """A ``--since``/``--until`` value as Unix seconds: "now"; a duration ago ("90m", "24h", "7d",
    "2w", units s/m/h/d/w); Unix seconds ("1718000000"); or ISO 8601 ("2024-06-01",
    "2024-06-01T12:00", "2024-06-01T12:00:00+02:00"; no zone means UTC). Raises ValueError."""
    value = text.strip()
    now = time.time() if now is None else now
    if value.lower() == "now":
        return now
    if m := _RELATIVE.match(value.lower()):
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use now, 24h, 7d, Unix seconds or ISO 8601 like "
                         "2024-06-01T12:00Z)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def iso(ts: float | None) -> str:
    """Unix seconds as ISO 8601 UTC to the second ("" for None)."""
    return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def totals_line(costs: VideoCosts) -> str:
    """One line of totals: "paid $0.4090 (ledger $0.4090), reused $0.0530 from other videos"."""
    text = f"paid ${money(costs.paid_usd)}"
    if costs.ledger_usd is not None:
        text += f" (ledger ${money(costs.ledger_usd)})"
    text += f", reused ${money(costs.reused_usd)} from other videos"
    if not costs.finished:
        text += "; not finished" + (f" (no manifests yet for segments {', '.join(costs.missing_segments)})"
                                    if costs.missing_segments else "")
    return text


def _safe(text: str) -> Text:
    """``text`` as rich Text (no markup), control and format characters but newlines escaped (``\\x1b``)."""
    return Text("".join(c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode("ascii")
                        for c in text))


def rich_table(df: pd.DataFrame, *, title: str | None = None, columns: list[str] | None = None,
               total: bool = True) -> Table:
    """``df`` as a rich Table: ``columns`` (default all but cache_key), money right-aligned, missing
    values blank, a "total" footer row summing the ``*_usd`` columns. Cells are plain text (no rich
    markup), with control characters escaped."""
    keep = columns or [c for c in df.columns if c != "cache_key"]
    rows = display_rows(df, total=total)
    table = Table(title=title, show_footer=total)
    body, last = (rows[:-1], rows[-1]) if total else (rows, {})
    for c in keep:
        table.add_column(c, justify="right" if c.endswith("_usd") or c in ("units", "predictions") else "left",
                         footer=last.get(c, ""), no_wrap=c != "note")
    for r in body:
        table.add_row(*(_safe(r[c]) for c in keep))
    return table


def video_table(costs: VideoCosts) -> Table:
    """The rich table of ``pipeline cost VIDEO_ID``."""
    state = "final video" if costs.finished else "unfinished: segment manifests so far"
    return rich_table(costs.table, title=f"costs of {costs.video_id} ({state})", columns=VIDEO_COLUMNS)


def video_text(costs: VideoCosts) -> str:
    """``pipeline cost VIDEO_ID`` as plain text: a markdown table, then the totals line."""
    return markdown(costs.table, columns=VIDEO_COLUMNS) + "\n\n" + totals_line(costs)


def window_table(df: pd.DataFrame, since: float | None, until: float | None) -> Table:
    """The rich table of ``pipeline cost --since/--until`` (``pipeline.costs.window_costs``)."""
    span = f"{iso(since) or 'the beginning'} to {iso(until) or 'now'}"
    return rich_table(df, title=f"paid from {span}")


def window_text(df: pd.DataFrame, since: float | None, until: float | None) -> str:
    """``pipeline cost --since/--until`` as plain text: the window, then a markdown table."""
    return f"paid from {iso(since) or 'the beginning'} to {iso(until) or 'now'}\n\n" + markdown(df)


def cost_command(console: Console, *, data_dir: str | Path, manifests: str | Path | TextObjects,
                 video_id: str | None = None, since: str | None = None, until: str | None = None,
                 as_markdown: bool = False, err_console: Console | None = None,
                 ledger_url: str | None = None) -> int:
    """``pipeline cost VIDEO_ID`` (a video's table and totals) or ``pipeline cost [--since] [--until]``
    (what was paid in a window, per video and model; no bounds: everything), printed on ``console``:
    rich tables, or markdown text with ``as_markdown``. ``data_dir`` holds the ledger unless
    ``ledger_url`` (``PipelineResource.ledger_url``) names another database, ``manifests`` is
    ``PipelineResource.manifests_dir``. Returns the exit code: 0, 1 for a video that was never
    planned, 2 for a bad time or both a video and a window (the error goes to ``err_console``,
    default ``console``)."""

    def error(message: str) -> None:
        (err_console or console).print(Text.assemble(("error", "red"), ": ", _safe(message)))

    if video_id is not None and (since or until):
        error("give a VIDEO_ID or --since/--until, not both")
        return 2
    ledger = open_ledger(data_dir, url=ledger_url)
    if video_id is not None:
        try:
            view = video_costs(video_id, manifests=manifests, ledger=ledger)
        except LookupError as exc:
            error(str(exc))
            return 1
        console.print(_safe(video_text(view)) if as_markdown else video_table(view), soft_wrap=as_markdown)
        if not as_markdown:
            console.print(_safe(totals_line(view)))
        return 0
    try:
        lo = parse_when(since) if since else None
        hi = parse_when(until) if until else None
    except ValueError as exc:
        error(str(exc))
        return 2
    if ledger is None:
        console.print(_safe(f"no ledger at {Path(data_dir) / 'ledger.sqlite'}: nothing was paid"))
        return 0
    df = window_costs(ledger, lo, hi)
    console.print(_safe(window_text(df, lo, hi)) if as_markdown else window_table(df, lo, hi), soft_wrap=as_markdown)
    return 0
