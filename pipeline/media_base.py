"""The base of the media modules: the ffmpeg binary and running it, the encoding every video and
final audio track the pipeline writes gets (H.264 without B-frames, AAC at 48 kHz, the loudness
target), and probing and verifying files by decoding them (PyAV).

``MediaError`` is what every media operation raises: an ffmpeg command failed, or a file is not
the medium it should be. Sizes are in pixels, times in seconds. The edits built on these are in
``pipeline.media`` (centre crop, last frame), ``pipeline.media_camera`` (camera moves) and
``pipeline.media_assembly`` (conform, stitch, music finishing, mux); ``pipeline.media`` re-exports
all of them and is the import path callers use. Nothing here imports Dagster.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import ffmpeg
from PIL import Image

from pipeline.procs import die_with_parent

VIDEO_CODEC_ARGS = {
    "c:v": "libx264",
    "preset": "veryfast",
    "crf": 18,
    "bf": 0,  # no B-frames: a chunk can be cut at any frame when stream-copied
    "pix_fmt": "yuv420p",
    "movflags": "+faststart",
}
"""Encoding of every video the pipeline writes itself. Stream-copy stitching relies on it."""

LOUDNESS_TARGET = {"I": -16.0, "TP": -1.5, "LRA": 11.0}
"""EBU R128 target for the final mix: -16 LUFS integrated, -1.5 dBTP (common streaming targets)."""

AUDIO_SAMPLE_RATE = 48_000
"""Sample rate (Hz) of the final video's audio."""

AUDIO_CODEC_ARGS = ["-c:a", "aac", "-b:a", "192k"]
"""Encoding of the final video's audio: AAC-LC at 192 kb/s (1024 samples a frame)."""


class MediaError(RuntimeError):
    """An ffmpeg command failed, or a file is not the medium it should be. Says which file and why."""


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $PIPELINE_FFMPEG, else ``ffmpeg`` on PATH, else imageio-ffmpeg's."""
    explicit = os.environ.get("PIPELINE_FFMPEG")
    if explicit:
        return explicit
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(stream_or_args, *, what: str, cwd: str | Path | None = None) -> str:
    """Run ffmpeg (an ffmpeg-python stream or a raw argument list) in ``cwd`` (default: this
    process's working directory). Returns stderr text.

    ffmpeg dies with this process (``procs.die_with_parent``: SIGKILL when the calling thread,
    blocked here until ffmpeg ends, exits). Raises MediaError with ``what`` and the tail of
    ffmpeg's log when it exits non-zero.
    """
    if isinstance(stream_or_args, list):
        args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *stream_or_args]
    else:
        args = [ffmpeg_exe(), "-hide_banner", "-nostdin",
                *ffmpeg.compile(stream_or_args.global_args("-y"), cmd=[])]
    proc = subprocess.run(args, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                          preexec_fn=functools.partial(die_with_parent, os.getpid()), cwd=cwd)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        raise MediaError(f"ffmpeg failed to {what} (exit {proc.returncode}):\n{tail}")
    return proc.stderr


@dataclass(frozen=True)
class MediaInfo:
    """What decoding a file found. Sizes in pixels, times in seconds, ``frames`` decoded video frames."""

    width: int | None
    height: int | None
    duration_s: float
    fps: float | None
    frames: int
    video_codec: str | None
    pix_fmt: str | None
    has_b_frames: bool
    audio_codec: str | None
    audio_duration_s: float | None
    sample_rate: int | None
    declared_duration_s: float | None = None
    """What the container/stream header claims, before decoding (None if it claims nothing)."""
    time_base: Fraction | None = None
    """The video stream's time base (seconds per tick); the concat demuxer needs one for all pieces."""
    extradata: bytes | None = field(default=None, repr=False)
    """The video stream's codec extradata (H.264: the avcC with SPS/PPS); None when it has none."""

    @property
    def has_video(self) -> bool:
        return self.video_codec is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


def _stream_duration(stream, container) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def probe(path: str | Path, *, decode: bool = True) -> MediaInfo:
    """Open ``path`` with PyAV and, with ``decode``, decode every video frame and audio packet.

    Decoding proves the file is whole. Raises MediaError when the file cannot be opened or decoded.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            v = container.streams.video[0] if container.streams.video else None
            a = container.streams.audio[0] if container.streams.audio else None
            frames = 0
            last_video_end = 0.0
            audio_end = 0.0
            if decode:
                if v is not None:
                    v.thread_type = "AUTO"  # frame + slice threads: about 2x faster on 2 cores
                streams = [s for s in (v, a) if s is not None]
                for frame in container.decode(*streams):
                    if isinstance(frame, av.VideoFrame):
                        frames += 1
                        if frame.pts is not None and frame.time_base is not None:
                            last_video_end = float(frame.pts * frame.time_base)
                    elif isinstance(frame, av.AudioFrame) and frame.pts is not None:
                        audio_end = max(audio_end, float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate)
            fps = float(v.average_rate) if v is not None and v.average_rate else None
            if v is not None:
                duration = _stream_duration(v, container)
                if decode and fps:
                    duration = frames / fps if frames else 0.0
                elif duration is None:
                    duration = last_video_end
            else:
                duration = audio_end if decode else (_stream_duration(a, container) or 0.0) if a else 0.0
            return MediaInfo(
                width=v.codec_context.width if v else None,
                height=v.codec_context.height if v else None,
                duration_s=float(duration or 0.0),
                fps=fps,
                frames=frames,
                video_codec=v.codec_context.name if v else None,
                pix_fmt=v.codec_context.pix_fmt if v else None,
                has_b_frames=bool(v.codec_context.has_b_frames) if v else False,
                audio_codec=a.codec_context.name if a else None,
                audio_duration_s=(audio_end if decode else _stream_duration(a, container)) if a else None,
                sample_rate=a.codec_context.sample_rate if a else None,
                declared_duration_s=_stream_duration(v or a, container) if (v or a) else None,
                time_base=v.time_base if v is not None else None,
                extradata=bytes(v.codec_context.extradata) if v is not None and v.codec_context.extradata else None,
            )
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"{path}: cannot decode media: {exc}") from None


def verify_image(path: str | Path) -> tuple[int, int]:
    """Decode an image fully. Returns (width, height) in pixels. Raises MediaError if it is not one."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{path}: not a decodable image: {exc}") from None


def verify_video(path: str | Path) -> MediaInfo:
    """Decode every frame of a video. Raises MediaError if it has no video stream, fewer than two
    frames (a still image is not a video), or decodes to under 95 % of the duration its header
    declares (a truncated download or upload)."""
    info = probe(path)
    if not info.has_video or info.frames == 0:
        raise MediaError(f"{path}: no decodable video frames")
    if info.frames < 2:
        raise MediaError(f"{path}: a single {info.video_codec} frame, not a video")
    declared = info.declared_duration_s
    if declared and info.fps and info.duration_s + 2 / info.fps < 0.95 * declared:
        raise MediaError(f"{path}: truncated: decoded {info.duration_s:.3f} s of the {declared:.3f} s its header declares")
    return info


def verify_stream_copy(path: str | Path) -> MediaInfo:
    """Check a file this pipeline wrote by stream copy from media it had already decoded and
    verified (conformed pieces, segment clips, a stitch or mux by stream copy): read every packet
    without decoding it. ``frames`` is the video packet count (one frame per packet: H.264 without
    B-frames, as every copy-compatible piece is), ``duration_s`` frames / fps, ``audio_duration_s``
    the end of the last audio packet (seconds). Milliseconds instead of a full decode (~1.5 s for 40 s
    of 854x480 on 2 cores), so assembling by stream copy costs about the same at any length.
    Raises MediaError if the file cannot be read to the end or has no packets."""
    path = Path(path)
    info = probe(path, decode=False)
    frames, audio_end = 0, 0.0
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video[:1] + container.streams.audio[:1]
            indexed = {s.index: s.frames for s in streams}  # packets the container's index lists
            read = dict.fromkeys(indexed, 0)
            for packet in container.demux(*streams):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream flush packet
                read[packet.stream.index] += 1
                if packet.stream.type == "video":
                    frames += 1
                elif packet.pts is not None and packet.duration is not None:
                    audio_end = max(audio_end, float((packet.pts + packet.duration) * packet.time_base))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{path}: cannot read its packets: {exc}") from None
    short = [f"stream {i}: {read[i]} of {n} packets" for i, n in indexed.items() if n and read[i] != n]
    if short:
        raise MediaError(f"{path}: truncated: " + "; ".join(short))
    if info.has_video and frames == 0:
        raise MediaError(f"{path}: no video packets")
    if info.has_audio and audio_end <= 0:
        raise MediaError(f"{path}: no audio packets")
    return replace(info, frames=frames, duration_s=frames / info.fps if info.has_video and info.fps else info.duration_s,
                   audio_duration_s=audio_end if info.has_audio else None)


def verify_audio(path: str | Path) -> MediaInfo:
    """Decode an audio file. Raises MediaError if it has no audio stream or zero length."""
    info = probe(path)
    if not info.has_audio or not info.audio_duration_s:
        raise MediaError(f"{path}: no decodable audio")
    return info
