"""The gap between calls on a beat's chunk chain: from the moment chunk k's prediction succeeds to the
moment chunk k+1's prediction is created, and what it is made of.

One beat of ``--chunks`` 5 s Wan chunks (a storyboard from the fake flux-schnell first) is rendered
in this process with the pipeline's own stages (``stages.render_storyboard`` and
``stages.render_chunks``: the code the ``chunk_videos`` asset runs, without Dagster) against the
fake Replicate server in its own process (``_server.ServerProcess``) with **zero model latency**, so
the chain's wall time is nothing but its gaps. ``--repeat`` chains, each a new video (no cache hit).

The measured gap is the server's ``created_at`` of chunk k+1 minus its ``completed_at`` of chunk k
(one clock). Its pieces come from ``logs/provider_calls.jsonl``, where every call logs ``seconds``
and the replicate provider its ``timings_s`` (``pipeline.providers.replicate.calls.run_media``):

- ``seen_late_s`` (chunk k): completed -> the poller saw it (poll schedule, ``--poll`` / ``--cap``);
- ``download_s``, ``verify_s`` (decode every frame), ``crop_s`` (chunk k);
- provider rest (chunk k): its ``total_s`` minus every timed piece: ledger work (its claim before
  chunk k's create belongs to the gap before, so this over-counts a little), the model input;
- generator (chunk k): the log's ``seconds`` minus the provider's ``total_s``: the Generator's own
  verification (a second full decode), the store and the cache entry;
- last frame (chunk k): the ``last_frame`` generation (``media.extract_last_frame``, verify, store);
- ``pad_s`` + ``upload_s`` (chunk k+1): its start frame made a model input (inline or uploaded);
- ``create_s`` (chunk k+1): the create request (its answer comes after ``created_at``, so this
  over-counts by the answer's way back);
- unaccounted: the measured gap minus the pieces (stages' own work, cache reads; negative when
  ``create_s`` and the provider rest over-count more than that: a few hundredths of a second).

Medians over every gap of every chain. The fake renders at ``--render-scale`` of the real sizes
(1.0: Wan's 854x480 at 16 fps, 81 frames; 0.25: 214x120, a smoke run).

Usage: python benchmarks/bench_chain_gap.py [--chunks 3] [--repeat 5] [--render-scale 1.0]
       [--poll 1.0] [--cap 2.0] [--latency 0.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, heading, load_averages, machine_info, save_results, scratch_dir, table  # noqa: E402

WAN = "wan-video/wan-2.2-i2v-fast"
PIECES = [  # (row label, key in a gap's pieces)
    ("poll: completed -> seen (chunk k)", "seen_late_s"),
    ("download (chunk k)", "download_s"),
    ("verify: decode every frame (chunk k)", "verify_s"),
    ("crop (chunk k)", "crop_s"),
    ("provider rest: ledger, input (chunk k)", "provider_rest_s"),
    ("generator: verify again, store, cache (chunk k)", "generator_s"),
    ("last frame: extract, verify, store (chunk k)", "last_frame_s"),
    ("start frame -> input: pad, PNG, inline/upload (chunk k+1)", "upload_s"),
    ("create request (chunk k+1)", "create_s"),
    ("unaccounted (stages, cache reads; < 0: over-counted)", "unaccounted_s"),
]
TIMED = ("pad_s", "upload_s", "create_s", "poll_s", "download_s", "verify_s", "crop_s")


def render_chain(server, root: Path, *, index: int, chunks: int, poll: float, cap: float) -> None:
    """One beat of ``chunks`` chunks, rendered with the stages into the data directory ``root``."""
    from pipeline import stages
    from pipeline.generation import Generator
    from pipeline.providers import get_provider
    from pipeline.spec import parse_spec
    from pipeline.store import Workspace
    from pipeline.submissions import submit_spec

    ws = Workspace.at(root)
    provider = get_provider("replicate", api_token=server.token, base_url=server.base_url,
                            allowed_hosts=[server.origin], workspace_root=str(root), poll_interval_s=poll,
                            max_poll_interval_s=cap, video_model=WAN)
    gen = Generator(ws)
    spec = parse_spec({"video_id": f"gap-{index}", "title": "Chain gap", "duration_s": 5 * chunks,
                       "aspect_ratio": "16:9", "style": "flat colors", "music": {"prompt": "calm piano", "bpm": 80},
                       "seed": 1000 + index,
                       "beats": [{"prompt": f"a red fox crosses the snow, take {index}", "duration_s": 5 * chunks,
                                  "motion": "slow push-in"}]})
    sub = submit_spec(ws, spec, source="bench", provider="replicate")[0]
    plan = stages.plan_video(sub, provider)
    beat = stages.plan_beat(plan, plan.beats[0], provider)
    if len(beat.chunks) != chunks:
        raise SystemExit(f"the plan has {len(beat.chunks)} chunks, not {chunks}")
    board = stages.render_storyboard(beat, provider, gen)
    stages.render_chunks(beat, board, provider, gen)
    provider.close()


def gaps_of(root: Path, video_id: str, preds: list[dict]) -> list[dict[str, float]]:
    """Every gap of one chain (``preds``: the server's predictions of this chain only): the measured
    one and its pieces, seconds."""
    from pipeline.generation import read_call_log
    from pipeline.store import Workspace

    calls = [c for c in read_call_log(Workspace.at(root)) if c.get("video_id") == video_id]
    chunk = {int(c["chunk"]): c for c in calls if c.get("stage") == "chunk_videos"}
    last = {int(c["chunk"]): c for c in calls if c.get("stage") == "last_frame"}
    wan = sorted((p for p in preds if p["model"] == WAN), key=lambda p: p["created_at"])
    if len(wan) != len(chunk):
        raise SystemExit(f"{video_id}: {len(wan)} Wan predictions on the server for {len(chunk)} chunk calls")
    out = []
    for k in range(len(chunk) - 1):
        a, b = chunk[k]["timings_s"], chunk[k + 1]["timings_s"]
        measured = wan[k + 1]["created_at"] - wan[k]["completed_at"]
        pieces = {
            "seen_late_s": a.get("seen_late_s", 0.0),
            "download_s": a.get("download_s", 0.0),
            "verify_s": a.get("verify_s", 0.0),
            "crop_s": a.get("crop_s", 0.0),
            "provider_rest_s": a["total_s"] - sum(a.get(t, 0.0) for t in TIMED),
            "generator_s": chunk[k]["seconds"] - a["total_s"],
            "last_frame_s": last[k]["seconds"],
            "upload_s": b.get("pad_s", 0.0) + b.get("upload_s", 0.0),
            "create_s": b.get("create_s", 0.0),
        }
        pieces["unaccounted_s"] = measured - sum(pieces.values())
        out.append({"gap": f"{k + 1}->{k + 2}", "measured_s": measured, **pieces})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=3, help="chunks in the chain (default 3: two gaps)")
    ap.add_argument("--repeat", type=int, default=5, help="chains rendered (default 5)")
    ap.add_argument("--render-scale", type=float, default=1.0, help="the fake's media size (1.0: Wan's 854x480)")
    ap.add_argument("--poll", type=float, default=1.0, help="first poll interval, s (provider default 1.0)")
    ap.add_argument("--cap", type=float, default=2.0, help="poll interval cap, s (provider default 2.0)")
    ap.add_argument("--latency", type=float, default=0.0, help="added to every API request by the fake, s")
    args = ap.parse_args(argv)
    if args.chunks < 2:
        ap.error("--chunks must be at least 2 (a chain of one has no gap)")

    from _server import ServerProcess

    load_before = load_averages()
    work = scratch_dir("chain-gap")
    rows: list[dict[str, float]] = []
    started = time.monotonic()
    with ServerProcess(seed=7, scale=0.0, render_scale=args.render_scale, latency=args.latency) as server:
        for i in range(args.repeat):
            root = work / f"chain-{i}"
            before = {p["id"] for p in server.stats()["predictions"]}
            render_chain(server, root, index=i, chunks=args.chunks, poll=args.poll, cap=args.cap)
            new = [p for p in server.stats()["predictions"] if p["id"] not in before]
            rows += [{"chain": i, **g} for g in gaps_of(root, f"gap-{i}", new)]
    wall = time.monotonic() - started

    heading(f"Chain gap: {args.repeat} chain(s) of {args.chunks} chunks, zero model latency, "
            f"render scale {args.render_scale:g}, poll {args.poll:g} s capped at {args.cap:g} s")
    med = {key: statistics.median(r[key] for r in rows) for _, key in PIECES}
    gap = statistics.median(r["measured_s"] for r in rows)
    emit(table([[label, med[key], (100 * med[key] / gap) if gap > 0 else float("nan")] for label, key in PIECES]
               + [["**measured gap** (completed k -> created k+1)", gap, 100.0]],
               headers=["piece", "median s", "% of the median gap"]))
    emit("")
    emit(table([{"chain": r["chain"], "gap": r["gap"], "measured_s": r["measured_s"],
                 **{key.removesuffix("_s"): r[key] for _, key in PIECES}} for r in rows]))
    emit(f"\n{len(rows)} gaps in {wall:.1f} s; load average before {load_before[0]:.2f}, "
         f"after {load_averages()[0]:.2f} (1 min); machine: {machine_info()['cpu']}, {machine_info()['nproc']} CPUs")
    save_results("chain_gap", {"args": vars(args), "gaps": rows, "medians": med, "median_gap_s": gap,
                               "load_before": load_before, "load_after": load_averages(), "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
