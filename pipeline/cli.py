"""``pipeline``: render, validate and operate videos from the command line.

    pipeline render SPEC [--provider local|replicate] [--video-model REF ...] [--max-parallel N] [--force]
    pipeline validate SPEC [--provider ...] [--video-model REF ...]
    pipeline submit SPEC [--provider ...] [--video-model REF ...] [--to s3://BUCKET/PREFIX]
                                   (into the inbox, or a cluster's S3 inbox; the daemon's sensors take it)
    pipeline status VIDEO_ID
    pipeline retry VIDEO_ID
    pipeline models [--markdown]   (the Replicate model registry and its self-check)

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default: the current directory when it
holds a dagster.yaml, else ``<data dir>/dagster_home``), so ``dagster dev`` shows them afterwards.
The CLI writes no environment variable: it opens that instance explicitly and passes its values
(data directory) to ``pipeline.definitions.build_definitions``. ``--provider`` and the model options
are explicit choices for the video: they beat the spec's ``provider`` / ``models`` and the
deployment defaults, and the registered submission records the result (``pipeline.submissions``).

Output goes through ``pipeline.cli_output`` (markup off, control characters escaped: a prompt is
printed as written, whatever it holds). Errors never print a traceback: a bad spec or argument
exits 2 with the message naming the file and field, a provider error (no API token, a refused
call) or an unusable path exits 1 with its message, and anything unexpected exits 1 with one line
(``PIPELINE_DEBUG=1`` adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipeline.cli_models import add_models_parser
from pipeline.cli_output import cell, console, err_console, error, safe_streams, say, shout
from pipeline.cli_specs import chosen_models, cmd_submit, cmd_validate, provider_options
from pipeline.cli_summary import print_summary, render_options, say_up_to_date, subtitles_line
from pipeline.printable import printable
from pipeline.receipts import dagster_home_for, request_key, spec_input_files, write_receipt
from pipeline.providers.base import ProviderError
from pipeline.store import atomic_write_text
from pipeline.spec import VIDEO_ID_PATTERN, SpecError
from pipeline.spec_file import read_spec_bytes

DEFAULT_INSTANCE_YAML = """telemetry:
  enabled: false
# Dagster's SQLite storage (the files `storage: sqlite` writes under this directory), with the
# project's event ordering and cheaper event writes: pipeline/orchestration/storage.py.
storage:
  custom:
    module: pipeline.orchestration.storage
    class: RunFirstSqliteStorage
    config:
      base_dir: {storage}
"""


def ensure_dagster_home(data_dir: str) -> str:
    """The Dagster instance directory for the CLI (an absolute path; the environment is left as it
    is): $DAGSTER_HOME if set, else the working directory if it has a dagster.yaml (the repo root),
    else ``<data_dir>/dagster_home`` (created with telemetry off). Raises OSError if that cannot be
    created."""
    home = dagster_home_for(data_dir)
    if os.environ.get("DAGSTER_HOME") or Path("dagster.yaml").exists():
        return home
    Path(home).mkdir(parents=True, exist_ok=True)
    yaml_path = Path(home) / "dagster.yaml"
    if not yaml_path.exists():  # several processes may get here at once: never a half-written file
        atomic_write_text(yaml_path, DEFAULT_INSTANCE_YAML.format(storage=json.dumps(str(Path(home) / "storage"))))
    return home


def _data_dir(args) -> str:
    """``--data-dir``, else the deployment's ($PIPELINE_DATA_DIR or ``data``, read by pipeline.definitions)."""
    from pipeline.definitions import default_data_dir

    return args.data_dir or default_data_dir()


def _dagster(args):
    """Definitions and the Dagster instance for a command. The instance is opened under a lock (six
    CLI processes may create a fresh one at once); opening also fails runs whose process died and
    sweeps the temp files such processes left."""
    from pipeline.definitions import build_definitions
    from pipeline.orchestration.instance import cli_startup, open_instance

    data_dir = _data_dir(args)
    instance = open_instance(ensure_dagster_home(data_dir))
    cli_startup(instance, data_dir)
    return build_definitions(data_dir), instance


def cmd_render(args) -> int:
    from pipeline import stages
    from pipeline.orchestration import forkserver
    from pipeline.spec import load_spec

    spec = load_spec(args.spec)  # a bad spec fails here (exit 2), before the instance is opened and progress drawn
    spec_bytes = read_spec_bytes(args.spec)  # the version the receipt names (pipeline.receipts)
    forkserver.warm_up_in_background()  # the run workers' fork server, started while Dagster imports here
    from pipeline.orchestration.render import render_video

    defs, instance = _dagster(args)
    started = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        overall = progress.add_task("planning", total=None)

        def on_plan(plan):
            progress.update(overall, description=printable(f"rendering {plan.video_id}"), total=len(plan.beats) + 3,
                            completed=1)
            if plan.truncation:
                say(("warning", "yellow"), ": ", stages.truncation_message(plan, plan.truncation), stream=progress.console)

        def on_run(name, outcome):
            if outcome is None:
                return
            elapsed = time.monotonic() - started
            if outcome.success:
                say("  ", ("✓", "green"), f" {name:<12} {outcome.seconds:5.1f} s   (t={elapsed:.1f} s)"
                    + (f"   {outcome.note}" if outcome.note else ""), stream=progress.console)
            else:
                say("  ", ("✗", "red"), f" {name:<12} failed: {outcome.error}", multiline=True, stream=progress.console)
            if name != "video_spec":
                progress.advance(overall)

        report = render_video(args.spec, defs=defs, instance=instance, provider=args.provider,
                              models=chosen_models(args), max_parallel=args.max_parallel, force=args.force,
                              on_run=on_run, on_plan=on_plan, on_wait=lambda message: say(message, stream=progress.console))
    if report.final is not None:
        data_dir = _data_dir(args)
        key = request_key(spec_bytes, data_dir=data_dir, dagster_home=dagster_home_for(data_dir),
                          options=render_options(args.provider, chosen_models(args)))
        write_receipt(data_dir, key, report.video_id, inputs=spec_input_files(args.spec, spec))
    return _report(report)


def _report(report) -> int:
    if report.up_to_date:
        say_up_to_date(report.video_id)
    if report.final is None:
        failed = ", ".join(r.name for r in report.failed) or "unknown"
        shout((f"render of {report.video_id} failed", "red"), f" ({failed}). Fix the cause and run the "
              "same command again: finished, paid-for work is reused.")
        return 1
    print_summary(report.plan, report.final, report.chunk_sets, report.seconds)
    return 0


STATE_STYLE = {"materialized": "green", "in_progress": "cyan", "failed": "red", "stale": "yellow", "missing": "dim"}
STATE_WORD = {"materialized": "done", "in_progress": "running", "failed": "FAILED", "stale": "stale", "missing": "missing"}


def _state(value: str) -> Text:
    return cell(STATE_WORD[value], STATE_STYLE[value])


def cmd_status(args) -> int:
    """``pipeline status VIDEO_ID``: segments x assets from the instance ($DAGSTER_HOME: a cluster's
    too), manifests from the deployment's store (S3 when configured), costs, and where the final
    video was published. Reads no local file a cluster machine would not have (but the ledger)."""
    from pipeline.defs.io_manager import read_manifest
    from pipeline.manifests import FinalManifest
    from pipeline.orchestration.planner import Waiting, assembly_run
    from pipeline.orchestration.status import SEGMENT_ASSETS, assembly_runs, video_status
    from pipeline.publish import published_uri

    defs, instance = _dagster(args)
    pipeline = defs.resources["pipeline"]
    status = video_status(instance, pipeline.manifests_dir, args.video_id)
    if status.plan is None:
        error(f"{args.video_id!r} has no materialized video_spec (unknown video, or its spec is still being planned)")
        return 1
    table = Table(title=cell(f"{status.plan.title} ({args.video_id})"), show_footer=True)
    table.add_column("segment", footer="total", no_wrap=True, min_width=7)
    for asset in SEGMENT_ASSETS:
        table.add_column(asset, no_wrap=True, min_width=len(asset))
    from pipeline import cost_report, costs

    view = costs.video_costs(args.video_id, manifests=pipeline.manifests_dir,
                             ledger=costs.open_ledger(pipeline.workspace.root, url=pipeline.ledger_target))
    by_segment = view.by_segment()
    table.add_column("paid_usd", justify="right", no_wrap=True, footer=costs.money(view.paid_usd))
    table.add_column("reused_usd", justify="right", no_wrap=True, footer=costs.money(view.reused_usd))
    table.add_column("latest run", no_wrap=True)
    for seg in status.segments:
        paid, reused = by_segment.get(seg.segment, (0.0, 0.0))
        table.add_row(seg.segment, *[_state(seg.states[a]) for a in SEGMENT_ASSETS], costs.money(paid),
                      costs.money(reused),
                      cell(f"{(seg.latest_run_id or '')[:8]} {(seg.latest_run_status or '').lower()}".strip()))
    paid, reused = by_segment.get(None, (0.0, 0.0))
    table.add_row("video", *([""] * len(SEGMENT_ASSETS)), costs.money(paid), costs.money(reused), "music, plan, other")
    console.print(table)
    say(cost_report.totals_line(view))
    parts = []
    for asset, value in status.video_assets.items():
        parts += [f"{'  ' if parts else ''}{asset}: ", (STATE_WORD[value], STATE_STYLE[value])]
    say(*parts)
    assembly = assembly_run(status, assembly_runs(instance, args.video_id, status.assembly_state))
    say("assembly: " + (f"not now: {assembly}" if isinstance(assembly, Waiting) else
                        "ready (the daemon's assembly_sensor requests it; `pipeline retry` does it here)"))
    final = read_manifest(pipeline.manifests_dir, "final_video", args.video_id)
    if isinstance(final, FinalManifest):
        there = pipeline.is_published(final)
        say("final video: ", (published_uri(final), "bold"),
            *(() if there else ((" (missing: the published video is not there any more; `pipeline render "
                                 "SPEC` publishes it again)", "red"),)))
        if (line := subtitles_line(final)) is not None:
            say(line)
    failed = status.failed_or_missing
    if failed:
        say(f"segments to redo: {', '.join(failed)}; run `pipeline retry {args.video_id}` or backfill them from the UI")
    return 0 if not failed else 3


def cmd_cost(args) -> int:
    """``pipeline cost VIDEO_ID``: what the video paid and reused, line by line (ledger lines too);
    ``pipeline cost [--since WHEN] [--until WHEN]``: what was paid in a window, per video and model."""
    from pipeline.cost_report import cost_command

    defs, _ = _dagster(args)
    pipeline = defs.resources["pipeline"]
    return cost_command(console, data_dir=pipeline.workspace.root, manifests=pipeline.manifests_dir,
                        video_id=args.video_id, since=args.since, until=args.until, as_markdown=args.markdown,
                        err_console=err_console, ledger_url=pipeline.ledger_target)


def cmd_retry(args) -> int:
    from pipeline.orchestration import forkserver

    forkserver.warm_up_in_background()
    from pipeline.orchestration.render import retry_video

    defs, instance = _dagster(args)

    def on_run(name, outcome):
        if outcome is not None:
            mark = ("✓", "green") if outcome.success else ("✗", "red")
            say("  ", mark, f" {name:<12} {outcome.seconds:5.1f} s {outcome.error or outcome.note or ''}", multiline=True)

    try:
        report = retry_video(args.video_id, defs=defs, instance=instance, max_parallel=args.max_parallel, on_run=on_run,
                             on_wait=say)
    except LookupError as exc:
        error(exc)
        return 1
    return _report(report)


# --- arguments -------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors escaped (they quote what was typed) and exit code 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        error(f"{self.prog}: {message}")
        raise SystemExit(2)


def video_id_arg(text: str) -> str:
    """A video id typed on the command line; it becomes a path and a partition key, so it must match
    VIDEO_ID_PATTERN (raises argparse.ArgumentTypeError, shown escaped)."""
    if not re.fullmatch(VIDEO_ID_PATTERN.strip("^$"), text):
        raise argparse.ArgumentTypeError(f"{printable(text, limit=80)!r} is not a valid video_id (1-63 lowercase "
                                         "letters, digits and '-', starting with a letter or digit)")
    return text


def positive_int(text: str) -> int:
    """An integer >= 1 (raises argparse.ArgumentTypeError)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {printable(text, limit=40)!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="data directory (default: $PIPELINE_DATA_DIR or ./data)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("render", help="render a spec end to end (all assets, in the Dagster instance)")
    p.add_argument("spec", help="spec file (.yaml, .yml or .json)")
    provider_options(p)
    p.add_argument("--max-parallel", type=positive_int, default=2, metavar="N",
                   help="segment runs at once (default: 2, one per core here)")
    p.add_argument("--force", action="store_true",
                   help="re-materialize every asset even if the video is up to date (cache hits are free)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("submit", help="drop a spec into the inbox for the Dagster daemon's sensors (the S3 inbox "
                                      "prefix when S3 is configured)")
    p.add_argument("spec")
    provider_options(p)
    p.add_argument("--to", metavar="s3://BUCKET[/PREFIX]",
                   help="a cluster's bucket and prefix: upload the spec to its inbox/ (default: this deployment's "
                        "inbox: PIPELINE_S3_BUCKET/PIPELINE_S3_PREFIX's inbox/, else the inbox folder)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="table of a video's segments x assets: materialized/failed/missing/in progress")
    p.add_argument("video_id", type=video_id_arg)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cost", help="what a video paid and reused, line by line; or what was paid in a time window")
    p.add_argument("video_id", nargs="?", type=video_id_arg, help="a video (omit it for --since/--until)")
    p.add_argument("--since", metavar="WHEN", help="window start: now, 90m, 24h, 7d, Unix seconds or ISO 8601 (UTC "
                   "when no zone is given); default: the beginning")
    p.add_argument("--until", metavar="WHEN", help="window end, exclusive (same forms); default: now")
    p.add_argument("--markdown", action="store_true", help="print a markdown table instead of a terminal table")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("retry", help="re-materialize only failed or missing segments of a video, then reassemble")
    p.add_argument("video_id", type=video_id_arg)
    p.add_argument("--max-parallel", type=positive_int, default=2, metavar="N")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("validate", help="validate a spec and print its beat plan; renders nothing")
    p.add_argument("spec")
    provider_options(p)
    p.set_defaults(func=cmd_validate)

    add_models_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Returns the exit code (see the module doc); never raises for bad input."""
    safe_streams()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except SpecError as exc:
        error(exc)
        return 2
    except KeyboardInterrupt:
        shout("interrupted; finished work is kept and reused on the next run")
        return 130
    except ProviderError as exc:  # e.g. no API token, or the provider refused: its own message says why
        error(f"{type(exc).__name__}: {exc}")
        return 1
    except OSError as exc:  # an unusable data dir, inbox or instance: not a bug, not the spec
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        error(f"{exc.strerror or exc}{where}")
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        error(f"internal error: {type(exc).__name__}: {exc}")
        if os.environ.get("PIPELINE_DEBUG"):
            import traceback

            shout(traceback.format_exc(), multiline=True)
        else:
            shout("(set PIPELINE_DEBUG=1 to see where it happened)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
