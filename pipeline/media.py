"""Media operations: the one import path for them, and the frame edits a chunk needs (centre crop
to an aspect ratio the model cannot make, exact last-frame extraction).

The rest lives in sibling modules and is re-exported here, so ``media.conform`` etc. keep working:
``pipeline.media_base`` (the ffmpeg binary and runner, encoding settings, ``MediaError``, probing
and verifying by decoding), ``pipeline.media_camera`` (camera moves from a still) and
``pipeline.media_assembly`` (conforming chunks to the plan, stitching, finishing the music, muxing).
Callers that monkeypatch ``media.verify_video`` or ``media._decode_last`` reach the edits here.

ffmpeg commands are built with ffmpeg-python and run with the system ``ffmpeg`` when there is one,
else the binary shipped in the imageio-ffmpeg wheel. Probing and decoding use PyAV. Sizes in pixels.
Raises MediaError. Nothing here imports Dagster.
"""

from __future__ import annotations

from pathlib import Path

import av
import ffmpeg

from pipeline.media_assembly import (  # noqa: F401 (re-exported: they were defined here)
    StitchPiece,
    _video_encode_args,
    beat_frames,
    conform,
    encode_audio,
    encoder_signature,
    finish_music,
    frame_count,
    mux_copy,
    mux_final,
    stitch,
    video_packets,
)
from pipeline.media_base import (  # noqa: F401 (re-exported: they were defined here)
    AUDIO_CODEC_ARGS,
    AUDIO_SAMPLE_RATE,
    LOUDNESS_TARGET,
    VIDEO_CODEC_ARGS,
    MediaError,
    MediaInfo,
    ffmpeg_exe,
    probe,
    run_ffmpeg,
    verify_audio,
    verify_image,
    verify_stream_copy,
    verify_video,
)
from pipeline.media_camera import CAMERA_MOVES, camera_move_for, render_camera_move  # noqa: F401 (re-exported)


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

