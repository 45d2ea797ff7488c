"""Media operations: the ffmpeg binary, probing and verifying by decoding, and the video edits
the pipeline needs (camera moves, last-frame extraction, conforming chunks to the plan, stitching,
finishing the music, muxing).

Assembly is built to be a stream copy: ``conform`` makes every piece of the timeline the same kind
of H.264 stream (``encoder_signature``), so ``stitch`` joins them with the concat demuxer, and
``finish_music`` makes the final audio, so ``mux_copy`` only interleaves packets.

ffmpeg commands are built with ffmpeg-python and run with the system ``ffmpeg`` when there is one,
else the binary shipped in the imageio-ffmpeg wheel. Probing and decoding use PyAV. Nothing here
imports Dagster.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
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


# --- camera moves -----------------------------------------------------------------------------

CAMERA_MOVES = ("push_in", "pan_right", "pan_left", "tilt_up", "tilt_down", "drift")

_MOTION_WORDS = [
    (r"\b(pan|track|tracking|lateral|truck|follow|following)\b.*\bleft\b|\bleft\b.*\b(pan|track)", "pan_left"),
    (r"\b(pan|track|tracking|lateral|truck|follow|following|sweep)\w*\b", "pan_right"),
    (r"\btilt\w*\b.*\bdown\b|\bcrane down\b|\bdescend", "tilt_down"),
    (r"\b(tilt|crane|rise|rising|pedestal)\w*\b", "tilt_up"),
    (r"\b(push|zoom|dolly|close|closer|in on)\b", "push_in"),
]


def camera_move_for(motion: str | None) -> str:
    """Pick a camera move from a beat's free-text ``motion`` ("slow push-in", "lateral pan", ...)."""
    text = (motion or "").lower()
    for pattern, move in _MOTION_WORDS:
        if re.search(pattern, text):
            return move
    return "drift"


def _move_expressions(move: str, frames: int, speed: float) -> tuple[str, str, str]:
    """zoompan (z, x, y) expressions; at output frame 0 the view is exactly the whole input."""
    last = max(frames - 1, 1)
    p = f"(on/{last})"
    zmax = {"drift": 0.04}.get(move, 0.14) * speed
    z = f"1+{zmax:.4f}*{p}"
    cx, cy = "(iw-iw/zoom)/2", "(ih-ih/zoom)/2"
    x, y = cx, cy
    if move == "pan_right":
        x = "(iw-iw/zoom)*" + p
    elif move == "pan_left":
        x = "(iw-iw/zoom)*(1-" + p + ")"
    elif move == "tilt_up":
        y = "(ih-ih/zoom)*(1-" + p + ")"
    elif move == "tilt_down":
        y = "(ih-ih/zoom)*" + p
    return z, x, y


def render_camera_move(image: str | Path, out: str | Path, *, width: int, height: int, fps: int,
                       seconds: float, move: str, speed: float = 1.0) -> None:
    """Animate a still into a ``seconds``-long H.264 clip of ``width``x``height`` at ``fps``.

    The first frame shows the whole image (so a continuous chunk starts on the exact frame it was
    given); the camera then pushes in by up to 14 % while panning/tilting per ``move``. The image
    is upscaled 4x before zoompan so sub-pixel motion does not jitter.
    """
    if move not in CAMERA_MOVES:
        raise ValueError(f"unknown camera move {move!r}; expected one of {CAMERA_MOVES}")
    frames = max(1, round(seconds * fps))
    z, x, y = _move_expressions(move, frames, speed)
    stream = (
        ffmpeg.input(str(image))
        .filter("scale", width * 4, height * 4, flags="lanczos")
        .filter("zoompan", z=z, x=x, y=y, d=frames, s=f"{width}x{height}", fps=fps)
        .filter("setsar", 1)
        .output(str(out), vframes=frames, r=fps, g=fps, **VIDEO_CODEC_ARGS)
    )
    run_ffmpeg(stream, what=f"render a {seconds:g} s {move} clip from {Path(image).name}")


def centre_crop(src: str | Path, dst: str | Path, aspect_ratio: str) -> MediaInfo:
    """Crop video ``src`` to the largest centred ``aspect_ratio`` ("W:H") frame it holds, both sides
    even (yuv420p), into ``dst``: every frame kept at the same rate (duration unchanged), encoded like
    the chunks the pipeline writes (VIDEO_CODEC_ARGS: H.264 CRF 18, no B-frames), audio copied if any.
    For a model that cannot make the requested ratio (832x480 16:9 -> 480x480 1:1). Returns ``dst``
    decoded (MediaInfo). Raises ValueError for a bad ratio, MediaError if ffmpeg fails."""
    w_r, sep, h_r = aspect_ratio.partition(":")
    if not (sep and w_r.isdigit() and h_r.isdigit() and int(w_r) > 0 and int(h_r) > 0):
        raise ValueError(f"not an aspect ratio 'W:H': {aspect_ratio!r}")
    info = probe(src, decode=False)
    if not info.width or not info.height or not info.fps:
        raise MediaError(f"{src}: no video stream to crop")
    scale = min(info.width / int(w_r), info.height / int(h_r))
    width, height = int(scale * int(w_r)) // 2 * 2, int(scale * int(h_r)) // 2 * 2
    source = ffmpeg.input(str(src))
    video = source.video.filter("crop", width, height, (info.width - width) // 2, (info.height - height) // 2)
    streams = [video.filter("setsar", 1)] + ([source.audio] if info.has_audio else [])
    fps = info.fps
    run_ffmpeg(ffmpeg.output(*streams, str(dst), r=fps, g=max(1, round(fps)), **VIDEO_CODEC_ARGS,
                             **({"c:a": "copy"} if info.has_audio else {})),
               what=f"centre-crop {Path(src).name} to {aspect_ratio} ({width}x{height})")
    return verify_video(dst)


def _decode_last(container, stream, *, seek: bool):
    """The last frame ``stream`` decodes to, after seeking to its last keyframe if ``seek``; None if none."""
    if seek:
        container.seek(2**62, backward=True, any_frame=False, stream=stream)  # the last keyframe
    last = None
    for last in container.decode(stream):
        pass
    return last


def extract_last_frame(video: str | Path, out_png: str | Path) -> None:
    """Write the exact last decoded frame of ``video`` (its first video stream) to ``out_png``
    (lossless PNG, RGB 8 bits a channel, the stream's sample aspect ratio in ``pHYs``).

    In process with PyAV: seek to the last keyframe and decode from there to the end (a whole
    pass only if the seek finds nothing), then encode that one frame with ffmpeg's PNG encoder.
    The pixels and bytes are those ``ffmpeg -i video -update 1 -c:v png`` writes for H.264, but
    without its process start and without PNG-encoding every frame it decodes (0.15 s instead of
    about 2 s for a 5 s 854x480 chunk on a loaded 2-core machine). Raises MediaError when the
    file cannot be opened or decoded or has no video frame."""
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise MediaError(f"{video}: no video stream to take a last frame from")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
            try:
                last = _decode_last(container, stream, seek=True)
            except av.FFmpegError:
                last = None
        if last is None:  # no index to seek by, or nothing decoded after the seek: one whole pass
            with av.open(str(video)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                last = _decode_last(container, stream, seek=False)
        if last is None:
            raise MediaError(f"{video}: no decodable video frame")
        rgb = last.reformat(format="rgb24")
        encoder = av.CodecContext.create("png", "w")
        encoder.width, encoder.height, encoder.pix_fmt = rgb.width, rgb.height, "rgb24"
        if sar:
            encoder.sample_aspect_ratio = sar
        data = b"".join(bytes(p) for p in encoder.encode(rgb)) + b"".join(bytes(p) for p in encoder.encode(None))
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"{video}: cannot extract the last frame: {exc}") from None
    if not data:
        raise MediaError(f"{video}: the PNG encoder wrote no last frame")
    Path(out_png).write_bytes(data)


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
