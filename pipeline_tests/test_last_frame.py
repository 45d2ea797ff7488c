"""``media.extract_last_frame`` (in process, PyAV) writes the very PNG the ffmpeg command line
writes for the last frame, for the encodings a model may return: one GOP or many, B-frames, a
last frame that is or is not a keyframe, full range, 4:4:4, VP9 in WebM, a file without an
index to seek by."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import media
from pipeline_tests.media_helpers import numbered_frame, read_marker

FRAMES = 37  # the last frame (36) is a keyframe only with -g 12 / -g 36


def ffmpeg_last_frame(video, out) -> bytes:
    """The last frame as ``ffmpeg -i video -update 1 -c:v png`` writes it (every frame decoded)."""
    media.run_ffmpeg(["-i", str(video), "-map", "0:v:0", "-update", "1", "-c:v", "png", "-f", "image2", str(out)],
                     what="reference last frame")
    return out.read_bytes()


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("last-frame")
    for i in range(FRAMES):
        Image.fromarray(numbered_frame(192, 108, 3, i)).save(folder / f"{i:04d}.png")
    return folder


@pytest.mark.parametrize("name, args", [
    ("one_gop.mp4", ["-c:v", "libx264", "-g", "250", "-bf", "0", "-pix_fmt", "yuv420p"]),
    ("gop_10.mp4", ["-c:v", "libx264", "-g", "10", "-bf", "0", "-pix_fmt", "yuv420p"]),
    ("gop_12.mp4", ["-c:v", "libx264", "-g", "12", "-bf", "0", "-pix_fmt", "yuv420p"]),
    ("bframes.mp4", ["-c:v", "libx264", "-g", "16", "-bf", "3", "-pix_fmt", "yuv420p"]),
    ("open_gop.mp4", ["-c:v", "libx264", "-g", "8", "-bf", "2", "-x264-params", "open-gop=1", "-pix_fmt", "yuv420p"]),
    ("full_range.mp4", ["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuvj420p"]),
    ("yuv444.mp4", ["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv444p"]),
    ("bt709.mp4", ["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                   "-color_primaries", "bt709", "-color_trc", "bt709"]),
    ("vp9.webm", ["-c:v", "libvpx-vp9", "-g", "10", "-b:v", "300k", "-pix_fmt", "yuv420p"]),
    ("fragmented.mp4", ["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p",
                        "-movflags", "frag_keyframe+empty_moov"]),
    ("no_index.ts", ["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p", "-f", "mpegts"]),
])
def test_the_last_frame_is_the_png_ffmpeg_writes(frames_dir, tmp_path, name, args):
    video = tmp_path / name
    media.run_ffmpeg(["-framerate", "16", "-i", str(frames_dir / "%04d.png"), *args, str(video)],
                     what=f"encode {name}")
    out = tmp_path / "last.png"
    media.extract_last_frame(video, out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (192, 108)
        assert read_marker(np.asarray(im)) == (3, FRAMES - 1)
    assert out.read_bytes() == ffmpeg_last_frame(video, tmp_path / "reference.png")


def test_a_video_without_video_is_a_media_error(tmp_path):
    wav = tmp_path / "tone.wav"
    media.run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", str(wav)], what="tone")
    with pytest.raises(media.MediaError, match="no video stream"):
        media.extract_last_frame(wav, tmp_path / "x.png")


def test_when_the_seek_finds_nothing_the_whole_video_is_decoded(frames_dir, tmp_path, monkeypatch):
    video = tmp_path / "clip.mp4"
    media.run_ffmpeg(["-framerate", "16", "-i", str(frames_dir / "%04d.png"), "-c:v", "libx264", "-g", "10",
                      "-pix_fmt", "yuv420p", str(video)], what="encode clip")
    real, passes = media._decode_last, []

    def seek_finds_nothing(container, stream, *, seek):
        passes.append(seek)
        return None if seek else real(container, stream, seek=False)

    monkeypatch.setattr(media, "_decode_last", seek_finds_nothing)
    media.extract_last_frame(video, tmp_path / "last.png")
    assert passes == [True, False]
    assert (tmp_path / "last.png").read_bytes() == ffmpeg_last_frame(video, tmp_path / "reference.png")
