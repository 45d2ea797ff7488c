"""Assembly media operations: conforming chunks to the plan's timeline, stitching the pieces,
finishing the music (fade-out, two-pass loudnorm, AAC) and muxing the final video; and the frame
arithmetic of the timeline (``frame_count``, ``beat_frames``).

Assembly is built to be a stream copy: ``conform`` makes every piece of the timeline the same kind
of H.264 stream (``encoder_signature``), so ``stitch`` joins them with the concat demuxer, and
``finish_music`` makes the final audio, so ``mux_copy`` only interleaves packets.

Sizes in pixels, times in seconds, rates in frames per second, loudness in LUFS / dBTP. Raises
MediaError (``pipeline.media_base``) when ffmpeg fails or a piece leaves a gap in the timeline.
Re-exported by ``pipeline.media``. Nothing here imports Dagster.
"""

from __future__ import annotations

import functools
import json
import math
import re
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import ffmpeg

from pipeline.media_base import (
    AUDIO_CODEC_ARGS,
    AUDIO_SAMPLE_RATE,
    LOUDNESS_TARGET,
    VIDEO_CODEC_ARGS,
    MediaError,
    MediaInfo,
    probe,
    run_ffmpeg,
)


# --- conforming chunks to the plan -------------------------------------------------------------

def _video_encode_args(fps: int) -> list[str]:
    """Output arguments of every H.264 encode here: VIDEO_CODEC_ARGS at ``fps``, a keyframe a second."""
    args = ["-r", str(fps), "-g", str(fps)]
    for key, value in VIDEO_CODEC_ARGS.items():
        args += [f"-{key}", str(value)]
    return args


@functools.cache
def encoder_signature(width: int, height: int, fps: int) -> tuple[bytes, Fraction]:
    """(extradata, time base) of the H.264 stream this module encodes at ``width`` x ``height``
    pixels and ``fps`` (VIDEO_CODEC_ARGS): the SPS/PPS a stream-copied piece must share with pieces
    encoded here for the concat demuxer to join them by stream copy, and the time base every piece
    gets. Found by encoding one black frame (about 0.1 s), once per process and size. Raises
    MediaError if ffmpeg fails."""
    with tempfile.TemporaryDirectory(prefix="encoder-signature-") as tmp:
        out = Path(tmp) / "one.mp4"
        run_ffmpeg(["-f", "lavfi", "-i", f"color=c=black:s={width}x{height}:r={fps}", "-frames:v", "1",
                    *_video_encode_args(fps), str(out)], what=f"encode a {width}x{height} test frame")
        info = probe(out, decode=False)
    if info.time_base is None:
        raise MediaError(f"ffmpeg wrote no video stream for a {width}x{height} test frame")
    return info.extradata or b"", info.time_base


def video_packets(path: str | Path) -> tuple[int, bool]:
    """(number of video packets, whether the first is a keyframe) of ``path``, by demuxing only
    (no decoding). Without B-frames, one packet is one frame. Raises MediaError if unreadable."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0, False
            count, first_key = 0, False
            for packet in container.demux(container.streams.video[0]):
                if packet.size == 0:  # the demuxer's end-of-stream flush packet
                    continue
                if count == 0:
                    first_key = bool(packet.is_keyframe)
                count += 1
            return count, first_key
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{path}: cannot demux video: {exc}") from None


def _plain_h264(info: MediaInfo, width: int, height: int, fps: int) -> bool:
    """H.264 yuv420p without B-frames at ``width`` x ``height`` and ``fps``."""
    return (info.video_codec == "h264" and info.pix_fmt == "yuv420p" and not info.has_b_frames
            and info.width == width and info.height == height and info.fps is not None and abs(info.fps - fps) < 1e-6)


def conform(src: str | Path, out: str | Path, *, width: int, height: int, fps: int, frames: int) -> str:
    """Write into ``out`` the first ``frames`` frames of video ``src`` as one piece of the plan's
    timeline: ``fps`` frames per second, ``width`` x ``height`` pixels, H.264 encoded like this
    module's encodes (VIDEO_CODEC_ARGS, SPS/PPS and time base of ``encoder_signature``), the first
    frame a keyframe. Pieces conformed to the same plan join by stream copy (``stitch``). No audio.

    Stream copy, cut after ``frames`` packets, when ``src`` already is such a stream (H.264 yuv420p
    without B-frames at the size and fps, first packet a keyframe, the encoder's SPS/PPS): frames
    stay bit-exact. Otherwise one re-encode: ``fps`` filter, scaled to fit inside the frame and padded
    (centred, black), square pixels. Returns "stream_copy" or "reencode". Raises ValueError if
    ``frames`` < 1, MediaError if ``src`` has no video, gives fewer than ``frames`` frames at ``fps``
    (a gap in the timeline), or ffmpeg fails."""
    if frames < 1:
        raise ValueError(f"a conformed piece needs at least one frame (got {frames})")
    info = probe(src, decode=False)
    if not info.has_video:
        raise MediaError(f"{src}: no video stream to conform")
    extradata, time_base = encoder_signature(width, height, fps)
    copyable = _plain_h264(info, width, height, fps) and info.extradata == extradata and video_packets(src)[1]
    if copyable:
        run_ffmpeg(["-i", str(src), "-map", "0:v:0", "-c", "copy", "-frames:v", str(frames),
                    "-video_track_timescale", str(round(1 / time_base)), "-movflags", "+faststart", str(out)],
                   what=f"cut {frames} frames of {Path(src).name} by stream copy")
        method = "stream_copy"
    else:
        vf = (f"fps={fps},scale={width}:{height}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
              f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1")
        run_ffmpeg(["-i", str(src), "-map", "0:v:0", "-vf", vf, "-frames:v", str(frames), *_video_encode_args(fps),
                    str(out)],
                   what=f"conform {Path(src).name} ({info.width}x{info.height} @ {info.fps or 0:g} fps) to "
                        f"{frames} frames of {width}x{height} @ {fps} fps")
        method = "reencode"
    got = video_packets(out)[0]
    if got != frames:
        raise MediaError(f"{src}: gives {got} frames at {fps} fps but the timeline needs {frames} from it "
                         "(gap in the stitch)")
    return method


# --- stitching ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class StitchPiece:
    """A chunk file and how many of its frames the timeline keeps (at the output fps)."""

    path: Path
    keep_frames: int


def _stream_copy_compatible(infos: list[MediaInfo], width: int, height: int, fps: int) -> bool:
    """Every piece plain H.264 at the output size and fps, all with one time base and one SPS/PPS
    (the concat demuxer neither rescales a later file's timestamps nor switches parameter sets)."""
    return all(_plain_h264(i, width, height, fps) and i.time_base == infos[0].time_base
               and i.extradata == infos[0].extradata for i in infos)


def stitch(pieces: list[StitchPiece], out: str | Path, *, width: int, height: int, fps: int,
           workdir: str | Path) -> str:
    """Concatenate ``pieces`` in order, keeping ``keep_frames`` of each, into ``out`` (H.264, no audio).

    Stream copy (concat demuxer with exact out-points) when every piece is H.264/yuv420p without
    B-frames at the output size and fps, all with the same time base and SPS/PPS (pieces made by
    ``conform`` for one plan are); otherwise one re-encode through the concat filter, scaling and
    padding to ``width``x``height`` and resampling to ``fps``. Returns "stream_copy" or "reencode".
    Raises MediaError if a piece has fewer frames than it must keep.
    """
    infos = [probe(p.path, decode=False) for p in pieces]
    for piece, info in zip(pieces, infos):
        available = round(info.duration_s * fps)
        if piece.keep_frames > available:  # the container's duration may be off: count by decoding
            info = probe(piece.path)
            available = round(info.duration_s * fps)
        if piece.keep_frames > available:
            raise MediaError(f"{piece.path}: has {info.duration_s:.3f} s but the timeline needs "
                             f"{piece.keep_frames / fps:.3f} s from it (gap in the stitch)")
    total_frames = sum(p.keep_frames for p in pieces)
    workdir = Path(workdir)
    if _stream_copy_compatible(infos, width, height, fps):
        listing = workdir / "concat.ffconcat"
        lines = ["ffconcat version 1.0"]
        for piece in pieces:
            lines.append(f"file '{piece.path.resolve()}'")
            # Out-point is exclusive; floor to microseconds so frame keep_frames-1 stays in and
            # frame keep_frames is out.
            lines.append(f"outpoint {math.floor(piece.keep_frames / fps * 1e6) / 1e6:.6f}")
        listing.write_text("\n".join(lines) + "\n")
        run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0:v:0", "-c", "copy",
                    "-frames:v", str(total_frames), "-movflags", "+faststart", str(out)],
                   what="stitch chunks by stream copy")
        method = "stream_copy"
    else:
        streams = []
        for piece in pieces:
            s = (ffmpeg.input(str(piece.path)).video
                 .filter("fps", fps)
                 .filter("scale", width, height, force_original_aspect_ratio="decrease")
                 .filter("pad", width, height, "(ow-iw)/2", "(oh-ih)/2")
                 .filter("setsar", 1)
                 .filter("trim", end_frame=piece.keep_frames)
                 .filter("setpts", "PTS-STARTPTS"))
            streams.append(s)
        joined = ffmpeg.concat(*streams, v=1, a=0) if len(streams) > 1 else streams[0]
        run_ffmpeg(joined.output(str(out), r=fps, g=fps, vframes=total_frames, **VIDEO_CODEC_ARGS),
                   what="stitch chunks by re-encoding")
        method = "reencode"
    return method


# --- music: fade, loudness, muxing ---------------------------------------------------------------

def _loudnorm_chain(music: str | Path, *, duration_s: float, fade_out_s: float) -> tuple[str, dict]:
    """The audio filter chain that finishes ``music`` for a ``duration_s``-second video, and the
    loudness it measured (EBU R128 two-pass loudnorm, ffmpeg's documented procedure).

    The chain trims or pads (silence) the music to ``duration_s``, fades it out over the last
    ``min(fade_out_s, duration_s / 4)`` seconds, applies the linear gain that pass 1 (run here)
    found for LOUDNESS_TARGET, resamples to AUDIO_SAMPLE_RATE and ends after exactly
    round(duration_s * AUDIO_SAMPLE_RATE) samples with gap-free timestamps (loudnorm's own output
    timestamps jump). Returns (chain, pass 1's measurement: input_i LUFS, input_tp dBTP, ...).
    Raises MediaError if ffmpeg fails or prints no measurement."""
    fade = min(fade_out_s, duration_s / 4)
    pre = (f"atrim=0:{duration_s:.6f},apad=whole_dur={duration_s:.6f},"
           f"afade=t=out:st={max(0.0, duration_s - fade):.6f}:d={fade:.6f}")
    target = ":".join(f"{k}={v}" for k, v in LOUDNESS_TARGET.items())
    log = run_ffmpeg(["-i", str(music), "-map", "0:a:0", "-af", f"{pre},loudnorm={target}:print_format=json",
                      "-f", "null", "-"], what="measure music loudness")
    match = re.search(r"\{[^{}]*\"input_i\"[^{}]*\}", log, re.S)
    if not match:
        raise MediaError("loudnorm printed no measurement")
    m = json.loads(match.group(0))
    measured = (f"measured_I={m['input_i']}:measured_TP={m['input_tp']}:measured_LRA={m['input_lra']}:"
                f"measured_thresh={m['input_thresh']}:offset={m['target_offset']}:linear=true")
    samples = round(duration_s * AUDIO_SAMPLE_RATE)
    chain = (f"{pre},loudnorm={target}:{measured},aresample={AUDIO_SAMPLE_RATE},asetpts=N/SR/TB,"
             f"apad=whole_len={samples},atrim=end_sample={samples}")
    return chain, m


def finish_music(music: str | Path, out: str | Path, *, duration_s: float, fade_out_s: float = 2.0) -> dict:
    """Write into ``out`` (.m4a) the final video's audio from ``music``: ``duration_s`` seconds
    (trimmed or padded with silence), faded out over the last ``min(fade_out_s, duration_s / 4)``
    seconds, loudness-normalized to LOUDNESS_TARGET (two-pass loudnorm), AUDIO_SAMPLE_RATE Hz,
    AUDIO_CODEC_ARGS (AAC). It decodes to ``duration_s`` within one AAC frame (1024 samples) and is
    muxed by stream copy (``mux_copy``). Returns the loudness measured before normalizing (loudnorm
    pass 1: input_i LUFS etc.). Raises MediaError."""
    chain, measured = _loudnorm_chain(music, duration_s=duration_s, fade_out_s=fade_out_s)
    run_ffmpeg(["-i", str(music), "-map", "0:a:0", "-af", chain, *AUDIO_CODEC_ARGS, "-movflags", "+faststart",
                str(out)], what="finish the music")
    return measured


def mux_copy(video: str | Path, audio: str | Path, out: str | Path) -> None:
    """Mux ``video``'s first video stream and ``audio``'s first audio stream into ``out`` (MP4,
    +faststart), both by stream copy: bit-identical packets, time independent of the length beyond
    copying bytes. Raises MediaError."""
    run_ffmpeg(["-i", str(video), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c", "copy",
                "-movflags", "+faststart", str(out)], what="mux the final video by stream copy")


def mux_final(video: str | Path, music: str | Path, out: str | Path, *, duration_s: float,
              fade_out_s: float = 2.0) -> dict:
    """Mux ``video`` (stream-copied) with ``music`` finished in the same pass: what ``finish_music``
    does (trimmed/padded to ``duration_s`` seconds, faded out over the last ``fade_out_s`` seconds at
    most, two-pass loudnorm to LOUDNESS_TARGET, AAC at AUDIO_SAMPLE_RATE Hz), output cut at
    ``duration_s``. The fallback for music manifests without a finished track.

    Returns pass 1's measurement (input_i LUFS etc.). Raises MediaError.
    """
    chain, measured = _loudnorm_chain(music, duration_s=duration_s, fade_out_s=fade_out_s)
    run_ffmpeg(["-i", str(video), "-i", str(music), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-af", chain, *AUDIO_CODEC_ARGS, "-t", f"{duration_s:.6f}", "-movflags", "+faststart", str(out)],
               what="mux the final video")
    return measured


def encode_audio(wav: str | Path, out: str | Path) -> None:
    """Encode a WAV file to AAC (192 kb/s) in an .m4a container."""
    run_ffmpeg(["-i", str(wav), *AUDIO_CODEC_ARGS, str(out)], what="encode music")


def frame_count(seconds: float, fps: float) -> int:
    """Frames that ``seconds`` covers at ``fps`` (rounded to the nearest frame)."""
    return int(round(seconds * fps))


def beat_frames(start_s: float, duration_s: float, fps: float) -> int:
    """Frames of the timeline a beat keeps: it covers frames [round(start_s * fps),
    round((start_s + duration_s) * fps)), so beats laid end to end add up to the video's frames."""
    return frame_count(start_s + duration_s, fps) - frame_count(start_s, fps)
