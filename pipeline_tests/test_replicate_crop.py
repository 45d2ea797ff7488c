"""A 1:1 spec on Wan (which generates 16:9 or 9:16 only): chunks are generated at 16:9 and
centre-cropped to square, the chunk metadata says ``cropped_from: "16:9"``, and each next chunk starts
from the previous one's last frame padded, centred, to 16:9 (so the crop continues from it exactly)."""

from __future__ import annotations

import base64
import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import media, stages
from pipeline.generation import Generator
from pipeline.providers import get_provider
from pipeline.spec import parse_spec
from pipeline.store import Workspace
from pipeline.submissions import load_submission, submit_spec
from pipeline_tests.fake_replicate import FakeReplicate, provider_options

WAN = "wan-video/wan-2.2-i2v-fast"


def _image(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def _square_beat_on_wan(tmp_path, before_chunks=lambda: None):
    """Render the chunks of one 9 s square beat on Wan (fake server). ``before_chunks`` runs after the
    storyboard. Returns (generator, chunk manifests, the Wan inputs the server received)."""
    ws = Workspace.at(tmp_path / "data")
    spec = {"video_id": "sq", "title": "Square", "duration_s": 9, "aspect_ratio": "1:1", "style": "ink wash",
            "music": {"prompt": "calm", "bpm": 70},
            "beats": [{"prompt": "a heron lifts off a misty lake", "duration_s": 9, "motion": "slow tilt up"}]}
    submit_spec(ws, parse_spec(spec), source="test", provider="replicate")
    with FakeReplicate(run_seconds=0.02, render_scale=0.25) as server:
        provider = get_provider("replicate", **provider_options(server, ws.root))
        gen = Generator(ws)
        plan = stages.plan_video(load_submission(ws, "sq"), provider)
        beat = stages.plan_beat(plan, plan.beats[0], provider)
        storyboard = stages.render_storyboard(beat, provider, gen)
        before_chunks()
        chunks = stages.render_chunks(beat, storyboard, provider, gen).chunks
        return gen, chunks, server.inputs(WAN)


def test_a_square_spec_on_wan_gives_square_chunks_cropped_from_16_9(tmp_path):
    gen, chunks, inputs = _square_beat_on_wan(tmp_path)
    assert len(chunks) >= 2 and len(inputs) == len(chunks)
    for chunk, inp in zip(chunks, inputs):
        info = media.verify_video(gen.local_path(chunk.video))
        assert info.width == info.height  # square, measured by decoding
        assert chunk.video.extra["cropped_from"] == "16:9"
        assert inp["aspect_ratio"] == "16:9"
        start = _image(inp["image"])
        assert abs(start.width / start.height - 16 / 9) < 0.01  # sent at the ratio the model generates
    # Chaining: chunk 2 starts from chunk 1's (square) last frame, whole, in the middle of the 16:9 frame.
    last = Image.open(gen.local_path(chunks[0].last_frame)).convert("RGB")
    sent = _image(inputs[1]["image"])
    left = (sent.width - last.width) // 2
    middle = sent.crop((left, (sent.height - last.height) // 2, left + last.width,
                        (sent.height - last.height) // 2 + last.height))
    assert np.array_equal(np.asarray(middle), np.asarray(last))


def test_each_replicate_chunk_is_decoded_once_not_again_by_the_generator(tmp_path, monkeypatch):
    """The download check decodes the model's output and the crop decodes its own result; the Generator
    reuses that result (ProviderResult.verified) instead of decoding the stored file a third time."""
    decoded: list[str] = []
    real = media.verify_video

    def counting(path, *args, **kwargs):
        decoded.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(media, "verify_video", counting)
    _gen, chunks, _inputs = _square_beat_on_wan(tmp_path, before_chunks=decoded.clear)
    # each file once: the download, its crop, and the clip conformed from it (a re-encode, checked by decoding)
    assert len(chunks) >= 2
    assert Counter(decoded) == {"output.mp4": len(chunks), "cropped.mp4": len(chunks),
                                "conformed.mp4": len(chunks)}, decoded
