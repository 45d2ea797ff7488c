"""Assembly in constant time (issue 11): chunks conformed to the plan beside the chain, segment
clips, the music finished beside the segments, and the stitch and final mux as stream copies.

Real ffmpeg output, decoded and measured with PyAV (frame markers, packets, samples) and ffmpeg's
ebur128 filter. Media are small (160x90 to 320x180, 1-4 s) to stay fast.
"""

from __future__ import annotations

import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import media, stages
from pipeline.generation import Generator, ProviderResult, read_call_log
from pipeline.manifests import PlannedBeat, load_manifest
from pipeline.providers.local import LocalProvider, synthesize_music
from pipeline.spec import parse_spec
from pipeline.store import Workspace
from pipeline.submissions import submit_spec
from pipeline_tests.media_helpers import (
    decode_audio,
    decode_frames,
    integrated_loudness,
    numbered_clip,
    read_marker,
    rms,
)

AAC_FRAME = 1024
"""Samples in one AAC frame: how far the final audio may run past the plan's duration."""


def markers(path: Path) -> list[tuple[int, int]]:
    return [read_marker(f) for f in decode_frames(path)]


def packets(path: Path, kind: str) -> list[bytes]:
    """The payload of every packet of the first ``kind`` ("video"/"audio") stream, in order."""
    with av.open(str(path)) as c:
        stream = getattr(c.streams, kind)[0]
        return [bytes(p) for p in c.demux(stream) if p.size]


def without_parameter_sets(packet: bytes) -> bytes:
    """An H.264 packet (4-byte length-prefixed NAL units, as in MP4) without its SPS/PPS units: the
    concat demuxer repeats the parameter sets in-band on each keyframe it copies; the slices it
    leaves as they are."""
    units, at = [], 0
    while at < len(packet):
        size = int.from_bytes(packet[at:at + 4], "big")
        unit = packet[at + 4:at + 4 + size]
        if unit[0] & 0x1F not in (7, 8):
            units.append(packet[at:at + 4 + size])
        at += 4 + size
    return b"".join(units)


def slices(path: Path) -> list[bytes]:
    """The video packets of ``path`` without in-band parameter sets (``without_parameter_sets``)."""
    return [without_parameter_sets(p) for p in packets(path, "video")]


def audio_samples(path: Path) -> tuple[int, float, int]:
    """(decoded samples, end of the last frame by its timestamp in seconds, sample rate) of the audio."""
    count, end, rate = 0, 0.0, 0
    with av.open(str(path)) as c:
        for frame in c.decode(audio=0):
            count += frame.samples
            rate = frame.sample_rate
            end = max(end, float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate)
    return count, end, rate


# --- media.conform --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("assembly-media")


def test_conform_of_a_mismatched_chunk_gives_exact_frames_at_the_plan_size_and_fps(media_dir):
    src = numbered_clip(media_dir / "model-30fps.mp4", 30, 1, width=640, height=360, fps=30)
    out = media_dir / "conformed-30to24.mp4"
    assert media.conform(src, out, width=854, height=480, fps=24, frames=22) == "reencode"
    info = media.probe(out)
    assert (info.frames, info.width, info.height, info.fps) == (22, 854, 480, 24)
    assert (info.video_codec, info.pix_fmt, info.has_b_frames, info.has_audio) == ("h264", "yuv420p", False, False)
    assert info.duration_s == pytest.approx(22 / 24)
    # Encoded as the pipeline encodes (so it joins other pieces by stream copy), a keyframe first.
    assert (info.extradata, info.time_base) == media.encoder_signature(854, 480, 24)
    assert media.video_packets(out) == (22, True)
    # The frames are the source's, resampled to 24 fps from its first frame on.
    got = markers(out)
    assert {piece for piece, _ in got} == {1}
    assert [i for _, i in got] == [int(k * 30 / 24 + 0.5) for k in range(22)]  # nearest, halves up


def test_conform_fits_another_aspect_ratio_inside_the_frame(media_dir):
    src = numbered_clip(media_dir / "model-4x3.mp4", 12, 2, width=120, height=90)
    out = media_dir / "conformed-4x3.mp4"
    assert media.conform(src, out, width=160, height=90, fps=24, frames=12) == "reencode"
    frames = decode_frames(out)
    assert len(frames) == 12 and frames[0].shape == (90, 160, 3)
    assert frames[0][:, :18].max() < 30 and frames[0][:, -18:].max() < 30  # pillarbox: 20 px of black a side
    assert media.probe(out, decode=False).width == 160


def test_conform_of_a_matching_chunk_is_a_stream_copy_with_bit_exact_frames(media_dir):
    src = numbered_clip(media_dir / "plan-24fps.mp4", 24, 0)  # the pipeline's own settings, 160x90 @ 24
    out = media_dir / "conformed-copy.mp4"
    assert media.conform(src, out, width=160, height=90, fps=24, frames=17) == "stream_copy"
    assert packets(out, "video") == packets(src, "video")[:17]
    source, conformed = decode_frames(src), decode_frames(out)
    assert len(conformed) == 17 and all(np.array_equal(a, b) for a, b in zip(conformed, source))
    info = media.probe(out)
    assert (info.frames, info.fps, info.time_base) == (17, 24, media.encoder_signature(160, 90, 24)[1])


def test_a_stream_with_another_time_scale_is_copied_into_the_plan_time_scale(media_dir):
    src = numbered_clip(media_dir / "plan-90k.mp4", 24, 0)
    remuxed = media_dir / "plan-90k-remuxed.mp4"
    media.run_ffmpeg(["-i", str(src), "-c", "copy", "-video_track_timescale", "90000", str(remuxed)], what="remux")
    assert media.probe(remuxed, decode=False).time_base == Fraction(1, 90000)
    out = media_dir / "conformed-90k.mp4"
    assert media.conform(remuxed, out, width=160, height=90, fps=24, frames=10) == "stream_copy"
    assert media.probe(out).time_base == media.encoder_signature(160, 90, 24)[1]
    assert markers(out) == [(0, i) for i in range(10)]


@pytest.mark.parametrize("fps, width", [(24, 160), (30, 160)])  # stream-copy and re-encode paths
def test_conform_refuses_a_chunk_shorter_than_the_frames_kept(media_dir, fps, width):
    src = numbered_clip(media_dir / f"short-{fps}.mp4", 12, 3, width=width, fps=fps)
    available = round(12 / fps * 24)
    with pytest.raises(media.MediaError, match="gap in the stitch"):
        media.conform(src, media_dir / f"short-{fps}-out.mp4", width=160, height=90, fps=24, frames=available + 2)


def test_conformed_pieces_of_mismatched_sources_join_by_stream_copy(media_dir):
    a = numbered_clip(media_dir / "join-a.mp4", 30, 0, width=120, height=90, fps=30)  # 4:3, 30 fps
    b = numbered_clip(media_dir / "join-b.mp4", 24, 1)  # matches the plan
    pa, pb = media_dir / "join-a-conformed.mp4", media_dir / "join-b-conformed.mp4"
    assert media.conform(a, pa, width=160, height=90, fps=24, frames=20) == "reencode"
    assert media.conform(b, pb, width=160, height=90, fps=24, frames=9) == "stream_copy"
    out = media_dir / "joined.mp4"
    method = media.stitch([media.StitchPiece(pb, 9), media.StitchPiece(pa, 20), media.StitchPiece(pb, 9)], out,
                          width=160, height=90, fps=24, workdir=media_dir)
    assert method == "stream_copy"
    got = markers(out)
    assert len(got) == 38 and media.probe(out).frames == 38
    assert got[:9] == got[29:] == [(1, i) for i in range(9)]
    assert [p for p, _ in got[9:29]] == [0] * 20


def test_stitch_reencodes_pieces_whose_time_bases_differ(media_dir):
    """The concat demuxer does not rescale a later file's timestamps: a stream copy of pieces with
    different time bases would break the timeline, so the stitch re-encodes them."""
    a = numbered_clip(media_dir / "tb-a.mp4", 12, 0)
    b = media_dir / "tb-b.mp4"
    media.run_ffmpeg(["-i", str(numbered_clip(media_dir / "tb-b-src.mp4", 12, 1)), "-c", "copy",
                      "-video_track_timescale", "90000", str(b)], what="remux")
    out = media_dir / "tb-stitched.mp4"
    assert media.stitch([media.StitchPiece(a, 12), media.StitchPiece(b, 12)], out, width=160, height=90, fps=24,
                        workdir=media_dir) == "reencode"
    assert markers(out) == [(0, i) for i in range(12)] + [(1, i) for i in range(12)]


# --- media.finish_music and mux_copy ---------------------------------------------------------------

@pytest.fixture(scope="module")
def music_file(media_dir) -> Path:
    import wave

    samples = synthesize_music("upbeat synth", bpm=120, duration_s=4.0, seed=1)
    wav = media_dir / "music.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(44_100)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    out = media_dir / "music.m4a"
    media.encode_audio(wav, out)
    return out


@pytest.mark.parametrize("duration", [3.125, 5.5])  # trimmed; padded with silence
def test_finished_music_is_the_duration_loudness_normalized_aac_at_48k(media_dir, music_file, duration):
    out = media_dir / f"track-{duration}.m4a"
    measured = media.finish_music(music_file, out, duration_s=duration)
    assert float(measured["input_i"]) > -70
    info = media.probe(out)
    assert (info.audio_codec, info.sample_rate, info.has_video) == ("aac", 48_000, False)
    count, end, rate = audio_samples(out)
    want = round(duration * 48_000)
    assert want <= count < want + AAC_FRAME, (count, want)
    assert end == pytest.approx(count / rate, abs=1e-9)  # timestamps without gaps
    assert integrated_loudness(out) == pytest.approx(media.LOUDNESS_TARGET["I"], abs=1.0)
    samples, rate = decode_audio(out)
    middle = rms(samples[int(0.4 * rate):int(1.2 * rate)])
    assert middle > 0.02 and rms(samples[want - int(0.1 * rate):want]) < 0.3 * middle  # faded out
    if duration > 4:
        assert rms(samples[int(4.05 * rate):want]) < 1e-3  # silence after the 4 s of music


def test_mux_copy_keeps_both_streams_bit_identical(media_dir, music_file):
    video = numbered_clip(media_dir / "mux-video.mp4", 75, 2)  # 3.125 s at 24 fps
    track = media_dir / "mux-track.m4a"
    media.finish_music(music_file, track, duration_s=3.125)
    out = media_dir / "mux-copy.mp4"
    media.mux_copy(video, track, out)
    assert packets(out, "video") == packets(video, "video")
    assert packets(out, "audio") == packets(track, "audio")
    info = media.probe(out)
    assert info.frames == 75 and info.audio_codec == "aac"
    count, _, _ = audio_samples(out)
    assert round(3.125 * 48_000) <= count < round(3.125 * 48_000) + AAC_FRAME


def test_a_stream_copy_is_verified_by_reading_its_packets_not_decoding_them(media_dir, music_file):
    video = numbered_clip(media_dir / "verify-video.mp4", 75, 2)
    track = media_dir / "verify-track.m4a"
    media.finish_music(music_file, track, duration_s=3.125)
    out = media_dir / "verify-mux.mp4"
    media.mux_copy(video, track, out)
    decoded, read = media.probe(out), media.verify_stream_copy(out)
    assert read.frames == decoded.frames == 75 and read.duration_s == pytest.approx(decoded.duration_s)
    # Packets end where the container trims the last AAC frame; decoding yields that frame whole.
    assert read.audio_duration_s == pytest.approx(3.125, abs=1 / 48_000)
    assert 0 <= decoded.audio_duration_s - read.audio_duration_s < AAC_FRAME / 48_000
    assert (read.width, read.height, read.fps) == (decoded.width, decoded.height, decoded.fps)
    cut = media_dir / "verify-cut.mp4"  # a copy that lost its tail: the packets it indexes are missing
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(media.MediaError):
        media.verify_stream_copy(cut)


def test_the_generator_reads_packets_only_for_outputs_marked_stream_copy(media_dir, monkeypatch):
    workspace = Workspace(media_dir / "ws")
    generator = Generator(workspace)
    clip = numbered_clip(media_dir / "gen-clip.mp4", 48, 1)
    used: list[str] = []
    monkeypatch.setattr(media, "verify_stream_copy", lambda p: used.append("packets") or media.probe(p, decode=False))
    monkeypatch.setattr(media, "verify_video", lambda p: used.append("decode") or media.probe(p))
    for verify in ("stream_copy", "decode"):
        request = stages.GenerationRequest(media_type="video", provider=stages.FFMPEG, model="test-copy",
                                           params={"verify": verify}, labels={"stage": "test"})

        def call(scratch: Path, verify=verify) -> ProviderResult:
            out = scratch / "out.mp4"
            out.write_bytes(clip.read_bytes())
            return ProviderResult(path=out, model="test-copy", verify=verify)

        generator.generate(request, call)
    assert used == ["packets", "decode"]


# --- the stages: segments, stitch, music, final mux ----------------------------------------------

W, H, FPS = 320, 180, 24
BEATS = [(2.5, "A lighthouse at dusk", "slow push-in"), (1.52, "Waves crash on the rocks", "lateral pan")]
PLAN_FRAMES = [60, 36]  # [0, 60) and [60, 96) at 24 fps: 1.52 s starting at 2.5 s is frames 60 to 96.48


class MismatchedModel(LocalProvider):
    """The local renderer posing as a model that makes 4:3 240x180 chunks at 30 fps."""

    video_model = "test/mismatched-30fps"

    def render_chunk(self, request, start_image, scratch):
        out = scratch / "chunk.mp4"
        media.render_camera_move(start_image, out, width=240, height=180, fps=30,
                                 seconds=float(request.params["duration_s"]), move="drift")
        return ProviderResult(path=out, model=self.video_model)


def make_plan(ws: Workspace, provider: LocalProvider, beats=BEATS):
    spec = {"video_id": "assembly", "title": "Assembly", "duration_s": 10, "aspect_ratio": "16:9",
            "style": "flat colors", "music": {"prompt": "calm piano", "bpm": 90},
            "beats": [{"prompt": "one", "duration_s": 5}, {"prompt": "two", "duration_s": 5}]}
    plan = stages.plan_video(submit_spec(ws, parse_spec(spec), source="test", provider="local")[0], provider)
    planned, start = [], 0.0
    for i, (seconds, prompt, motion) in enumerate(beats):
        planned.append(PlannedBeat(index=i, prompt=prompt, motion=motion, duration_s=seconds, start_s=start))
        start += seconds
    return plan.model_copy(update={"width": W, "height": H, "beats": planned, "duration_s": start,
                                   "target_duration_s": start})


def render_segments(plan, provider, gen, progress=None):
    sets = {}
    for b in plan.beats:
        beat = stages.plan_beat(plan, b, provider)
        board = stages.render_storyboard(beat, provider, gen)
        sets[beat.segment] = stages.render_chunks(beat, board, provider, gen, progress=progress)
    return stages.check_fan_in(plan, sets, {k: v.fingerprint for k, v in sets.items()})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One workspace, the same plan rendered by a model that matches it and by one that does not."""
    ws = Workspace.at(tmp_path_factory.mktemp("assembly-ws"))
    gen = Generator(ws)
    out = {}
    for name, provider in (("matching", LocalProvider(chunk_seconds=2.0)),
                           ("mismatched", MismatchedModel(chunk_seconds=2.0))):
        plan = make_plan(ws, provider)
        out[name] = (plan, provider, render_segments(plan, provider, gen))
    return ws, gen, out


def test_segments_of_a_mismatched_model_have_clips_of_the_exact_frames(rendered):
    ws, gen, out = rendered
    plan, _, ordered = out["mismatched"]
    assert [len(cv.chunks) for cv in ordered] == [2, 1]
    for cv, frames in zip(ordered, PLAN_FRAMES):
        assert all(c.conformed is not None and c.conformed.extra["method"] == "reencode" for c in cv.chunks)
        assert [c.conformed.extra["frames"] for c in cv.chunks] == ([48, 12] if len(cv.chunks) == 2 else [36])
        assert cv.clip is not None and cv.clip.extra["frames"] == frames
        info = media.probe(gen.local_path(cv.clip))
        assert (info.frames, info.width, info.height, info.fps) == (frames, W, H, FPS)
        assert (info.extradata, info.time_base) == media.encoder_signature(W, H, FPS)
    # The clip of a two-chunk beat is its conformed pieces, slice for slice.
    two = ordered[0]
    assert slices(gen.local_path(two.clip)) == \
        slices(gen.local_path(two.chunks[0].conformed)) + slices(gen.local_path(two.chunks[1].conformed))


def test_stitch_of_clips_is_a_stream_copy_even_for_a_mismatched_model(rendered):
    ws, gen, out = rendered
    plan, _, ordered = out["mismatched"]
    stitched = stages.stitch_video(plan, ordered, gen)
    assert (stitched.method, stitched.clips, stitched.video.model) == ("stream_copy", 2, stages.STITCH_CLIPS_MODEL)
    path = gen.local_path(stitched.video)
    info = media.probe(path)
    assert (info.frames, info.width, info.height, info.fps) == (sum(PLAN_FRAMES), W, H, FPS)
    assert slices(path) == [p for cv in ordered for p in slices(gen.local_path(cv.clip))]


def test_chunks_that_match_the_plan_are_conformed_by_stream_copy(rendered):
    ws, gen, out = rendered
    plan, _, ordered = out["matching"]
    for cv, frames in zip(ordered, PLAN_FRAMES):
        assert [c.conformed.extra["method"] for c in cv.chunks] == ["stream_copy"] * len(cv.chunks)
        for c in cv.chunks:
            kept = c.conformed.extra["frames"]
            assert packets(gen.local_path(c.conformed), "video") == packets(gen.local_path(c.video), "video")[:kept]
        assert cv.clip.extra["frames"] == frames
    stitched = stages.stitch_video(plan, ordered, gen)
    assert stitched.method == "stream_copy" and media.probe(gen.local_path(stitched.video)).frames == sum(PLAN_FRAMES)


def test_conforming_runs_beside_the_chain(tmp_path, monkeypatch):
    """Chunk k is conformed in another thread while chunk k+1 generates: the chain never waits."""
    events: list[tuple[str, float, int]] = []
    real_conform, real_render = media.conform, LocalProvider.render_chunk

    def slow_conform(*args, **kwargs):
        events.append(("conform start", time.monotonic(), threading.get_ident()))
        time.sleep(1.5)
        try:
            return real_conform(*args, **kwargs)
        finally:
            events.append(("conform end", time.monotonic(), threading.get_ident()))

    def render_chunk(self, request, start_image, scratch):
        events.append((f"chunk {request.labels['chunk']} start", time.monotonic(), threading.get_ident()))
        return real_render(self, request, start_image, scratch)

    monkeypatch.setattr(media, "conform", slow_conform)
    monkeypatch.setattr(LocalProvider, "render_chunk", render_chunk)
    ws = Workspace.at(tmp_path)
    provider = LocalProvider(chunk_seconds=1.0)
    plan = make_plan(ws, provider, beats=[(2.5, "A lighthouse at dusk", "slow push-in")])
    reports = []
    (cv,) = render_segments(plan, provider, Generator(ws), progress=reports.append)
    assert len(cv.chunks) == 3 and cv.clip.extra["frames"] == 60
    at = {name: (t, thread) for name, t, thread in events if name.startswith("chunk")}
    conforms = [(t, thread) for name, t, thread in events if name == "conform end"]
    assert at["chunk 1 start"][0] < conforms[0][0] and at["chunk 2 start"][0] < conforms[1][0]
    assert {thread for _, thread in conforms} != {at["chunk 0 start"][1]}  # not the chain's thread
    clip_report = [r for r in reports if r.stage == "segment_clip"]
    assert len(clip_report) == 1 and clip_report[0].medium.sha256 == cv.clip.sha256


def test_a_rerun_of_the_segments_is_all_cache_hits(rendered):
    ws, gen, out = rendered
    before = len(read_call_log(ws))
    plan, provider, ordered = out["mismatched"]
    again = render_segments(plan, provider, gen)
    assert len(read_call_log(ws)) == before
    assert [cv.clip.sha256 for cv in again] == [cv.clip.sha256 for cv in ordered]
    assert all(c.conformed.cache_hit for cv in again for c in cv.chunks)


@pytest.fixture(scope="module")
def assembled(rendered):
    ws, gen, out = rendered
    plan, provider, ordered = out["mismatched"]
    stitched = stages.stitch_video(plan, ordered, gen)
    music = stages.render_music(plan, provider, gen)
    return plan, stitched, music, stages.mux_video(plan, stitched, music, gen, ws)


def test_music_has_a_finished_track_of_the_plan_duration(assembled, rendered):
    gen = rendered[1]
    plan, _, music, _ = assembled
    track = music.track
    assert track is not None and track.model == stages.FINISH_MUSIC_MODEL and track.provider == "ffmpeg"
    assert track.extra["duration_s"] == plan.duration_s and float(track.extra["loudness"]["input_i"]) > -70
    path = gen.local_path(track)
    count, _, rate = audio_samples(path)
    assert rate == 48_000 and round(plan.duration_s * rate) <= count < round(plan.duration_s * rate) + AAC_FRAME
    assert integrated_loudness(path) == pytest.approx(media.LOUDNESS_TARGET["I"], abs=1.0)


def test_the_final_mux_is_a_stream_copy_of_the_stitched_video_and_the_track(assembled, rendered):
    gen = rendered[1]
    plan, stitched, music, final = assembled
    assert final.mux_method == "stream_copy" and final.video.model == stages.MUX_COPY_MODEL
    assert final.video.extra["method"] == "stream_copy"
    assert final.video.extra["loudness"] == music.track.extra["loudness"]
    published = Path(final.path)
    assert packets(published, "audio") == packets(gen.local_path(music.track), "audio")
    assert packets(published, "video") == packets(gen.local_path(stitched.video), "video")
    info = media.probe(published)
    assert info.frames == sum(PLAN_FRAMES) == round(plan.duration_s * FPS)
    count, _, rate = audio_samples(published)
    assert round(plan.duration_s * rate) <= count < round(plan.duration_s * rate) + AAC_FRAME
    assert integrated_loudness(published) == pytest.approx(media.LOUDNESS_TARGET["I"], abs=1.0)


def _old(manifest, *drop: str):
    """``manifest`` as code before clips and finished tracks wrote it: JSON without those keys."""
    data = json.loads(manifest.model_dump_json())
    for key in drop:
        data.pop(key, None)
    if data["kind"] == "chunk_videos":
        for chunk in data["chunks"]:
            chunk.pop("conformed", None)
    return load_manifest(json.dumps(data))


def test_old_manifests_still_assemble_by_the_fallback(assembled, rendered):
    ws, gen, out = rendered
    plan, _, ordered = out["mismatched"]
    old_sets = [_old(cv, "clip") for cv in ordered]
    assert all(cv.clip is None and all(c.conformed is None for c in cv.chunks) for cv in old_sets)
    stitched = stages.stitch_video(plan, old_sets, gen)
    assert (stitched.method, stitched.clips, stitched.video.model) == ("reencode", 0, stages.STITCH_MODEL)
    info = media.probe(gen.local_path(stitched.video))
    assert (info.frames, info.width, info.height, info.fps) == (sum(PLAN_FRAMES), W, H, FPS)

    music = _old(assembled[2], "track")
    assert music.track is None
    final = stages.mux_video(plan, stitched, music, gen, ws)
    assert final.mux_method == "reencode" and final.video.model == stages.MUX_REENCODE_MODEL
    published = Path(final.path)
    info = media.probe(published)
    assert info.frames == sum(PLAN_FRAMES) and info.audio_codec == "aac"
    count, _, rate = audio_samples(published)
    assert round(plan.duration_s * rate) <= count < round(plan.duration_s * rate) + AAC_FRAME
    assert integrated_loudness(published) == pytest.approx(media.LOUDNESS_TARGET["I"], abs=1.0)
    # Old final manifests (no mux_method) load too.
    assert _old(final, "mux_method").mux_method is None


def test_a_clip_cut_for_another_start_gives_way_to_the_chunks(rendered):
    """A beat's frame count depends on where it starts, which its fingerprint leaves out: a clip
    cut for another start is not used, the segment's chunks are."""
    ws, gen, out = rendered
    plan, _, ordered = out["matching"]
    beats = [plan.beats[0], plan.beats[1].model_copy(update={"start_s": 2.52})]
    moved = plan.model_copy(update={"beats": beats, "duration_s": 4.04})
    need = [media.beat_frames(b.start_s, b.duration_s, FPS) for b in beats]
    assert need == [60, 37]
    stitched = stages.stitch_video(moved, ordered, gen)
    assert stitched.clips == 1 and stitched.method == "stream_copy"  # the local model's chunks match the plan
    assert media.probe(gen.local_path(stitched.video)).frames == 97
    # A finished track made for another duration gives way to finishing during the mux.
    assert stages._fitting_track(moved, stages.render_music(plan, out["matching"][1], gen)) is None
