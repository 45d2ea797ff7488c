"""Stitch throughput: seconds of video per wall second of pipeline.media.stitch, on its stream-copy
path and its re-encode path, and of the final mux (pipeline.media.mux_final, two-pass loudnorm).

Chunks are rendered once with the pipeline's own camera-move renderer (5 s each, 4 distinct ones
reused round-robin) in three formats:
- local provider chunks, 854x480 @ 24 fps H.264 without B-frames -> stream copy;
- Wan-sized chunks, 848x480 @ 24 fps -> re-encode (padded to 854x480);
- fake-Replicate chunks as the makespan benchmark gets them, 212x120 @ 16 fps -> re-encode
  (scaled to 854x480).
Each beat keeps whole chunks (the stitch trims the last one only when a beat is not a multiple of
5 s, which does not change the cost). Median of ``--repeat`` runs (default 1: a run takes seconds).

Stream copy runs at every ``--lengths``; the re-encodes (whose rate does not depend on the length)
and the mux at 40 and 120 s.

Usage: python benchmarks/bench_stitch.py [--lengths 40 120 300] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, heading, save_results, table  # noqa: E402

FORMATS = [  # label, chunk width, height, fps, output width, height, lengths (None: --lengths)
    ("stream copy (local chunks 854x480@24)", 854, 480, 24, 854, 480, None),
    ("re-encode (Wan-size chunks 848x480@24 -> 854x480)", 848, 480, 24, 854, 480, [40, 120]),
    ("re-encode (fake-Replicate chunks 212x120@16 -> 854x480)", 212, 120, 16, 854, 480, [120]),
]
MUX_LENGTHS = [40, 120]
CHUNK_S = 5.0
DISTINCT = 4


_CHUNKS: dict[tuple, list[Path]] = {}


def make_chunks(work: Path, width: int, height: int, fps: int) -> list[Path]:
    if (work, width, height, fps) in _CHUNKS:
        return _CHUNKS[(work, width, height, fps)]
    from pipeline import media
    from pipeline.generation import GenerationRequest
    from pipeline.providers.local import LocalProvider

    out = []
    for i in range(DISTINCT):
        req = GenerationRequest(media_type="image", provider="local", model="x", prompt=f"stitch bench card {i}",
                                seed=i, params={"width": 854, "height": 480, "caption": f"card {i}"})
        d = work / f"src-{width}x{height}-{fps}-{i}"
        d.mkdir(parents=True, exist_ok=True)
        image = LocalProvider().render_image(req, d).path
        chunk = d / "chunk.mp4"
        media.render_camera_move(image, chunk, width=width, height=height, fps=fps, seconds=CHUNK_S,
                                 move=media.CAMERA_MOVES[i % len(media.CAMERA_MOVES)], speed=0.6)
        out.append(chunk)
    _CHUNKS[(work, width, height, fps)] = out
    return out


def distinct_pieces(work: Path, chunks: list[Path], n: int, keep: int) -> list:
    """``n`` pieces cycling through ``chunks``, each under its own path (hard links): the stitch's
    ffmpeg-python graph cannot take the same file twice with the same trim (see BENCHMARKS.md)."""
    from pipeline import media

    pieces = []
    for i in range(n):
        src = chunks[i % len(chunks)]
        dst = src.with_name(f"piece-{i:03d}.mp4")
        if not dst.exists():
            os.link(src, dst)
        pieces.append(media.StitchPiece(dst, keep))
    return pieces


def make_music(work: Path, seconds: float) -> Path:
    from pipeline import media

    out = work / f"music-{seconds:g}.m4a"
    media.run_ffmpeg(["-f", "lavfi", "-i", f"sine=frequency=220:sample_rate=44100:duration={seconds + 1:g}",
                      "-c:a", "aac", "-b:a", "128k", str(out)], what="make bench music")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=float, nargs="+", default=[40, 120, 300], help="video lengths, seconds")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    args = ap.parse_args(argv)
    from pipeline import media

    heading("Stitch throughput (pipeline.media.stitch) and the final mux", 2)
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="bench-stitch-") as tmp:
        work = Path(tmp)
        for label, w, h, fps, ow, oh, lengths in FORMATS:
            chunks = make_chunks(work, w, h, fps)
            for length in lengths or args.lengths:
                n = int(round(length / CHUNK_S))
                keep = media.frame_count(CHUNK_S, fps)
                pieces = distinct_pieces(work, chunks, n, keep)
                times, method = [], None
                for r in range(args.repeat):
                    out = work / f"out-{w}-{fps}-{length:g}-{r}.mp4"
                    t0 = time.perf_counter()
                    method = media.stitch(pieces, out, width=ow, height=oh, fps=fps, workdir=work)
                    times.append(time.perf_counter() - t0)
                    info = media.probe(out, decode=False)
                    if abs(info.duration_s - length) > 2 / fps:
                        raise RuntimeError(f"{label}: stitched {info.duration_s:.3f} s, wanted {length:g} s")
                wall = statistics.median(times)
                rows.append({"path": label, "method": method, "video_s": length, "chunks": n, "wall_s": wall,
                             "video_s_per_wall_s": length / wall})
                results.append(rows[-1] | {"times": times})
        emit(table(rows))

        # Experiment: the same 120 s re-encode with faster x264 presets (pipeline.media.VIDEO_CODEC_ARGS
        # is read at call time; patched here only, restored after).
        exp_rows = []
        chunks = make_chunks(work, 848, 480, 24)
        pieces = distinct_pieces(work, chunks, int(round(120 / CHUNK_S)), media.frame_count(CHUNK_S, 24))
        saved = dict(media.VIDEO_CODEC_ARGS)
        try:
            for preset in ("veryfast", "superfast", "ultrafast"):
                media.VIDEO_CODEC_ARGS["preset"] = preset
                out = work / f"preset-{preset}.mp4"
                t0 = time.perf_counter()
                media.stitch(pieces, out, width=854, height=480, fps=24, workdir=work)
                wall = time.perf_counter() - t0
                exp_rows.append({"preset (crf 18)": preset + (" (current)" if preset == saved["preset"] else ""),
                                 "video_s": 120, "wall_s": wall, "video_s_per_wall_s": 120 / wall,
                                 "MB": out.stat().st_size / 1e6})
        finally:
            media.VIDEO_CODEC_ARGS.clear()
            media.VIDEO_CODEC_ARGS.update(saved)
        heading("Experiment: the 120 s re-encode (Wan-size chunks) with faster x264 presets", 4)
        emit(table(exp_rows))

        heading("Final mux (stream-copied video + music, two-pass EBU R128 loudnorm)", 4)
        mux_rows = []
        chunks = make_chunks(work, 854, 480, 24)
        for length in [x for x in args.lengths if x in MUX_LENGTHS] or args.lengths[:1]:
            n = int(round(length / CHUNK_S))
            video = work / f"mux-video-{length:g}.mp4"
            media.stitch(distinct_pieces(work, chunks, n, 120), video,
                         width=854, height=480, fps=24, workdir=work)
            music = make_music(work, length)
            times = []
            for r in range(args.repeat):
                t0 = time.perf_counter()
                media.mux_final(video, music, work / f"final-{length:g}-{r}.mp4", duration_s=length)
                times.append(time.perf_counter() - t0)
            # Where the time goes: pass 1 alone (measure); pass 2 without loudnorm (the AAC encode and
            # the video stream copy); an ebur128 measurement of the same integrated loudness.
            pre = f"atrim=0:{length},apad=whole_dur={length}"
            t0 = time.perf_counter()
            media.run_ffmpeg(["-i", str(video), "-i", str(music), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                              "-af", f"{pre},aresample=48000", "-c:a", "aac", "-b:a", "192k", "-t", f"{length:.6f}",
                              str(work / f"plain-{length:g}.mp4")], what="mux without loudnorm")
            plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            media.run_ffmpeg(["-i", str(video), "-i", str(music), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                              "-af", f"{pre},aresample=48000", "-c:a", "aac", "-aac_coder", "fast", "-b:a", "192k",
                              "-t", f"{length:.6f}", str(work / f"plainfast-{length:g}.mp4")],
                             what="mux without loudnorm, fast AAC coder")
            plain_fast = time.perf_counter() - t0
            t0 = time.perf_counter()
            media.run_ffmpeg(["-i", str(music), "-af", f"{pre},loudnorm=I=-16:TP=-1.5:LRA=11:print_format=json",
                              "-f", "null", "-"], what="loudnorm pass 1")
            pass1 = time.perf_counter() - t0
            t0 = time.perf_counter()
            media.run_ffmpeg(["-i", str(music), "-af", f"{pre},ebur128=framelog=quiet", "-f", "null", "-"],
                             what="ebur128 measure")
            ebur = time.perf_counter() - t0
            wall = statistics.median(times)
            mux_rows.append({"video_s": length, "mux_wall_s": wall, "video_s_per_wall_s": length / wall,
                             "of_which_loudnorm_s": wall - plain, "same_mux_without_loudnorm_s": plain,
                             "same_without_loudnorm_aac_coder_fast_s": plain_fast,
                             "loudnorm_pass1_alone_s": pass1, "ebur128_measure_s": ebur})
        emit(table(mux_rows))
        emit("\nof_which_loudnorm_s = mux_wall_s - same_mux_without_loudnorm_s (both loudnorm passes; loudnorm "
             "works at 192 kHz internally). The rest is mostly ffmpeg's native AAC encoder (192 kb/s, default "
             "twoloop coder); `-aac_coder fast` is the same encoder's faster search. ebur128 measures the same "
             "integrated loudness at the input rate.")
    save_results("stitch", {"stitch": results, "presets": exp_rows, "mux": mux_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
