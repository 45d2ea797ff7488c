"""ffmpeg operations (pipeline.media), music synthesis, the media store and the Generator.

Everything is decoded and checked: first/last frames by PSNR, stitch boundaries by frame markers,
loudness with ffmpeg's ebur128 filter. Media are tiny (160x90, 24 fps, 1-2 s) to stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import media
from pipeline.generation import GenerationRequest, Generator, ProviderResult, read_call_log
from pipeline.providers.local import SAMPLE_RATE, LocalProvider, synthesize_music
from pipeline.store import LocalMediaStore, Workspace, sha256_file
from pipeline_tests.media_helpers import (
    decode_audio,
    decode_frames,
    integrated_loudness,
    numbered_clip,
    psnr,
    read_marker,
    rms,
    save_png,
    sample_image,
)

W, H, FPS = 160, 90, 24


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def still(media_dir) -> tuple[Path, np.ndarray]:
    array = sample_image(W, H)
    return save_png(array, media_dir / "still.png"), array


@pytest.fixture(scope="module")
def moves(media_dir, still) -> dict[str, Path]:
    """A 1 s clip of every camera move over the same still."""
    out = {}
    for move in media.CAMERA_MOVES:
        path = media_dir / f"{move}.mp4"
        media.render_camera_move(still[0], path, width=W, height=H, fps=FPS, seconds=1, move=move)
        out[move] = path
    return out


@pytest.fixture(scope="module")
def clips(media_dir) -> dict[str, Path]:
    """Frame-numbered clips (piece id in colour, frame index in binary bars)."""
    return {
        "a": numbered_clip(media_dir / "a.mp4", 24, 0),
        "b": numbered_clip(media_dir / "b.mp4", 24, 1),
        "c": numbered_clip(media_dir / "c.mp4", 12, 2),
        "big": numbered_clip(media_dir / "big.mp4", 24, 3, width=2 * W, height=2 * H),
        "f30": numbered_clip(media_dir / "f30.mp4", 30, 3, fps=30),
    }


def expected_view(image: np.ndarray, move: str, speed: float = 1.0) -> np.ndarray:
    """What the camera should see on the last frame of ``move``: the zoomed crop, resized to the frame."""
    height, width = image.shape[:2]
    zoom = 1 + (0.04 if move == "drift" else 0.14) * speed
    cw, ch = width / zoom, height / zoom
    x = {"pan_right": width - cw, "pan_left": 0.0}.get(move, (width - cw) / 2)
    y = {"tilt_down": height - ch, "tilt_up": 0.0}.get(move, (height - ch) / 2)
    crop = Image.fromarray(image).resize((width, height), Image.LANCZOS, box=(x, y, x + cw, y + ch))
    return np.asarray(crop)


# --- camera moves --------------------------------------------------------------------------------

@pytest.mark.parametrize("move", media.CAMERA_MOVES)
def test_camera_move_starts_on_the_input_image(moves, still, move):
    frames = decode_frames(moves[move])
    assert len(frames) == FPS
    assert frames[0].shape == (H, W, 3)
    assert psnr(frames[0], still[1]) > 30
    info = media.probe(moves[move])
    assert (info.width, info.height, info.fps, info.frames) == (W, H, FPS, FPS)
    assert (info.video_codec, info.pix_fmt, info.has_b_frames) == ("h264", "yuv420p", False)
    assert info.duration_s == pytest.approx(1.0)


@pytest.mark.parametrize("move", media.CAMERA_MOVES)
def test_camera_move_ends_on_its_own_view(moves, still, move):
    last = decode_frames(moves[move])[-1]
    scores = {m: psnr(last, expected_view(still[1], m)) for m in media.CAMERA_MOVES}
    assert scores[move] > 22, scores
    assert all(scores[move] > s + 5 for m, s in scores.items() if m != move), scores
    assert psnr(last, still[1]) < scores[move]  # the camera moved


@pytest.mark.parametrize("seconds", [0.5, 1.5, 1.02, 0.99])
def test_camera_move_frame_count_is_seconds_times_fps(media_dir, still, seconds):
    out = media_dir / f"len-{seconds}.mp4"
    media.render_camera_move(still[0], out, width=W, height=H, fps=FPS, seconds=seconds, move="pan_left")
    frames = decode_frames(out)
    assert len(frames) == round(seconds * FPS)
    assert psnr(frames[0], still[1]) > 30


def test_camera_move_resizes_the_input_to_the_output_size(media_dir, still):
    out = media_dir / "small.mp4"
    media.render_camera_move(still[0], out, width=80, height=46, fps=12, seconds=1, move="drift")
    frames = decode_frames(out)
    assert len(frames) == 12 and frames[0].shape == (46, 80, 3)
    reference = np.asarray(Image.fromarray(still[1]).resize((80, 46), Image.LANCZOS))
    assert psnr(frames[0], reference) > 27


def test_slower_speed_moves_less(media_dir, still):
    out = media_dir / "slow-push.mp4"
    media.render_camera_move(still[0], out, width=W, height=H, fps=FPS, seconds=1, move="push_in", speed=0.5)
    last = decode_frames(out)[-1]
    assert psnr(last, expected_view(still[1], "push_in", speed=0.5)) > \
        psnr(last, expected_view(still[1], "push_in", speed=1.0)) + 3


def test_unknown_camera_move_is_refused(media_dir, still):
    with pytest.raises(ValueError, match="unknown camera move"):
        media.render_camera_move(still[0], media_dir / "x.mp4", width=W, height=H, fps=FPS, seconds=1,
                                 move="barrel_roll")


def test_ffmpeg_failure_is_a_media_error_naming_the_step(media_dir):
    with pytest.raises(media.MediaError, match="render a 1 s drift clip from missing.png"):
        media.render_camera_move(media_dir / "missing.png", media_dir / "x.mp4", width=W, height=H, fps=FPS,
                                 seconds=1, move="drift")


@pytest.mark.parametrize("motion, move", [
    ("slow push-in on the tortoise", "push_in"),
    ("fast tracking shot following the hare", "pan_right"),
    ("slow lateral pan", "pan_right"),
    ("gentle lateral pan", "pan_right"),
    ("lateral pan left", "pan_left"),
    ("tracking left along the river", "pan_left"),
    ("tilt down", "tilt_down"),
    ("slow tilt down to the road", "tilt_down"),
    ("slow tilt up", "tilt_up"),
    ("crane up over the rooftops", "tilt_up"),
    ("zoom in", "push_in"),
    ("Slow Push-In", "push_in"),
    ("gentle drift", "drift"),
    ("static", "drift"),
    ("", "drift"),
    (None, "drift"),
])
def test_camera_move_for_motion_text(motion, move):
    assert media.camera_move_for(motion) == move
    assert move in media.CAMERA_MOVES


# --- last frame ----------------------------------------------------------------------------------

@pytest.mark.parametrize("move", ["push_in", "pan_right"])
def test_extract_last_frame_is_the_last_decoded_frame(moves, media_dir, move):
    out = media_dir / f"last-{move}.png"
    media.extract_last_frame(moves[move], out)
    png = np.asarray(Image.open(out).convert("RGB"))
    frames = decode_frames(moves[move])
    assert png.shape == (H, W, 3)
    assert psnr(png, frames[-1]) > 40
    assert psnr(png, frames[-1]) > psnr(png, frames[-2]) + 3


@pytest.mark.parametrize("frames", [5, 24, 60])
def test_extract_last_frame_by_marker(media_dir, frames):
    clip = numbered_clip(media_dir / f"n{frames}.mp4", frames, 1)
    out = media_dir / f"n{frames}-last.png"
    media.extract_last_frame(clip, out)
    assert read_marker(np.asarray(Image.open(out).convert("RGB"))) == (1, frames - 1)


def test_extract_last_frame_of_a_broken_file_is_a_media_error(media_dir):
    bad = media_dir / "broken.mp4"
    bad.write_bytes(os.urandom(3000))
    with pytest.raises(media.MediaError):
        media.extract_last_frame(bad, media_dir / "broken.png")


# --- stitching -----------------------------------------------------------------------------------

def markers(path: Path) -> list[tuple[int, int]]:
    return [read_marker(f) for f in decode_frames(path)]


def test_numbered_clips_read_back(clips):
    assert markers(clips["a"]) == [(0, i) for i in range(24)]
    assert markers(clips["big"]) == [(3, i) for i in range(24)]


def test_stitch_compatible_pieces_by_stream_copy_with_exact_boundaries(clips, media_dir):
    P = media.StitchPiece
    pieces = [P(clips["a"], 10), P(clips["b"], 24), P(clips["c"], 7)]
    out = media_dir / "stitch-copy.mp4"
    method = media.stitch(pieces, out, width=W, height=H, fps=FPS, workdir=media_dir)
    assert method == "stream_copy"
    got = markers(out)
    assert len(got) == 41
    assert got == [(0, i) for i in range(10)] + [(1, i) for i in range(24)] + [(2, i) for i in range(7)]
    info = media.probe(out)
    assert (info.width, info.height, info.fps, info.frames, info.video_codec) == (W, H, FPS, 41, "h264")
    assert not info.has_audio


def test_stream_copy_keeps_frames_bit_exact(clips, media_dir):
    out = media_dir / "stitch-exact.mp4"
    media.stitch([media.StitchPiece(clips["b"], 5), media.StitchPiece(clips["a"], 3)], out,
                 width=W, height=H, fps=FPS, workdir=media_dir)
    frames, b, a = decode_frames(out), decode_frames(clips["b"]), decode_frames(clips["a"])
    assert len(frames) == 8
    assert all(np.array_equal(frames[i], b[i]) for i in range(5))
    assert all(np.array_equal(frames[5 + i], a[i]) for i in range(3))


def test_stitch_single_piece(clips, media_dir):
    out = media_dir / "stitch-one.mp4"
    assert media.stitch([media.StitchPiece(clips["a"], 17)], out, width=W, height=H, fps=FPS,
                        workdir=media_dir) == "stream_copy"
    assert markers(out) == [(0, i) for i in range(17)]


def test_stitch_a_different_size_reencodes_to_the_output_size(clips, media_dir):
    P = media.StitchPiece
    out = media_dir / "stitch-size.mp4"
    method = media.stitch([P(clips["a"], 10), P(clips["big"], 13), P(clips["c"], 7)], out,
                          width=W, height=H, fps=FPS, workdir=media_dir)
    assert method == "reencode"
    frames = decode_frames(out)
    assert len(frames) == 30 and frames[0].shape == (H, W, 3)
    assert [read_marker(f) for f in frames] == \
        [(0, i) for i in range(10)] + [(3, i) for i in range(13)] + [(2, i) for i in range(7)]
    info = media.probe(out)
    assert (info.width, info.height, info.fps, info.video_codec, info.has_b_frames) == (W, H, FPS, "h264", False)


def test_stitch_a_different_fps_reencodes_at_the_output_fps(clips, media_dir):
    P = media.StitchPiece
    out = media_dir / "stitch-fps.mp4"
    method = media.stitch([P(clips["a"], 10), P(clips["f30"], 13), P(clips["c"], 7)], out,
                          width=W, height=H, fps=FPS, workdir=media_dir)
    assert method == "reencode"
    got = markers(out)
    assert len(got) == 30
    assert got[:10] == [(0, i) for i in range(10)]
    assert got[23:] == [(2, i) for i in range(7)]
    middle = got[10:23]
    assert all(piece == 3 for piece, _ in middle)
    # 30 fps resampled to 24 fps: starts on source frame 0 and moves at 30/24 source frames per frame.
    assert middle[0][1] == 0
    assert [i for _, i in middle] == sorted({i for _, i in middle})
    assert abs(middle[-1][1] - 12 * 30 / 24) <= 1
    assert media.probe(out).fps == FPS


@pytest.mark.parametrize("other", ["c", "big"])  # stream-copy and re-encode paths
@pytest.mark.parametrize("extra", [1, 5])
def test_stitch_refuses_a_piece_shorter_than_it_must_keep(clips, media_dir, other, extra):
    available = len(decode_frames(clips[other]))
    out = media_dir / f"stitch-short-{other}-{extra}.mp4"
    with pytest.raises(media.MediaError, match="gap in the stitch") as info:
        media.stitch([media.StitchPiece(clips["a"], 10), media.StitchPiece(clips[other], available + extra)], out,
                     width=W, height=H, fps=FPS, workdir=media_dir)
    assert str(clips[other]) in str(info.value)
    assert not out.exists()


# --- music and the final mux ---------------------------------------------------------------------

def test_synthesize_music_shape_peak_and_determinism():
    a = synthesize_music("upbeat ukulele", bpm=120, duration_s=2.5, seed=3)
    assert a.dtype == np.float32
    assert a.shape == (round(2.5 * SAMPLE_RATE),)
    assert np.max(np.abs(a)) <= 0.8 + 1e-6
    assert np.max(np.abs(a)) == pytest.approx(0.8, abs=1e-3)
    assert rms(a) > 0.05
    assert np.array_equal(a, synthesize_music("upbeat ukulele", bpm=120, duration_s=2.5, seed=3))
    assert not np.allclose(a, synthesize_music("calm ambient piano", bpm=120, duration_s=2.5, seed=3))
    assert not np.allclose(a, synthesize_music("upbeat ukulele", bpm=120, duration_s=2.5, seed=4))


@pytest.mark.parametrize("duration", [0.5, 1.0, 3.7])
def test_synthesize_music_length(duration):
    samples = synthesize_music("calm piano", bpm=80, duration_s=duration)
    assert samples.shape == (round(duration * SAMPLE_RATE),)
    assert np.isfinite(samples).all()


@pytest.fixture(scope="module")
def music(media_dir) -> Path:
    request = GenerationRequest(media_type="audio", provider="local", model="local/synth-v1", prompt="upbeat synth",
                                seed=1, params={"bpm": 120, "duration_s": 3})
    folder = media_dir / "music"
    folder.mkdir()
    return LocalProvider().render_music(request, folder).path


def test_local_music_is_aac_of_the_asked_length(music):
    info = media.verify_audio(music)
    assert info.audio_codec == "aac" and info.sample_rate == SAMPLE_RATE
    assert info.audio_duration_s == pytest.approx(3.0, abs=0.05)


@pytest.fixture(scope="module")
def stitched(media_dir, still) -> Path:
    path = media_dir / "two-seconds.mp4"
    media.render_camera_move(still[0], path, width=W, height=H, fps=FPS, seconds=2, move="drift")
    return path


@pytest.fixture(scope="module")
def final(media_dir, stitched, music) -> tuple[Path, dict]:
    out = media_dir / "final.mp4"
    return out, media.mux_final(stitched, music, out, duration_s=2.0)


def test_mux_final_has_video_of_the_duration(final, stitched):
    out, _ = final
    info = media.probe(out)
    assert abs(info.duration_s - 2.0) <= 1 / FPS
    assert info.frames == 48 and (info.width, info.height) == (W, H)
    # The video is stream-copied: frames are bit-identical to the stitched video's.
    assert all(np.array_equal(x, y) for x, y in zip(decode_frames(out), decode_frames(stitched)))


def test_mux_final_has_aac_audio_of_the_same_duration(final):
    out, _ = final
    info = media.probe(out)
    assert info.audio_codec == "aac"
    assert info.audio_duration_s == pytest.approx(2.0, abs=0.05)
    assert info.audio_duration_s == pytest.approx(info.duration_s, abs=0.05)


def test_mux_final_is_normalised_to_minus_16_lufs(final):
    out, measured = final
    assert integrated_loudness(out) == pytest.approx(media.LOUDNESS_TARGET["I"], abs=1.5)
    assert "input_i" in measured and float(measured["input_i"]) > -70


def test_mux_final_fades_the_music_out(final):
    out, _ = final
    samples, rate = decode_audio(out)
    middle = rms(samples[int(0.4 * rate):int(1.2 * rate)])
    tail = rms(samples[-int(0.2 * rate):])
    assert middle > 0.02
    assert tail < 0.3 * middle, (tail, middle)


def test_mux_final_pads_music_shorter_than_the_video(media_dir, stitched):
    short = media_dir / "short.m4a"
    wav = media_dir / "short.wav"
    import wave

    samples = synthesize_music("upbeat", bpm=120, duration_s=1.0)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    media.encode_audio(wav, short)
    out = media_dir / "final-padded.mp4"
    media.mux_final(stitched, short, out, duration_s=1.5)
    info = media.probe(out)
    assert abs(info.duration_s - 1.5) <= 1 / FPS
    assert info.audio_duration_s == pytest.approx(1.5, abs=0.05)
    assert integrated_loudness(out) == pytest.approx(-16, abs=1.5)
    tail, rate = decode_audio(out)
    assert rms(tail[-int(0.3 * rate):]) < 1e-3  # padded with silence after the 1 s of music


# --- LocalMediaStore -----------------------------------------------------------------------------

def test_store_put_is_content_addressed_and_consumes_the_source(tmp_path):
    store = LocalMediaStore(tmp_path / "media")
    src = tmp_path / "x.bin"
    src.write_bytes(b"hello media")
    uri, sha, size = store.put(src)
    assert sha == hashlib.sha256(b"hello media").hexdigest() and size == 11
    dest = tmp_path / "media" / sha[:2] / f"{sha}.bin"
    assert uri == dest.as_uri()
    assert dest.read_bytes() == b"hello media"
    assert not src.exists()
    assert store.local_path(uri) == dest
    assert store.has(uri, sha, size) and not store.has(uri, sha, size + 1)


def test_store_put_is_idempotent(tmp_path):
    store = LocalMediaStore(tmp_path / "media")
    results = []
    for name in ("one.png", "two.png"):
        src = tmp_path / name
        src.write_bytes(b"same bytes")
        results.append(store.put(src))
        assert not src.exists()
    assert results[0] == results[1]
    assert [p for p in (tmp_path / "media").rglob("*") if p.is_file()] == [store.local_path(results[0][0])]


def test_store_different_bytes_and_extensions(tmp_path):
    store = LocalMediaStore(tmp_path / "media")
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"aaa")
    b.write_bytes(b"bbb")
    ua, ub = store.put(a)[0], store.put(b, ext=".m4a")[0]
    assert ua != ub and ua.endswith(".mp4") and ub.endswith(".m4a")
    with pytest.raises(FileNotFoundError):
        store.local_path((tmp_path / "media" / "zz" / "nothing.mp4").as_uri())
    with pytest.raises(ValueError):
        store.local_path("s3://bucket/key.mp4")


# --- Generator -----------------------------------------------------------------------------------

@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.at(tmp_path / "data")


def image_request(prompt: str = "a red kite", **labels) -> GenerationRequest:
    return GenerationRequest(media_type="image", provider="test", model="test/image", prompt=prompt, seed=5,
                             params={"width": 32, "height": 18}, labels=labels)


class CountingCall:
    """A provider call that writes a small PNG (colour from the prompt) and counts its invocations."""

    def __init__(self, request: GenerationRequest, cost: float = 0.25):
        self.request, self.cost, self.calls = request, cost, 0

    def __call__(self, scratch: Path) -> ProviderResult:
        self.calls += 1
        colour = tuple(hashlib.sha256(self.request.prompt.encode()).digest()[:3])
        out = scratch / "image.png"
        Image.new("RGB", (32, 18), colour).save(out)
        return ProviderResult(path=out, model="test/image-v1", prediction_id=f"p{self.calls}", cost_usd=self.cost)


def stored_files(workspace: Workspace, folder: str) -> list[Path]:
    root = getattr(workspace, folder)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_second_identical_request_is_a_free_cache_hit(workspace):
    generator = Generator(workspace)
    request = image_request(segment="000")
    call = CountingCall(request)
    first = generator.generate(request, call)
    assert (first.cache_hit, first.cost_usd, call.calls) == (False, 0.25, 1)
    assert (first.width, first.height, first.media_type, first.model) == (32, 18, "image", "test/image-v1")
    assert first.sha256 == sha256_file(generator.local_path(first))

    second = generator.generate(request, call)
    assert call.calls == 1  # the provider was not called again
    assert (second.cache_hit, second.cost_usd) == (True, 0.0)
    assert (second.sha256, second.uri, second.cache_key) == (first.sha256, first.uri, first.cache_key)

    # Labels are for logs only: another label is still the same output.
    third = generator.generate(image_request(segment="007"), call)
    assert call.calls == 1 and third.cache_hit and third.sha256 == first.sha256

    log = read_call_log(workspace)
    assert len(log) == 1
    assert log[0]["cache_key"] == request.cache_key() and log[0]["sha256"] == first.sha256
    assert (log[0]["provider"], log[0]["cost_usd"], log[0]["segment"]) == ("test", 0.25, "000")
    assert len(stored_files(workspace, "media")) == 1


def test_call_log_has_one_line_per_generated_output(workspace):
    generator = Generator(workspace)
    calls = []
    for prompt in ["kite", "hill", "kite", "sea", "hill"]:
        request = image_request(prompt)
        call = CountingCall(request)
        generator.generate(request, call)
        calls.append(call.calls)
    assert calls == [1, 1, 0, 1, 0]
    lines = (workspace.logs / "provider_calls.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["cache_key"] for line in lines] == \
        [image_request(p).cache_key() for p in ["kite", "hill", "sea"]]
    assert len(stored_files(workspace, "media")) == 3


def test_cache_key_covers_what_determines_the_output():
    base = image_request()
    assert base.cache_key() == image_request(video_id="other").cache_key()
    assert base.cache_key() == base.model_copy(update={"max_cost_usd": 1.0}).cache_key()
    for change in [{"prompt": "x"}, {"seed": 6}, {"model": "test/other"}, {"provider": "other"},
                   {"params": {"width": 64, "height": 18}}, {"inputs": {"start_image": "ab" * 32}}]:
        assert base.model_copy(update=change).cache_key() != base.cache_key(), change


def test_a_missing_media_file_is_a_cache_miss(workspace):
    generator = Generator(workspace)
    request = image_request()
    call = CountingCall(request)
    first = generator.generate(request, call)
    generator.local_path(first).unlink()
    again = generator.generate(request, call)
    assert call.calls == 2 and not again.cache_hit and again.sha256 == first.sha256
    assert generator.local_path(again).exists()


@pytest.mark.parametrize("media_type, name", [("video", "chunk.mp4"), ("image", "card.png"), ("audio", "music.m4a")])
def test_corrupt_output_raises_media_error_and_stores_nothing(workspace, media_type, name):
    generator = Generator(workspace)
    request = GenerationRequest(media_type=media_type, provider="test", model="test/m", prompt="broken")

    def call(scratch: Path) -> ProviderResult:
        out = scratch / name
        out.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return ProviderResult(path=out, model="test/m")

    with pytest.raises(media.MediaError):
        generator.generate(request, call)
    assert stored_files(workspace, "media") == []
    assert stored_files(workspace, "cache") == []
    assert generator.cache.get(request.cache_key()) is None
    assert stored_files(workspace, "tmp") == []  # the scratch directory is gone
    assert read_call_log(workspace) == []


def test_wrong_medium_is_refused(workspace, moves):
    """A video promised as audio (or the reverse) is not stored."""
    generator = Generator(workspace)

    def video_call(scratch: Path) -> ProviderResult:
        out = scratch / "clip.mp4"
        out.write_bytes(moves["drift"].read_bytes())
        return ProviderResult(path=out, model="test/m")

    with pytest.raises(media.MediaError, match="no decodable audio"):
        generator.generate(GenerationRequest(media_type="audio", provider="test", model="test/m"), video_call)
    assert stored_files(workspace, "media") == []

    manifest = generator.generate(GenerationRequest(media_type="video", provider="test", model="test/m"),
                                  video_call)
    assert (manifest.width, manifest.height, manifest.fps, manifest.duration_s) == (W, H, FPS, 1.0)


def test_a_failing_call_stores_nothing_and_a_retry_generates(workspace):
    generator = Generator(workspace)
    request = image_request()
    attempts = []

    def flaky(scratch: Path) -> ProviderResult:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("provider fell over")
        return CountingCall(request)(scratch)

    with pytest.raises(RuntimeError):
        generator.generate(request, flaky)
    assert stored_files(workspace, "media") == [] and read_call_log(workspace) == []
    manifest = generator.generate(request, flaky)
    assert not manifest.cache_hit and len(attempts) == 2 and len(read_call_log(workspace)) == 1
