"""Helpers for the domain media tests: decoding with PyAV, PSNR, frame-numbered test clips, loudness."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
from PIL import Image

from pipeline import media

PIECE_COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]
"""Colour of the left quarter of a numbered clip's frames, one per piece id."""

MARKER_BITS = 6


def decode_frames(path: str | Path) -> list[np.ndarray]:
    """Every decoded video frame of ``path`` as an RGB uint8 array (height, width, 3)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio stream of ``path`` as mono float samples, and its sample rate (Hz)."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        chunks = [f.to_ndarray().astype(np.float64) for f in c.decode(stream)]
        rate = stream.sample_rate
    samples = np.concatenate(chunks, axis=1)
    return samples.mean(axis=0), rate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of the same shape (inf when identical)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def sample_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a few coloured blocks: structure a camera move visibly changes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 / width, y * 255 / height, (x + y) * 255 / (width + height)], -1)
    img = img.astype(np.uint8)
    for _ in range(4):
        w, h = int(width * 0.2), int(height * 0.25)
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    return img




def save_png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def numbered_frame(width: int, height: int, piece: int, index: int) -> np.ndarray:
    """A frame saying which piece (left quarter's colour) and which frame (binary bars) it is."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 4] = PIECE_COLOURS[piece]
    bar = (width - width // 4) // MARKER_BITS
    for b in range(MARKER_BITS):
        if (index >> b) & 1:
            a[:, width // 4 + b * bar: width // 4 + (b + 1) * bar] = 255
    return a


def read_marker(frame: np.ndarray) -> tuple[int, int]:
    """(piece, frame index) of a decoded ``numbered_frame`` (after compression or scaling)."""
    height, width = frame.shape[:2]
    colour = frame[:, : width // 4].reshape(-1, 3).mean(axis=0)
    piece = int(np.argmin([np.abs(colour - np.array(c)).sum() for c in PIECE_COLOURS]))
    bar = (width - width // 4) // MARKER_BITS
    index = 0
    for b in range(MARKER_BITS):
        x0 = width // 4 + b * bar
        if frame[:, x0 + 2: x0 + bar - 2].mean() > 128:
            index |= 1 << b
    return piece, index


def numbered_clip(path: Path, frames: int, piece: int, *, width: int = 160, height: int = 90,
                  fps: int = 24) -> Path:
    """Encode ``frames`` numbered frames with the pipeline's own H.264 settings (no B-frames, square
    pixels): the SPS/PPS of ``media.encoder_signature`` at that size and fps."""
    folder = path.with_name(path.stem + "-frames")
    folder.mkdir(exist_ok=True)
    for i in range(frames):
        Image.fromarray(numbered_frame(width, height, piece, i)).save(folder / f"{i:04d}.png")
    codec = media.VIDEO_CODEC_ARGS
    media.run_ffmpeg(["-framerate", str(fps), "-i", str(folder / "%04d.png"), "-vf", "setsar=1",
                      "-c:v", codec["c:v"], "-preset", codec["preset"], "-crf", str(codec["crf"]),
                      "-bf", str(codec["bf"]), "-pix_fmt", codec["pix_fmt"], "-g", str(fps), "-r", str(fps),
                      str(path)], what=f"encode test clip {path.name}")
    return path


def integrated_loudness(path: str | Path) -> float:
    """Integrated loudness (LUFS) of ``path``'s audio, from the summary of ffmpeg's ebur128 filter."""
    log = media.run_ffmpeg(["-i", str(path), "-af", "ebur128", "-f", "null", "-"], what="measure loudness")
    summary = log[log.rindex("Summary:"):]
    match = re.search(r"^\s*I:\s*(-?[\d.]+|-inf)\s*LUFS", summary, re.M)
    assert match, f"no integrated loudness in ffmpeg's ebur128 summary:\n{summary}"
    return float(match.group(1))
