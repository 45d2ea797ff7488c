"""``pipeline models [--markdown]``: the Replicate model registry as a table, and its self-check.

One row per model and price tier: the model, its kind, the tier, the price (USD) and its unit, the
aspect ratios it generates at, its longest chunk or track, how a canceled prediction is billed, how
sure the price is, the page that publishes it and the date it was checked (``pipeline.model_prices``).
Then ``pipeline.model_checks.check_registry``: exit 0 when the registry is consistent, else exit 1
with one ``registry error: <model>: <field>: <problem>`` line per problem on stderr. Reads no
instance, no data directory, no network.
"""

from __future__ import annotations

import argparse

import pandas as pd
from rich.table import Table

from pipeline.cli_output import cell, console, error, say

COLUMNS = ["model", "kind", "tier", "usd", "unit", "ratios", "max_duration", "canceled", "confidence", "source",
           "checked"]
"""The columns of ``--markdown`` (and of ``model_checks.registry_rows``)."""


def _terminal_table(rows: list[dict], checked: str) -> Table:
    """One row per model: its tiers' prices on lines of one cell ("480p $0.05/video"; "est." marks
    an estimate), ratios, longest chunk or track, canceled billing, check date."""
    table = Table(title=cell(f"Replicate models (prices checked {checked})"))
    for c in ("model", "kind", "prices (USD)", "ratios", "max_duration", "canceled", "checked"):
        table.add_column(c, overflow="fold", no_wrap=c in ("kind", "checked"))
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    for model, tiers in by_model.items():
        prices = "\n".join(f"{r['tier']} ${r['usd']}/{r['unit']}" + (" est." if r["confidence"] == "estimate" else "")
                           for r in tiers)
        first = tiers[0]
        table.add_row(cell(model), cell(first["kind"]), cell(prices, multiline=True), cell(first["ratios"]),
                      cell(first["max_duration"]), cell(first["canceled"]),
                      cell(" ".join(sorted({r["checked"] for r in tiers}))))
    return table


def cmd_models(args: argparse.Namespace) -> int:
    """Print the registry (rich table, or markdown with ``--markdown``), then check it. Returns the exit code."""
    from pipeline.model_checks import check_registry, registry_rows
    from pipeline.model_prices import CHECKED

    rows = registry_rows()
    if args.markdown:
        console.print(cell(pd.DataFrame(rows, columns=COLUMNS).to_markdown(index=False, disable_numparse=True),
                           multiline=True), soft_wrap=True)
    else:
        console.print(_terminal_table(rows, CHECKED))
        say("price sources (the page that publishes each price; `--markdown` adds the confidence):")
        for model, source in dict.fromkeys((r["model"], r["source"]) for r in rows):
            say(f"  {model}: {source}")
    problems = check_registry()
    for problem in problems:
        error(problem, label="registry error")
    if problems:
        return 1
    say(f"registry ok: {len({r['model'] for r in rows})} models, {len(rows)} prices, each with a source and a date")
    return 0


def add_models_parser(sub) -> None:
    """Register ``models`` on the ``pipeline`` subcommand parsers ``sub``."""
    p = sub.add_parser("models", help="the Replicate model registry (prices, sources, ratios) and its self-check")
    p.add_argument("--markdown", action="store_true", help="print a markdown table instead of a terminal table")
    p.set_defaults(func=cmd_models)
