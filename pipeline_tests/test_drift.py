"""Drift along a beat's chunk chain (issue 13): each chunk's colour/brightness drift from the beat's
first frame is measured (``pipeline.drift``) and reported in the chunk_videos manifest and metadata;
0 for a still, growing with an injected colour shift. Chained chunks start on the previous chunk's
exact last frame, passed as a lossless PNG."""

from __future__ import annotations

import math
from pathlib import Path

import av
import dagster as dg
import numpy as np
import pytest

from pipeline import media, stages
from pipeline.drift import DRIFT_KEYS, beat_drift
from pipeline.generation import GenerationRequest, Generator, ProviderResult
from pipeline.providers.local import LocalProvider
from pipeline.spec import parse_spec
from pipeline.store import Workspace
from pipeline.submissions import submit_spec
from pipeline_tests.conftest import write_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def encode(frames: list[np.ndarray], out: Path, fps: int = 24) -> Path:
    """``frames`` (HxWx3 uint8) as an H.264 MP4 (yuv420p, the pipeline's kind of chunk)."""
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))
    return out


def picture(seed: int = 3, size=(128, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(40, 200, (size[1] // 16, size[0] // 16, 3)), np.ones((16, 16, 1)))
    return base.astype(np.uint8)


def last_frame(video: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"{video.stem}-last.png"
    media.extract_last_frame(video, out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    return out


def test_a_still_does_not_drift_and_a_colour_shift_does(tmp_path):
    still = encode([picture()] * 24, tmp_path / "still.mp4")
    [d] = beat_drift(still, [last_frame(still, tmp_path)])
    assert set(d) == set(DRIFT_KEYS)
    # 0 up to the encoder's rounding (H.264 4:2:0 frames of one picture decode a hair apart): far below
    # a just noticeable difference (1 ΔE).
    assert d["delta_e"] < 0.5 and abs(d["luma_delta"]) < 0.5 and d["rgb_mean_delta"] < 1, d

    # The picture turns redder (R +46, G and B -23 code values) over a second: every measure sees it, with
    # the right sign; luma drops by 0.299 * 46 - 0.701 * 23 = -2.4 code values (less where channels clip).
    frames = []
    for i in range(24):
        f = picture().astype(np.int16)
        f[..., 0] += 2 * i
        f[..., 1:] -= i
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    shifted = encode(frames, tmp_path / "shift.mp4")
    [d] = beat_drift(shifted, [last_frame(shifted, tmp_path)])
    assert d["delta_e"] > 10 and d["delta_a"] > 5 and -3 < d["luma_delta"] < -1.5, d
    assert 40 <= d["rgb_mean_delta"] <= 50, d  # red +46 code values (8-bit)


class _Tinting(LocalProvider):
    """The local provider, but every chunk comes out tinted (a model whose colours drift)."""

    def render_chunk(self, request: GenerationRequest, start_image: Path, scratch: Path) -> ProviderResult:
        made = super().render_chunk(request, start_image, scratch)
        out = scratch / "tinted.mp4"
        media.run_ffmpeg(["-i", str(made.path), "-vf", "colorchannelmixer=rr=1:gg=0.9:bb=0.85", "-c:v", "libx264",
                          "-pix_fmt", "yuv420p", str(out)], what="tint")
        return ProviderResult(path=out, model="test/tinting")


class _Still(LocalProvider):
    """The local provider, but a chunk holds its start frame (no camera move)."""

    def render_chunk(self, request: GenerationRequest, start_image: Path, scratch: Path) -> ProviderResult:
        out = scratch / "still.mp4"
        media.run_ffmpeg(["-loop", "1", "-i", str(start_image), "-t", str(request.params["duration_s"]),
                          "-r", str(request.params["fps"]), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out)],
                         what="still")
        return ProviderResult(path=out, model="test/still")


def _chain(tmp_path: Path, provider: LocalProvider):
    work = Workspace(tmp_path / "data")
    spec = parse_spec({"video_id": "drift", "title": "t", "duration_s": 12, "aspect_ratio": "16:9", "style": "s",
                       "music": {"prompt": "m", "bpm": 90}, "beats": [{"prompt": "A red kite", "duration_s": 12}]})
    sub, _ = submit_spec(work, spec, source="test")
    plan = stages.plan_video(sub, provider)
    beat = stages.plan_beat(plan, plan.beats[0], provider)
    generator = Generator(work)
    board = stages.render_storyboard(beat, provider, generator)
    return stages.render_chunks(beat, board, provider, generator), generator


@pytest.mark.parametrize("provider, grows", [(_Still(), False), (_Tinting(), True)])
def test_drift_along_a_chain_is_in_each_chunk_and_the_beat(tmp_path, provider, grows):
    cv, generator = _chain(tmp_path, provider)
    assert len(cv.chunks) == 3
    for before, after in zip(cv.chunks, cv.chunks[1:]):  # chained on the exact last frame, a lossless PNG
        assert after.start_image_sha256 == before.last_frame.sha256
        assert generator.local_path(before.last_frame).read_bytes()[:8] == PNG_MAGIC
    drifts = [c.drift["delta_e"] for c in cv.chunks]
    assert cv.drift == cv.chunks[-1].drift and all(math.isfinite(v) and v >= 0 for v in drifts)
    if grows:  # chunk 0 is tinted as a whole (its first frame too); each chained call tints again
        assert drifts[0] < 2 and drifts[1] > drifts[0] + 3 and drifts[2] > drifts[1] + 3, drifts
        assert cv.drift["delta_b"] > 0 and cv.drift["luma_delta"] < 0, cv.drift  # bluer down, yellower b* up
    else:  # a held picture: only H.264 4:2:0 re-encoding of each start frame, ~0.4 ΔE per chained chunk
        assert drifts[0] < 0.2 and all(0 <= b - a < 0.6 for a, b in zip(drifts, drifts[1:])), drifts


def test_drift_is_in_chunk_videos_metadata(env, tmp_path):
    spec = write_spec(tmp_path / "one.yaml", video_id="one", aspect="16:9",
                      beats=[{"prompt": "A red kite rises over a green hill", "duration_s": 11}])
    report = env.render(spec)
    assert report.final is not None, [r.error for r in report.failed]
    [cv] = report.chunk_sets
    assert len(cv.chunks) == 3 and all(c.drift is not None for c in cv.chunks)
    [record] = env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("chunk_videos")), limit=1).records
    meta = record.asset_materialization.metadata
    assert meta["drift_delta_e"].value == pytest.approx(cv.drift["delta_e"])
    assert meta["drift_luma_delta"].value == pytest.approx(cv.drift["luma_delta"])
    assert meta["drift"].value["chunks"] == [c.drift for c in cv.chunks] and "CIELAB" in meta["drift"].value["units"]
    assert "drift_delta_e" in meta["chunk_table"].value
