"""``pipeline``: render, validate and operate videos from the command line.

    pipeline render SPEC [--provider local|replicate] [--max-parallel N] [--force]
    pipeline validate SPEC
    pipeline submit SPEC          (into the inbox; the daemon's sensors take it from there)
    pipeline status VIDEO_ID
    pipeline retry VIDEO_ID

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default: the current directory when it
holds a dagster.yaml, else ``<data dir>/dagster_home``), so ``dagster dev`` shows them afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.providers import PROVIDERS
from pipeline.spec import SpecError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DEFAULT_INSTANCE_YAML = "telemetry:\n  enabled: false\n"


def ensure_dagster_home(data_dir: str) -> str:
    """Set $DAGSTER_HOME if unset: the working directory if it has a dagster.yaml (the repo root),
    else ``<data_dir>/dagster_home`` (created with telemetry off). Returns the directory."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        if Path("dagster.yaml").exists():
            home = str(Path.cwd())
        else:
            home = str(Path(data_dir).resolve() / "dagster_home")
            Path(home).mkdir(parents=True, exist_ok=True)
            yaml_path = Path(home) / "dagster.yaml"
            if not yaml_path.exists():
                yaml_path.write_text(DEFAULT_INSTANCE_YAML)
        os.environ["DAGSTER_HOME"] = home
    return home


def _data_dir(args) -> str:
    from pipeline.defs.resources import default_data_dir

    return args.data_dir or default_data_dir()


def cmd_validate(args) -> int:
    from pipeline import stages
    from pipeline.providers import get_provider
    from pipeline.spec import load_spec
    from pipeline.submissions import Submission

    spec = load_spec(args.spec)
    from pipeline.store import Workspace

    options = {} if args.provider == "local" else {"workspace": Workspace.at(_data_dir(args))}
    provider = get_provider(args.provider, **options)
    sub = Submission(video_id=spec.video_id, provider=args.provider, source=args.spec,
                     spec=spec.model_dump(mode="json", exclude_none=True), spec_sha256=spec.fingerprint(),
                     submitted_at="")
    plan = stages.plan_video(sub, provider)
    console.print(f"[green]valid[/green] {args.spec}: video [bold]{plan.video_id}[/bold], {len(plan.beats)} beats, "
                  f"{plan.duration_s:g} s, {plan.width}x{plan.height} @ {plan.fps} fps ({plan.planned_by})")
    if plan.truncation:
        console.print(f"[yellow]warning[/yellow]: {stages.truncation_message(plan, plan.truncation)}")
    table = Table("segment", "start_s", "duration_s", "chunks", "motion")
    table.add_column("prompt", no_wrap=True, overflow="ellipsis", max_width=60)
    for b in plan.beats:
        table.add_row(b.segment, f"{b.start_s:g}", f"{b.duration_s:g}",
                      str(len(stages.chunk_plan(b.duration_s, provider.chunk_seconds))), b.motion or "", b.prompt)
    console.print(table)
    return 0


def _dagster(args):
    import dagster as dg

    from pipeline.definitions import build_definitions

    data_dir = _data_dir(args)
    ensure_dagster_home(data_dir)
    return build_definitions(data_dir), dg.DagsterInstance.get()


def cmd_render(args) -> int:
    from pipeline import stages
    from pipeline.defs.render import render_video

    defs, instance = _dagster(args)
    started = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        overall = progress.add_task("planning", total=None)

        def on_plan(plan):
            progress.update(overall, description=f"rendering {plan.video_id}", total=len(plan.beats) + 3, completed=1)
            if plan.truncation:
                progress.console.print(f"[yellow]warning[/yellow]: {stages.truncation_message(plan, plan.truncation)}")

        def on_run(name, outcome):
            if outcome is None:
                return
            elapsed = time.monotonic() - started
            if outcome.success:
                progress.console.print(f"  [green]✓[/green] {name:<12} {outcome.seconds:5.1f} s   (t={elapsed:.1f} s)")
            else:
                progress.console.print(f"  [red]✗[/red] {name:<12} failed: {outcome.error}")
            if name != "video_spec":
                progress.advance(overall)

        report = render_video(args.spec, defs=defs, instance=instance, provider=args.provider,
                              max_parallel=args.max_parallel, force=args.force, on_run=on_run, on_plan=on_plan)
    return _report(report)


def _report(report) -> int:
    if report.up_to_date:
        console.print(f"[green]up to date[/green]: {report.video_id} was already rendered from this exact spec "
                      "(use --force to re-materialize every asset from the cache)")
    if report.final is None:
        failed = ", ".join(r.name for r in report.failed) or "unknown"
        err_console.print(f"[red]render of {report.video_id} failed[/red] ({failed}). Fix the cause and run the "
                          f"same command again: finished, paid-for work is reused.")
        return 1
    print_summary(report)
    return 0


def print_summary(report) -> None:
    """The per-beat table, cost and final path of a finished render."""
    plan, final = report.plan, report.final
    table = Table(title=f"{plan.title} ({plan.video_id})", show_footer=True)
    by_segment = {cv.index: cv for cv in report.chunk_sets}
    costs: dict[str | None, float] = {}
    for line in final.costs:
        costs[line.segment] = costs.get(line.segment, 0.0) + line.cost_usd
    table.add_column("segment", min_width=7, footer="total", no_wrap=True)
    table.add_column("start_s", min_width=7, justify="right", no_wrap=True)
    table.add_column("duration_s", min_width=10, justify="right", footer=f"{plan.duration_s:g}", no_wrap=True)
    table.add_column("chunks", min_width=6, justify="right", footer=str(final.chunks), no_wrap=True)
    table.add_column("cached", min_width=6, justify="right", no_wrap=True)
    table.add_column("cost_usd", min_width=8, justify="right", footer=f"{final.cost_usd:.4f}", no_wrap=True)
    table.add_column("prompt", no_wrap=True, overflow="ellipsis", max_width=28)
    for b in plan.beats:
        cv = by_segment.get(b.index)
        table.add_row(b.segment, f"{b.start_s:g}", f"{b.duration_s:g}", str(len(cv.chunks)) if cv else "?",
                      f"{sum(c.video.cache_hit for c in cv.chunks)}/{len(cv.chunks)}" if cv else "?",
                      f"{costs.get(b.segment, 0.0):.4f}", b.prompt)
    table.add_row("music", "0", f"{plan.duration_s:g}", "", "", f"{costs.get(None, 0.0):.4f}", plan.music.prompt)
    console.print(table)
    console.print(f"{final.video.duration_s:.3f} s, {final.video.width}x{final.video.height}, {final.beats} beats, "
                  f"{final.chunks} chunks, ${final.cost_usd:.4f}, rendered in {report.seconds:.1f} s")
    console.print(f"final video: [bold]{final.path}[/bold]", soft_wrap=True)


def cmd_submit(args) -> int:
    """Copy a valid spec into the inbox, where the spec_inbox_sensor picks it up."""
    import shutil

    from pipeline.defs.resources import PipelineResource
    from pipeline.spec import load_spec

    spec = load_spec(args.spec)  # fail here, not in the inbox, on a bad spec
    pipeline = PipelineResource(data_dir=_data_dir(args), inbox_dir=os.environ.get("PIPELINE_INBOX_DIR"))
    inbox = pipeline.inbox_path
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{spec.video_id}.yaml.part"
    shutil.copyfile(args.spec, tmp)
    target = inbox / f"{spec.video_id}{Path(args.spec).suffix.lower()}"
    os.replace(tmp, target)
    console.print(f"submitted {spec.video_id} to {target}; with `make dev` (the Dagster daemon) running, "
                  f"spec_inbox_sensor plans it within seconds. Follow it with `pipeline status {spec.video_id}`.")
    return 0


STATE_STYLE = {"materialized": "green", "in_progress": "cyan", "failed": "red", "stale": "yellow", "missing": "dim"}
STATE_WORD = {"materialized": "done", "in_progress": "running", "failed": "FAILED", "stale": "stale", "missing": "missing"}


def cmd_status(args) -> int:
    from pipeline.defs.status import SEGMENT_ASSETS, video_status

    defs, instance = _dagster(args)
    pipeline = defs.resources["pipeline"]
    status = video_status(instance, pipeline.manifests_dir, args.video_id)
    if status.plan is None:
        err_console.print(f"[red]error[/red]: {args.video_id!r} has no materialized video_spec "
                          "(unknown video, or its spec is still being planned)")
        return 1
    table = Table(title=f"{status.plan.title} ({args.video_id})", show_footer=True)
    table.add_column("segment", footer="total", no_wrap=True, min_width=7)
    for asset in SEGMENT_ASSETS:
        table.add_column(asset, no_wrap=True, min_width=len(asset))
    table.add_column("cost_usd", justify="right", no_wrap=True, min_width=8,
                     footer=f"{sum(s.cost_usd for s in status.segments):.4f}")
    table.add_column("latest run", no_wrap=True)
    for seg in status.segments:
        cells = [f"[{STATE_STYLE[seg.states[a]]}]{STATE_WORD[seg.states[a]]}[/]" for a in SEGMENT_ASSETS]
        table.add_row(seg.segment, *cells, f"{seg.cost_usd:.4f}",
                      f"{(seg.latest_run_id or '')[:8]} {(seg.latest_run_status or '').lower()}".strip())
    console.print(table)
    console.print("  ".join(f"{a}: [{STATE_STYLE[v]}]{STATE_WORD[v]}[/]" for a, v in status.video_assets.items()))
    failed = status.failed_or_missing
    if failed:
        console.print(f"segments to redo: {', '.join(failed)}; run `pipeline retry {args.video_id}` "
                      "or backfill them from the UI")
    return 0 if not failed else 3


def cmd_retry(args) -> int:
    from pipeline.defs.render import retry_video

    defs, instance = _dagster(args)

    def on_run(name, outcome):
        if outcome is not None:
            mark = "[green]✓[/green]" if outcome.success else "[red]✗[/red]"
            console.print(f"  {mark} {name:<12} {outcome.seconds:5.1f} s {outcome.error or ''}")

    try:
        report = retry_video(args.video_id, defs=defs, instance=instance, max_parallel=args.max_parallel, on_run=on_run)
    except LookupError as exc:
        err_console.print(f"[red]error[/red]: {exc}")
        return 1
    return _report(report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="data directory (default: $PIPELINE_DATA_DIR or ./data)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render a spec end to end (all assets, in the Dagster instance)")
    p.add_argument("spec", help="spec file (.yaml, .yml or .json)")
    p.add_argument("--provider", choices=PROVIDERS, default="local", help="generation provider (default: local)")
    p.add_argument("--max-parallel", type=int, default=2, metavar="N",
                   help="segment runs at once (default: 2, one per core here)")
    for kind in ("image", "video", "music"):
        p.add_argument(f"--{kind}-model", metavar="REF",
                       help=f"replicate {kind} model (default: $REPLICATE_{kind.upper()}_MODEL or the registry default)")
    p.add_argument("--force", action="store_true",
                   help="re-materialize every asset even if the video is up to date (cache hits are free)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("submit", help="drop a spec into the inbox for the Dagster daemon's sensors")
    p.add_argument("spec")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="table of a video's segments x assets: materialized/failed/missing/in progress")
    p.add_argument("video_id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("retry", help="re-materialize only failed or missing segments of a video, then reassemble")
    p.add_argument("video_id")
    p.add_argument("--max-parallel", type=int, default=2, metavar="N")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("validate", help="validate a spec and print its beat plan; renders nothing")
    p.add_argument("spec")
    p.add_argument("--provider", choices=PROVIDERS, default="local")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_dir:
        os.environ["PIPELINE_DATA_DIR"] = args.data_dir
    for kind in ("image", "video", "music"):
        if getattr(args, f"{kind}_model", None):
            os.environ[f"REPLICATE_{kind.upper()}_MODEL"] = getattr(args, f"{kind}_model")
    try:
        return args.func(args)
    except SpecError as exc:
        err_console.print(f"[red]error[/red]: {exc}")
        return 2
    except FileNotFoundError as exc:
        err_console.print(f"[red]error[/red]: {exc}")
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished work is kept and reused on the next run")
        return 130


if __name__ == "__main__":
    sys.exit(main())
