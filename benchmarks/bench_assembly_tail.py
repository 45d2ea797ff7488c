"""Assembly tail: wall seconds from the last chunk done to the final video published.

Target (issue 11): under 2 s for a 2-minute video and under 5 s for a 10-minute video, on this
2-core machine.

For each length in ``--lengths`` (seconds) a spec of 10 s beats (the last one takes the rest,
10-20 s) is rendered in-process with the local provider through the real stage functions, without
Dagster: ``stages.plan_video``, then per segment ``plan_beat``, ``render_storyboard`` and
``render_chunks`` (which conforms the chunks and joins each segment's clip), and ``render_music``
(which finishes the track: two-pass loudnorm, AAC), ``--workers`` segments at a time, in a
temporary ``Workspace``. That is setup, not measured.

The tail is then ``stages.stitch_video`` + ``stages.mux_video`` (which publishes the copy into
``videos/``), run ``--repeat`` times, each cold: a fresh generation cache (a new ``GenerationCache``
directory over the same media store), and the previous repeat's stitched and final files removed
from the store and ``videos/`` so every repeat really stitches, verifies, stores, muxes and copies.
The inputs (clips, finished track) are in the page cache, as they are right after the last chunk.
Each part's time is split by wrapping ``media.stitch`` / ``media.mux_copy`` (ffmpeg), the
generator's verification (``media.verify_*``) and ``stages.publish``; "rest" is cache lookups,
hashing into the store, and Python.

For comparison, "before (issue 11)" on the same media: ``media.stitch`` of the raw chunks with each
beat's trims (stream copy or re-encode, as it decides), a full decode to verify it, ``media.mux_final``
(the music finished during the mux: two-pass loudnorm and AAC), a full decode of the final video,
the store's sha256 of both and the publish copy: what the stages did after the last chunk before
issue 11.

Usage: python benchmarks/bench_assembly_tail.py [--lengths 120 600] [--repeat 3] [--before-repeat 1]
       [--size 854x480] [--workers 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, heading, load_averages, save_results, table  # noqa: E402

TARGETS_S = {120: 2.0, 600: 5.0}
"""Targets (wall seconds of the tail) by video length in seconds."""
BEAT_S = 10.0
AAC_FRAME = 1024
"""Samples in one AAC frame: how far the final audio may differ from the plan's duration."""
BEFORE_LABEL = "before (issue 11): re-encode + loudnorm after the last chunk"


def beat_durations(length: float) -> list[float]:
    """Beats of ``BEAT_S`` seconds filling ``length`` seconds; the last one takes the rest (10-20 s),
    or one beat when ``length`` < 20 s."""
    n = max(1, math.floor(length / BEAT_S))
    return [BEAT_S] * (n - 1) + [round(length - BEAT_S * (n - 1), 6)]


def filesystem(path: Path) -> str:
    try:
        return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


# --- setup: render everything up to the last chunk ----------------------------------------------

def render_video(length: float, root: Path, size: tuple[int, int] | None, workers: int) -> dict[str, Any]:
    """Plan and render a ``length``-second video with the local provider in a new workspace under
    ``root``: every segment (chunks, conformed pieces, clip) and the music (track and finished
    track). Returns the workspace, plan, ordered chunk sets, music manifest and setup seconds."""
    from specs import write_spec

    from pipeline import stages
    from pipeline.generation import Generator
    from pipeline.providers.local import LocalProvider
    from pipeline.spec import load_spec
    from pipeline.store import Workspace
    from pipeline.submissions import submit_spec

    ws = Workspace.at(root / f"ws-{length:g}")
    spec_path = write_spec(root / f"tail-{length:g}.yaml", f"bench-tail-{length:g}", beat_durations(length),
                           label=f"tail {length:g}")
    provider = LocalProvider()
    submission, _ = submit_spec(ws, load_spec(spec_path), source=str(spec_path), provider="local")
    plan = stages.plan_video(submission, provider)
    if size is not None:
        plan = plan.model_copy(update={"width": size[0], "height": size[1]})
    gen = Generator(ws)

    def segment(b):
        beat = stages.plan_beat(plan, b, provider)
        board = stages.render_storyboard(beat, provider, gen)
        return beat, stages.render_chunks(beat, board, provider, gen)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-segment") as pool:
        music_job = pool.submit(stages.render_music, plan, provider, gen)
        done = list(pool.map(segment, plan.beats))
        music = music_job.result()
    setup_s = time.perf_counter() - t0
    sets = {beat.segment: cv for beat, cv in done}
    ordered = stages.check_fan_in(plan, sets, {beat.segment: beat.fingerprint for beat, _ in done})
    return {"ws": ws, "plan": plan, "ordered": ordered, "music": music, "setup_s": setup_s}


# --- instrumentation ------------------------------------------------------------------------------

@contextlib.contextmanager
def timed_parts(parts: dict[str, float]) -> Iterator[None]:
    """Add the wall seconds spent in ffmpeg steps, verification and publishing to ``parts``
    ("ffmpeg", "verify", "publish") while the block runs, by wrapping the module functions the
    stages and the generator call."""
    from pipeline import media, stages

    wrap = [(media, "stitch", "ffmpeg"), (media, "mux_copy", "ffmpeg"), (media, "mux_final", "ffmpeg"),
            (media, "verify_video", "verify"), (media, "verify_audio", "verify"),
            (media, "verify_stream_copy", "verify"), (stages, "publish", "publish")]
    saved = []
    for module, name, part in wrap:
        real = getattr(module, name, None)
        if real is None:
            continue  # e.g. verify_stream_copy on code that decodes everything

        def timed(*args, _real=real, _part=part, **kwargs):
            t0 = time.perf_counter()
            try:
                return _real(*args, **kwargs)
            finally:
                parts[_part] = parts.get(_part, 0.0) + time.perf_counter() - t0

        saved.append((module, name, real))
        setattr(module, name, timed)
    try:
        yield
    finally:
        for module, name, real in saved:
            setattr(module, name, real)


# --- the tail, now --------------------------------------------------------------------------------

def input_shas(video: dict[str, Any]) -> set[str]:
    shas = {video["music"].audio.sha256} | ({video["music"].track.sha256} if video["music"].track else set())
    for cv in video["ordered"]:
        shas |= {cv.storyboard.sha256} | ({cv.clip.sha256} if cv.clip else set())
        for c in cv.chunks:
            shas |= {c.video.sha256, c.last_frame.sha256} | ({c.conformed.sha256} if c.conformed else set())
    return shas


def tail_once(video: dict[str, Any], tag: str, verify: bool) -> dict[str, Any]:
    """One cold stitch + mux + publish. Removes its outputs afterwards (never an input)."""
    from pipeline import stages
    from pipeline.generation import Generator
    from pipeline.store import GenerationCache, LocalMediaStore

    ws, plan, ordered, music = video["ws"], video["plan"], video["ordered"], video["music"]
    store = LocalMediaStore(ws.media)
    cache_dir = ws.root / f"cache-{tag}"
    gen = Generator(ws, store=store, cache=GenerationCache(cache_dir, store))
    stitch_parts: dict[str, float] = {}
    mux_parts: dict[str, float] = {}
    with timed_parts(stitch_parts):
        t0 = time.perf_counter()
        stitched = stages.stitch_video(plan, ordered, gen)
        t1 = time.perf_counter()
    with timed_parts(mux_parts):
        t2 = time.perf_counter()
        final = stages.mux_video(plan, stitched, music, gen, ws)
        t3 = time.perf_counter()
    if stitched.video.cache_hit or final.video.cache_hit:
        raise RuntimeError(f"{tag}: the tail hit the cache; it is not a cold run")
    stitch_s, mux_s = t1 - t0, t3 - t2
    row: dict[str, Any] = {
        "stitch_s": stitch_s, "mux_publish_s": mux_s, "total_s": stitch_s + mux_s,
        "stitch_ffmpeg_s": stitch_parts.get("ffmpeg", 0.0), "stitch_verify_s": stitch_parts.get("verify", 0.0),
        "mux_ffmpeg_s": mux_parts.get("ffmpeg", 0.0), "mux_verify_s": mux_parts.get("verify", 0.0),
        "publish_s": mux_parts.get("publish", 0.0),
        "stitch_method": stitched.method, "clips": stitched.clips, "stitch_model": stitched.video.model,
        "mux_method": final.mux_method, "mux_extra_method": final.video.extra.get("method"),
        "mux_model": final.video.model, "final_bytes": Path(final.path).stat().st_size,
    }
    row["stitch_rest_s"] = stitch_s - row["stitch_ffmpeg_s"] - row["stitch_verify_s"]
    row["mux_rest_s"] = mux_s - row["mux_ffmpeg_s"] - row["mux_verify_s"] - row["publish_s"]
    if verify:
        row.update(check_final(Path(final.path), plan))
    keep = input_shas(video)
    for m in (stitched.video, final.video):
        if m.sha256 not in keep:
            gen.local_path(m).unlink(missing_ok=True)
    Path(final.path).unlink(missing_ok=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return row


def plan_frames(plan) -> int:
    from pipeline import media

    return sum(media.beat_frames(b.start_s, b.duration_s, plan.fps) for b in plan.beats)


def check_final(path: Path, plan) -> dict[str, Any]:
    """Decode the published video (``media.probe``): frames against the plan's, the audio's length
    against the plan's duration (within one AAC frame)."""
    from pipeline import media

    info = media.probe(path)
    want = plan_frames(plan)
    audio = info.audio_duration_s or 0.0
    tolerance = AAC_FRAME / (info.sample_rate or 48_000)
    return {"frames": info.frames, "plan_frames": want, "audio_s": audio, "plan_s": plan.duration_s,
            "size": f"{info.width}x{info.height}", "frames_ok": info.frames == want,
            "audio_ok": abs(audio - plan.duration_s) <= tolerance + 1e-6}


# --- the tail, before issue 11 --------------------------------------------------------------------

def before_once(video: dict[str, Any], tag: str) -> dict[str, Any]:
    """Stitch the raw chunks with the beat trims, decode it, mux with two-pass loudnorm, decode the
    result, hash both (the store) and publish: the pre-issue-11 tail, with its parts timed."""
    from pipeline import media, stages
    from pipeline.generation import Generator
    from pipeline.store import sha256_file

    ws, plan, ordered, music = video["ws"], video["plan"], video["ordered"], video["music"]
    gen = Generator(ws)
    pieces = []
    for cv, beat in zip(ordered, plan.beats):
        need = media.beat_frames(beat.start_s, beat.duration_s, plan.fps)
        for c in cv.chunks:
            if need <= 0:
                break
            take = min(need, media.frame_count(c.video.duration_s or 0, plan.fps))
            pieces.append(media.StitchPiece(gen.local_path(c.video), take))
            need -= take
    row: dict[str, Any] = {}
    with ws.scratch(f"before-{tag}") as scratch:
        stitched, final = scratch / "stitched.mp4", scratch / "final.mp4"
        published = ws.videos / f"before-{tag}.mp4"
        t = [time.perf_counter()]
        row["stitch_method"] = media.stitch(pieces, stitched, width=plan.width, height=plan.height, fps=plan.fps,
                                            workdir=scratch)
        t.append(time.perf_counter())
        media.verify_video(stitched)
        t.append(time.perf_counter())
        media.mux_final(stitched, gen.local_path(music.audio), final, duration_s=plan.duration_s,
                        fade_out_s=stages.FADE_OUT_S)
        t.append(time.perf_counter())
        info = media.verify_video(final)
        t.append(time.perf_counter())
        sha256_file(stitched), sha256_file(final)
        t.append(time.perf_counter())
        stages.publish(final, published)
        t.append(time.perf_counter())
        published.unlink(missing_ok=True)
    names = ["stitch_s", "verify_stitched_decode_s", "mux_final_loudnorm_s", "verify_final_decode_s",
             "store_hash_s", "publish_s"]
    row.update({n: b - a for n, a, b in zip(names, t, t[1:])})
    row["total_s"] = t[-1] - t[0]
    row["frames_ok"] = info.frames == plan_frames(plan)
    return row


# --- main -----------------------------------------------------------------------------------------

def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float) and all(key in r for r in rows):
            out[key] = statistics.median(r[key] for r in rows)
    return out


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=float, nargs="+", default=[120.0, 600.0], help="video lengths, seconds")
    ap.add_argument("--repeat", type=int, default=3, help="cold runs of the tail per length")
    ap.add_argument("--before-repeat", type=int, default=1, help="runs of the before-issue-11 tail per length")
    ap.add_argument("--size", type=parse_size, default=None,
                    help="render size WxH (default: the spec's draft size, 854x480 for 16:9)")
    ap.add_argument("--workers", type=int, default=2, help="segments rendered at once during setup")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary workspaces go (default: $TMPDIR)")
    args = ap.parse_args(argv)

    load_start = load_averages()
    root = Path(tempfile.mkdtemp(prefix="bench-assembly-tail-", dir=args.dir))
    emit(f"1/5/15-minute load average at start: {' / '.join(f'{x:.2f}' for x in load_start)} "
         f"({os.cpu_count()} cores); workspaces on {filesystem(root)} ({root})")
    setups, nows, befores, raw = [], [], [], []
    try:
        for length in args.lengths:
            print(f"[assembly_tail] rendering {length:g} s with the local provider ...", file=sys.stderr, flush=True)
            video = render_video(length, root, args.size, args.workers)
            plan, ordered = video["plan"], video["ordered"]
            setups.append({"video_s": plan.duration_s, "beats": len(plan.beats),
                           "chunks": sum(len(cv.chunks) for cv in ordered),
                           "clips": sum(1 for cv in ordered if cv.clip is not None),
                           "size": f"{plan.width}x{plan.height}", "fps": plan.fps,
                           "finished_track": video["music"].track is not None, "setup_wall_s": video["setup_s"]})
            runs = [tail_once(video, f"now-{r}", verify=(r == 0)) for r in range(args.repeat)]
            old = [before_once(video, f"{r}") for r in range(args.before_repeat)]
            med, old_med = median_row(runs), median_row(old) if old else None
            target = TARGETS_S.get(int(round(plan.duration_s)))
            nows.append({
                "video_s": plan.duration_s, "runs": len(runs), "stitch_s": med["stitch_s"],
                "mux_publish_s": med["mux_publish_s"], "total_s": med["total_s"],
                "min_total_s": min(r["total_s"] for r in runs), "max_total_s": max(r["total_s"] for r in runs),
                "target_s": target if target is not None else "-",
                "result": ("met" if max(r["total_s"] for r in runs) < target else "MISSED") if target else "-",
                "stitch": f"{runs[0]['stitch_method']} ({runs[0]['clips']} clips)",
                "mux": f"{runs[0]['mux_method']} / {runs[0]['mux_extra_method']}",
                "final_MB": runs[0]["final_bytes"] / 1e6,
                "frames": f"{runs[0]['frames']} / {runs[0]['plan_frames']}",
                "audio_s": f"{runs[0]['audio_s']:.4f} / {runs[0]['plan_s']:g}",
                "checks": "ok" if runs[0]["frames_ok"] and runs[0]["audio_ok"] else "FAILED",
            })
            raw.append({"length_s": length, "setup": setups[-1], "tail_runs": runs, "before_runs": old,
                        "plan_frames": plan_frames(plan)})
            if old_med:
                befores.append({"video_s": plan.duration_s, "stitch_method": old_med["stitch_method"],
                                **{k: v for k, v in old_med.items() if k.endswith("_s")},
                                "frames_ok": old_med["frames_ok"], "now_total_s": med["total_s"],
                                "speedup": old_med["total_s"] / med["total_s"]})
            breakdown_rows = [{"video_s": plan.duration_s, **{k: med[k] for k in (
                "stitch_ffmpeg_s", "stitch_verify_s", "stitch_rest_s", "mux_ffmpeg_s", "mux_verify_s", "publish_s",
                "mux_rest_s")}}]
            raw[-1]["breakdown_median"] = breakdown_rows[0]
            shutil.rmtree(video["ws"].root, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    heading("Assembly tail: setup (not measured)")
    emit(table(setups))
    emit("\nEach video rendered in-process with the local provider through the stage functions (no Dagster), "
         f"{args.workers} segments at a time, beats of {BEAT_S:g} s (2 chunks of 5 s each).")
    heading("Assembly tail: last chunk done -> final video published (stitch_video + mux_video)")
    emit(table(nows))
    emit(f"\nMedian of {args.repeat} cold runs (fresh generation cache, outputs removed from the store and "
         "videos/ between runs; inputs in the page cache). *result*: every run under the target. *frames*, "
         "*audio_s*: the published video decoded (media.probe), got / plan; the audio within one AAC frame.")
    heading("Where the tail's time goes (median seconds)")
    emit(table([r["breakdown_median"] for r in raw], floatfmt=".3f"))
    emit("\n*ffmpeg*: media.stitch / media.mux_copy (including their probes); *verify*: the generator's check of "
         "the output before storing it (media.verify_*); *publish*: the copy into videos/ (stages.publish); "
         "*rest*: cache lookups, sha256 into the store, manifests.")
    if befores:
        heading(BEFORE_LABEL)
        emit(table(befores))
        emit("\nThe same chunks and raw music track: media.stitch of the raw chunks with the beat trims, a full "
             "decode of it (the generator's check), media.mux_final (the music trimmed, faded, two-pass loudnorm, "
             f"AAC), a full decode of the result, sha256 of both, the publish copy. Median of {args.before_repeat}. "
             "Local chunks already match the plan, so the old stitch was a stream copy here too; Replicate chunks "
             "were re-encoded (BENCHMARKS.md section 4: 16-19x real time).")
    load_end = load_averages()
    emit(f"\n1/5/15-minute load average at end: {' / '.join(f'{x:.2f}' for x in load_end)}")
    path = save_results("assembly_tail", {"args": {k: str(v) for k, v in vars(args).items()},
                                          "load_avg_start": load_start, "load_avg_end": load_end,
                                          "targets_s": TARGETS_S, "lengths": raw, "now": nows, "before": befores})
    emit(f"\nRaw numbers: {path}")
    failed = [r for r in nows if r["checks"] != "ok"] + [r for r in befores if not r["frames_ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
