"""Colour and brightness drift along a beat's chunk chain.

Continuous chunks start on the exact last frame of the chunk before (a lossless PNG, see
``pipeline.stages.extract_last_frame``), but each model call may still shift the picture's colour
or brightness a little, and over a long beat those shifts add up. ``beat_drift`` measures it: for
each chunk, the difference between the beat's first frame (chunk 0's first decoded frame) and
that chunk's last frame. The last chunk's value is the beat's drift.

What is compared is each frame's *mean colour*, not pixels one by one (the camera moves, so pixel
differences would measure motion): every value is "last minus first" of a frame statistic.

- ``delta_e``: CIE76 colour difference between the two frames' mean CIELAB colours (ΔE*ab;
  about 1 is a just noticeable difference, 2-10 is visible at a glance, 0 for identical frames).
  sRGB is converted to CIELAB with Pillow's ImageCms (littleCMS; D50 white point).
- ``delta_l``, ``delta_a``, ``delta_b``: the mean L* (lightness, 0-100), a* (green-red) and b*
  (blue-yellow) differences, CIELAB units (signed: ``delta_l`` > 0 got lighter).
- ``luma_delta``: mean luma difference, BT.601 Y' = 0.299 R + 0.587 G + 0.114 B in 8-bit code
  values (0-255; signed).
- ``rgb_mean_delta``: the largest absolute difference of the per-channel means (R, G or B), 8-bit
  code values; ``rgb_std_delta``: the largest absolute difference of the per-channel standard
  deviations (contrast), 8-bit code values.

Frames are decoded to 8-bit RGB with PyAV (the same conversion ``media.extract_last_frame`` uses
for the last frames), statistics computed with numpy. Nothing here imports Dagster.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageCms

from pipeline.media import MediaError

DRIFT_KEYS = ("delta_e", "delta_l", "delta_a", "delta_b", "luma_delta", "rgb_mean_delta", "rgb_std_delta")
"""The keys of a drift record (see the module doc for their units)."""

_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class FrameStats:
    """One frame's statistics: mean CIELAB ``lab`` (L* 0-100, a*, b*), mean BT.601 ``luma`` (0-255),
    per-channel ``rgb_mean`` and ``rgb_std`` (8-bit code values)."""

    lab: tuple[float, float, float]
    luma: float
    rgb_mean: tuple[float, float, float]
    rgb_std: tuple[float, float, float]


@functools.lru_cache(maxsize=1)
def _to_lab() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")


def frame_stats(rgb: np.ndarray) -> FrameStats:
    """Statistics of an 8-bit RGB frame (``height x width x 3`` uint8 array)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got shape {rgb.shape} {rgb.dtype}")
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    lab = np.asarray(ImageCms.applyTransform(Image.fromarray(rgb, "RGB"), _to_lab()))
    # Pillow's LAB: L* scaled to 0-255, a* and b* as signed 8-bit stored in unsigned bytes.
    lightness = lab[..., 0].astype(np.float64) * (100.0 / 255.0)
    ab = lab[..., 1:].view(np.int8).astype(np.float64)
    return FrameStats(
        lab=(float(lightness.mean()), float(ab[..., 0].mean()), float(ab[..., 1].mean())),
        luma=float((pixels @ _LUMA).mean()),
        rgb_mean=tuple(float(v) for v in pixels.mean(axis=0)),  # type: ignore[arg-type]
        rgb_std=tuple(float(v) for v in pixels.std(axis=0)),  # type: ignore[arg-type]
    )


def image_stats(path: str | Path) -> FrameStats:
    """Statistics of an image file (e.g. a stored last frame PNG). Raises MediaError if it does not decode."""
    try:
        with Image.open(path) as im:
            return frame_stats(np.asarray(im.convert("RGB")))
    except (OSError, ValueError) as exc:
        raise MediaError(f"{path}: cannot read the frame for drift: {exc}") from None


def first_frame_stats(video: str | Path) -> FrameStats:
    """Statistics of a video's first decoded frame (PyAV, 8-bit RGB). Raises MediaError."""
    try:
        with av.open(str(video)) as container:
            for frame in container.decode(video=0):
                return frame_stats(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"{video}: cannot decode the first frame for drift: {exc}") from None
    raise MediaError(f"{video}: no video frame to measure drift from")


@dataclass(frozen=True)
class Drift:
    """The drift from one frame to another (see the module doc for units): every field is "later
    minus earlier" except ``delta_e``, ``rgb_mean_delta`` and ``rgb_std_delta`` (magnitudes)."""

    delta_e: float
    delta_l: float
    delta_a: float
    delta_b: float
    luma_delta: float
    rgb_mean_delta: float
    rgb_std_delta: float

    def as_dict(self) -> dict[str, float]:
        """The fields rounded to 4 decimals, as a manifest stores them."""
        return {k: round(v, 4) for k, v in asdict(self).items()}


def drift(first: FrameStats, later: FrameStats) -> Drift:
    """The drift from ``first`` to ``later``."""
    d = np.subtract(later.lab, first.lab)
    return Drift(
        delta_e=float(np.sqrt((d ** 2).sum())), delta_l=float(d[0]), delta_a=float(d[1]), delta_b=float(d[2]),
        luma_delta=later.luma - first.luma,
        rgb_mean_delta=float(np.abs(np.subtract(later.rgb_mean, first.rgb_mean)).max()),
        rgb_std_delta=float(np.abs(np.subtract(later.rgb_std, first.rgb_std)).max()),
    )


def beat_drift(first_video: str | Path, last_frames: list[str | Path]) -> list[dict[str, float]]:
    """For each of a beat's chunks (``last_frames``: each chunk's last frame image, in order), the
    drift from the beat's first frame (the first frame of ``first_video``, chunk 0) to that chunk's
    last frame, as ``Drift.as_dict``. The last entry is the beat's drift. Raises MediaError."""
    start = first_frame_stats(first_video)
    return [drift(start, image_stats(p)).as_dict() for p in last_frames]
