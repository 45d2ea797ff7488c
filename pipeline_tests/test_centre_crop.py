"""``media.centre_crop``: a model's output at a ratio it can make (Wan: 16:9 / 9:16) cropped to the
request's (1:1), decoded and measured: exact even size, every frame at the same rate, the centre
of each source frame (PSNR against the same crop of the decoded source), audio kept."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import media
from pipeline_tests.media_helpers import decode_audio, decode_frames, psnr, sample_image, save_png


def _source(tmp_path, width: int, height: int, frames: int, fps: int, *, audio: bool = False):
    """A ``width``x``height`` clip of ``frames`` frames at ``fps``: a still gradient with coloured blocks
    (edges that show any offset), plus a 440 Hz tone when ``audio``."""
    still = save_png(sample_image(width, height, seed=3), tmp_path / "still.png")
    out = tmp_path / f"src-{width}x{height}.mp4"
    args = ["-loop", "1", "-framerate", str(fps), "-i", str(still)]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    args += ["-frames:v", str(frames), "-c:v", "libx264", "-crf", "12", "-bf", "0", "-pix_fmt", "yuv420p",
             "-r", str(fps)]
    if audio:
        args += ["-c:a", "aac", "-t", f"{frames / fps:.6f}"]
    media.run_ffmpeg(args + [str(out)], what="encode a test source")
    return out


@pytest.mark.parametrize("size, ratio, cropped", [
    ((832, 480), "1:1", (480, 480)),     # Wan 480p 16:9 -> a square spec
    ((480, 832), "1:1", (480, 480)),     # Wan 480p 9:16 -> a square spec
    ((1280, 720), "9:16", (404, 720)),   # 405 x 720 rounded down to even
    ((848, 480), "4:3", (640, 480)),
])
def test_centre_crop_keeps_the_centre_every_frame_and_the_duration(tmp_path, size, ratio, cropped):
    width, height = size
    src = _source(tmp_path, width, height, frames=81, fps=16)
    dst = tmp_path / "cropped.mp4"
    info = media.centre_crop(src, dst, ratio)
    assert (info.width, info.height) == cropped and info.width % 2 == 0 and info.height % 2 == 0
    assert info.frames == 81 and info.fps == pytest.approx(16) and info.duration_s == pytest.approx(81 / 16)
    assert info.video_codec == "h264" and info.pix_fmt == "yuv420p" and not info.has_b_frames  # like the chunks
    source, out = decode_frames(src), decode_frames(dst)
    assert len(out) == 81
    x0, y0 = (width - cropped[0]) // 2, (height - cropped[1]) // 2
    for i in (0, 40, 80):
        centre = source[i][y0:y0 + cropped[1], x0:x0 + cropped[0]]
        assert psnr(out[i], centre) > 38, f"frame {i} is not the source's centre"
    # 8 pixels off centre is measurably worse: the crop is centred, not merely the right size.
    shifted = source[40][y0:y0 + cropped[1], x0 + 8:x0 + 8 + cropped[0]] if x0 >= 8 else \
        source[40][y0 + 8:y0 + 8 + cropped[1], x0:x0 + cropped[0]]
    assert psnr(out[40], shifted) < psnr(out[40], source[40][y0:y0 + cropped[1], x0:x0 + cropped[0]]) - 5


def test_centre_crop_copies_the_audio_and_refuses_a_bad_ratio(tmp_path):
    src = _source(tmp_path, 832, 480, frames=32, fps=16, audio=True)
    info = media.centre_crop(src, tmp_path / "cropped.mp4", "1:1")
    assert (info.width, info.height, info.frames) == (480, 480, 32) and info.audio_codec == "aac"
    samples, rate = decode_audio(tmp_path / "cropped.mp4")
    assert rate == 48000 and len(samples) / rate == pytest.approx(2.0, abs=0.05) and np.abs(samples).max() > 0.1
    with pytest.raises(ValueError, match="not an aspect ratio"):
        media.centre_crop(src, tmp_path / "x.mp4", "square")
