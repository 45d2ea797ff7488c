"""Decoding helpers for tests: frames as numpy arrays, PSNR, loudness."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np

from pipeline import media


def decode_frames(path: str | Path) -> list[np.ndarray]:
    """Every video frame of ``path`` as an RGB uint8 array (height, width, 3)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def first_frame(path: str | Path) -> np.ndarray:
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            return f.to_ndarray(format="rgb24")
    raise AssertionError(f"{path}: no frames")


def last_frame(path: str | Path) -> np.ndarray:
    last = None
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            last = f
    assert last is not None, f"{path}: no frames"
    return last.to_ndarray(format="rgb24")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def integrated_loudness(path: str | Path) -> float:
    """EBU R128 integrated loudness (LUFS) of ``path``'s audio, measured by ffmpeg's ebur128 filter."""
    log = media.run_ffmpeg(["-i", str(path), "-map", "0:a:0", "-af", "ebur128", "-f", "null", "-"],
                           what="measure loudness")
    summary = log[log.rfind("Summary:"):]
    return float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))
