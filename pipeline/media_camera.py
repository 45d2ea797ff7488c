"""Camera moves: animating a still image into a clip (ffmpeg ``zoompan``), and picking the move
from a beat's free-text ``motion``.

Sizes in pixels, times in seconds, rates in frames per second. Raises ValueError for an unknown
move and MediaError (``pipeline.media_base``) when ffmpeg fails. Re-exported by ``pipeline.media``.
Nothing here imports Dagster.
"""

from __future__ import annotations

import re
from pathlib import Path

import ffmpeg

from pipeline.media_base import VIDEO_CODEC_ARGS, run_ffmpeg

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
