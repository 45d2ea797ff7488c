"""Subtitles in the video file: a soft ``mov_text`` track muxed beside stream-copied video and
audio, or captions burned into the picture (one re-encode, only when a spec asks for it). Media
operations only; the subtitle text is ``pipeline.subtitles``'.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline import media

CAPTION_STYLE = ("FontName=DejaVu Sans,FontSize=16,PrimaryColour=&H00FFFFFF,OutlineColour=&H80000000,"
                 "BorderStyle=1,Outline=1.5,Shadow=0,MarginV=28")
"""libass style of burned-in captions: white DejaVu Sans with a dark outline, near the bottom."""


def mux_copy_subtitled(video: str | Path, audio: str | Path, subtitles: str | Path | None, out: str | Path) -> None:
    """Mux ``video``'s video stream and ``audio``'s audio stream by stream copy into ``out`` (MP4,
    +faststart), with ``subtitles`` (a WebVTT file; None: none) as a ``mov_text`` track (language
    und, title "Narration"). WebVTT is the input because its character references round-trip: the
    track holds the narration's literal text. Raises media.MediaError."""
    args = ["-i", str(video), "-i", str(audio)]
    maps = ["-map", "0:v:0", "-map", "1:a:0"]
    if subtitles is not None:
        args += ["-i", str(subtitles)]
        maps += ["-map", "2:s:0", "-c:s", "mov_text", "-metadata:s:s:0", "title=Narration"]
    media.run_ffmpeg([*args, *maps, "-c:v", "copy", "-c:a", "copy", "-movflags", "+faststart", str(out)],
                     what="mux the final video by stream copy" + (" with a subtitle track" if subtitles else ""))


def burn_captions(video: str | Path, subtitles: str | Path, out: str | Path, *, fps: int, workdir: str | Path) -> None:
    """Re-encode ``video`` into ``out`` with ``subtitles`` (SRT or WebVTT) drawn into every frame
    (libass, CAPTION_STYLE), encoded like every video here (``media.VIDEO_CODEC_ARGS`` at ``fps``),
    no audio. The file is copied into ``workdir`` under a plain name first, so no user text or
    path reaches the filter graph. Raises media.MediaError."""
    plain = Path(workdir) / f"captions{Path(subtitles).suffix or '.srt'}"
    shutil.copyfile(subtitles, plain)
    args = ["-r", str(fps), "-g", str(fps)]
    for key, value in media.VIDEO_CODEC_ARGS.items():
        args += [f"-{key}", str(value)]
    media.run_ffmpeg(["-i", str(Path(video).resolve()), "-map", "0:v:0", "-vf",
                      f"subtitles=filename={plain.name}:force_style='{CAPTION_STYLE}'", *args, str(Path(out).resolve())],
                     what="burn the captions into the video", cwd=workdir)
