"""What ``pipeline render`` prints at the end: the per-beat table, cost and the final video's path.

Shared by the full CLI (``pipeline.cli``) and its fast path (``pipeline.cli_fast``, a video found up
to date from its render receipt), so both print the same thing. Imports neither Dagster nor pandas.
"""

from __future__ import annotations

from rich.table import Table

from pipeline.cli_output import cell, console, say
from pipeline.manifests import ChunkVideosManifest, FinalManifest, VideoPlan, money


def say_up_to_date(video_id: str) -> None:
    """The line that says nothing had to run."""
    say(("up to date", "green"), f": {video_id} was already rendered from this exact spec "
        "(use --force to re-materialize every asset from the cache)")


def print_summary(plan: VideoPlan, final: FinalManifest, chunk_sets: list[ChunkVideosManifest], seconds: float) -> None:
    """The per-beat table (``plan``'s beats, ``chunk_sets``' chunks and cache hits, ``final``'s cost
    lines in USD), one line of totals with ``seconds`` (the command's wall time), and the path of
    the final video."""
    table = Table(title=cell(f"{plan.title} ({plan.video_id})"), show_footer=True)
    by_segment = {cv.index: cv for cv in chunk_sets}
    costs: dict[str | None, float] = {}
    reused: dict[str | None, float] = {}
    for line in final.costs:
        costs[line.segment] = costs.get(line.segment, 0.0) + line.paid_usd
        reused[line.segment] = reused.get(line.segment, 0.0) + line.reused_usd
    table.add_column("segment", min_width=7, footer="total", no_wrap=True)
    table.add_column("start_s", min_width=7, justify="right", no_wrap=True)
    table.add_column("duration_s", min_width=10, justify="right", footer=f"{plan.duration_s:g}", no_wrap=True)
    table.add_column("chunks", min_width=6, justify="right", footer=str(final.chunks), no_wrap=True)
    table.add_column("cached", min_width=6, justify="right", no_wrap=True)
    table.add_column("paid_usd", min_width=8, justify="right", footer=money(final.paid_usd), no_wrap=True)
    table.add_column("reused_usd", min_width=10, justify="right", footer=money(final.reused_usd), no_wrap=True)
    table.add_column("prompt", no_wrap=True, overflow="ellipsis", max_width=28)
    for b in plan.beats:
        cv = by_segment.get(b.index)
        table.add_row(b.segment, f"{b.start_s:g}", f"{b.duration_s:g}", str(len(cv.chunks)) if cv else "?",
                      f"{sum(c.video.cache_hit for c in cv.chunks)}/{len(cv.chunks)}" if cv else "?",
                      money(costs.get(b.segment, 0.0)), money(reused.get(b.segment, 0.0)), cell(b.prompt))
    table.add_row("music", "0", f"{plan.duration_s:g}", "", "", money(costs.get(None, 0.0)),
                  money(reused.get(None, 0.0)), cell(plan.music.prompt if plan.music else "(no music: silence)"))
    console.print(table)
    say(f"{final.video.duration_s:.3f} s, {final.video.width}x{final.video.height}, {final.beats} beats, "
        f"{final.chunks} chunks, paid ${money(final.paid_usd)}, reused ${money(final.reused_usd)}, "
        f"rendered in {seconds:.1f} s")
    say("final video: ", (str(final.path), "bold"))
    if (line := subtitles_line(final)) is not None:
        say(line)


def subtitles_line(final) -> str | None:
    """``subtitles: <vtt>, <srt> (N cues, mov_text track | burned in | files only)`` for a final
    video with narration (``FinalManifest.subtitles``); None without."""
    subs = final.subtitles
    if not subs:
        return None
    how = {"soft": "a mov_text track", "burned": "burned in", "none": "files only"}.get(subs.get("captions"), "")
    return f"subtitles: {subs.get('vtt')}, {subs.get('srt')} ({subs.get('cues')} cues, {how})"


def render_options(provider: str | None, models: dict[str, str]) -> dict[str, object]:
    """The command-line choices that decide what ``pipeline render`` makes (for the request key of
    ``pipeline.receipts``): ``--provider`` and the ``--<kind>-model`` options."""
    return {"provider": provider, "models": dict(sorted(models.items()))}
