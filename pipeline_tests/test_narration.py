"""Narration and subtitles: the timing rule, offline piper voicing, subtitle files that survive
hostile text, ducking measured on decoded audio, the narrated example (speech where beats speak,
cues in sync with the clips in the .vtt and in the MP4's mov_text track), a narration too long
for its beat failing that segment alone, burned captions, and Replicate narration through the fake
server (cached, costed, paid once)."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from pipeline import audio_mix, costs, media, narration, subtitles
from pipeline.generation import GenerationRequest, read_call_log
from pipeline.ledger import Ledger, default_ledger_path
from pipeline.manifests import Cue, load_manifest
from pipeline.providers.local import LocalProvider
from pipeline.store import Workspace
from pipeline_tests.fake_replicate.render import speech_like

SPEECH_BAND = (300.0, 3400.0)


def band_db(samples: np.ndarray, rate: int, t0: float, t1: float, band: tuple[float, float] = SPEECH_BAND) -> float:
    """Mean power (dB) of ``samples[t0:t1]`` (seconds) in ``band`` (Hz), by FFT."""
    seg = samples[int(t0 * rate):int(t1 * rate)].astype(np.float64)
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
    freqs = np.fft.rfftfreq(len(seg), 1 / rate)
    sel = (freqs >= band[0]) & (freqs <= band[1])
    return float(10 * np.log10(spec[sel].mean() / len(seg) + 1e-20))


def mov_text_cues(path: str | Path) -> list[Cue]:
    """The non-empty cues of the MP4's mov_text track (packet time, duration, UTF-8 text)."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        assert stream.codec_context.name == "mov_text"
        for p in container.demux(stream):
            data = bytes(p)
            if p.size == 0 or len(data) <= 2:
                continue
            n = int.from_bytes(data[:2], "big")
            start = float(p.pts * p.time_base)
            out.append(Cue(start_s=start, end_s=start + float(p.duration * p.time_base),
                           text=data[2:2 + n].decode("utf-8")))
    return out


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


# --- the rules -----------------------------------------------------------------------------------

def test_sentences_and_the_timing_rule():
    assert narration.sentences("The sun rises.  Water\nwarms!  \"Really?\" Yes") == \
        ["The sun rises.", "Water warms!", "\"Really?\"", "Yes"]
    assert narration.sentences("  ") == []
    assert narration.beat_length(4.01, 0.4, 24) == pytest.approx(106 / 24)  # rounded up to a frame
    assert narration.auto_length(4.6, 0.5, 24, 5.0) == 5.0  # half the pause fits: no second chunk
    assert narration.auto_length(4.8, 0.5, 24, 5.0) == pytest.approx(narration.beat_length(4.8, 0.5, 24))
    narration.check_fits(2, 4.5, 0.4, 5.0, 24)
    with pytest.raises(narration.NarrationTooLong, match=r"beats\[2\]: its narration lasts 4.90 s.*duration_s 5:"):
        narration.check_fits(2, 4.9, 0.4, 5.0, 24)


def test_planning_voices_only_the_beats_whose_length_it_needs():
    """auto beats take their clip's length (plus the pause, to a frame or whole chunks); a brief's
    beats with from_brief are lengthened to their narration; explicit beats are left to their segment."""
    from pipeline import stages
    from pipeline.manifests import MediaManifest
    from pipeline.submissions import Submission, registration_sha256

    asked = []

    def voicer(request):  # a stand-in clip of 0.1 s per character
        asked.append(request.prompt)
        return MediaManifest(media_type="audio", uri="file:///x", sha256="0" * 64, bytes=1,
                             duration_s=len(request.prompt) / 10, provider="local", model=request.model)

    def plan(data):
        spec = parse(data)
        sub = Submission(video_id=spec.video_id, provider="local", source="t", submitted_at="",
                         spec=spec.model_dump(mode="json", exclude_none=True),
                         spec_sha256=registration_sha256(spec, "local", {}))
        return stages.plan_video(sub, LocalProvider(), voicer)

    from pipeline.spec import parse_spec as parse

    p = plan({"video_id": "v", "title": "t", "duration_s": 20, "narration": {"pause_s": 0.5},
              "beats": [{"prompt": "a", "duration_s": "auto", "narration": "x" * 47},   # 4.7 s + 0.5: 5 s, one chunk
                        {"prompt": "b", "duration_s": "auto", "narration": "y" * 61},   # 6.1 s + 0.5 -> 6.625 s
                        {"prompt": "c", "duration_s": 5, "narration": "z" * 20}]})       # voiced by its segment
    assert asked == ["x" * 47, "y" * 61]
    assert [b.duration_s for b in p.beats] == [5.0, 6.625, 5]
    assert [b.duration_from for b in p.beats] == ["narration", "narration", "spec"]
    assert [b.start_s for b in p.beats] == [0, 5.0, 11.625] and p.narration.voice == "joe"
    asked.clear()
    brief = plan({"video_id": "w", "title": "t", "duration_s": 10, "narration": "from_brief",
                  "brief": "A short one. " + "A much longer second sentence that takes a while to say out loud."})
    assert asked == [b.prompt for b in brief.beats] == [b.narration for b in brief.beats]
    assert [b.duration_from for b in brief.beats] == ["spec", "planner+narration"]
    assert brief.beats[1].duration_s >= len(brief.beats[1].narration) / 10 + 0.4


def test_subtitle_files_keep_hostile_text_as_text():
    hostile = "Tags <b>bold</b> & <script>x</script> --> 00:00:01,000 --> 00:00:02,000\n\nWEBVTT\r\n2\x00\x1b[31m"
    cues = [Cue(start_s=0.5, end_s=2.0, text=hostile), Cue(start_s=2.0, end_s=3.0, text="Second.")]
    vtt, srt = subtitles.to_vtt(cues, title="t --> x"), subtitles.to_srt(cues)
    assert vtt.startswith("WEBVTT\n\n") and "<" not in vtt and "\x00" not in vtt and "\x1b" not in vtt
    parsed = subtitles.parse_vtt(vtt)
    assert [c.start_s for c in parsed][0] == 0.5 and parsed[-1].text == "Second."
    assert " ".join(c.text.replace("\n", " ") for c in parsed[:-1]) == \
        "Tags <b>bold</b> & <script>x</script> --> 00:00:01,000 --> 00:00:02,000 WEBVTT 2[31m"
    blocks = [b for b in srt.strip().split("\n\n")]
    assert [b.splitlines()[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
    for block in blocks:  # exactly one timing line per block, and no markup
        assert sum("-->" in line for line in block.splitlines()) == 1 and "<" not in block


def test_piper_voices_offline_deterministically_with_measured_cues(tmp_path):
    provider = LocalProvider()
    assert "joe" in provider.voices() and provider.resolve_voice(None) == "joe"
    with pytest.raises(ValueError, match="not a piper voice here; voices: joe"):
        provider.resolve_voice("nobody")
    text = "Water evaporates from the sea. It rises and cools into clouds!"
    request = GenerationRequest(media_type="audio", provider="local", model=provider.narration_model, prompt=text,
                                params={"task": "narration", **provider.speech_params("joe")})
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = provider.render_speech(request, tmp_path / "a"), provider.render_speech(request, tmp_path / "b")
    assert a.path.read_bytes() == b.path.read_bytes()  # same text, same voice: same samples and length
    samples, rate = narration.read_mono(a.path)
    cues = [Cue.model_validate(c) for c in a.extra["cues"]]
    assert [c.text for c in cues] == narration.sentences(text) and a.extra["timing"] == "synthesis"
    assert 0 <= cues[0].start_s < cues[0].end_s <= cues[1].start_s < cues[1].end_s <= len(samples) / rate
    for c in cues:  # speech inside each cue, silence between the two
        assert band_db(samples, rate, c.start_s, c.end_s) > band_db(samples, rate, cues[0].end_s, cues[1].start_s) + 20


def test_cues_are_found_at_the_pauses_of_one_clip():
    text = "First sentence here. A second, longer sentence follows it. Third."
    samples = speech_like(text, rate=24_000)
    cues, how = narration.cues_from_silences(narration.sentences(text), samples, 24_000)
    assert how == "silences" and [c.text for c in cues] == narration.sentences(text)
    # speech_like: 0.1 s lead, len/15 s per sentence, 0.35 s gaps
    at = 0.1
    for cue, sentence in zip(cues, narration.sentences(text)):
        length = len(sentence) / 15
        assert cue.start_s == pytest.approx(at, abs=0.02) and cue.end_s == pytest.approx(at + length, abs=0.03)
        at += length + 0.35


def test_music_is_ducked_under_the_voice(tmp_path):
    """Music: a steady 55 Hz hum (below the voice). Its level in the mix, measured in the 40-70 Hz
    band, drops by more than 8 dB while the narration speaks."""
    rate = 48_000
    t = np.arange(12 * rate) / rate
    narration.write_wav(tmp_path / "music.wav", 0.5 * np.sin(2 * np.pi * 55 * t), rate)
    voice = speech_like("One sentence of narration. And another one.", rate=rate)
    narration.write_wav(tmp_path / "voice.wav", voice, rate)
    audio_mix.narration_bed([(4.0, tmp_path / "voice.wav")], tmp_path / "bed.wav", 12.0)
    audio_mix.mix_soundtrack(tmp_path / "bed.wav", tmp_path / "music.wav", tmp_path / "mix.m4a", duration_s=12.0)
    info = media.probe(tmp_path / "mix.m4a")
    assert info.audio_codec == "aac" and abs(info.audio_duration_s - 12.0) <= 1024 / rate
    mix, _ = narration.read_mono(tmp_path / "mix.m4a", rate)
    hum = (40.0, 70.0)
    speaking = (4.3, 4.1 + len(voice) / rate - 0.3)
    assert band_db(voice, rate, 0.1, 1.5, hum) < band_db(mix, rate, 1.0, 3.5, hum) - 40  # the voice has no hum
    assert band_db(mix, rate, *speaking, hum) < band_db(mix, rate, 1.0, 3.5, hum) - 8
    assert band_db(mix, rate, *speaking) > band_db(mix, rate, 1.0, 3.5) + 20  # and the voice is there


def test_the_mov_text_track_holds_the_literal_text(tmp_path):
    media.run_ffmpeg(["-f", "lavfi", "-i", "color=c=gray:s=160x90:r=24", "-frames:v", "48",
                      *media._video_encode_args(24), str(tmp_path / "v.mp4")], what="test video")
    audio_mix.silence(tmp_path / "a.m4a", duration_s=2.0)
    text = "Fish & <chips> --> \"quoted\" ünïcode"
    (tmp_path / "s.vtt").write_text(subtitles.to_vtt([Cue(start_s=0.25, end_s=1.5, text=text)]))
    from pipeline.subtitle_media import mux_copy_subtitled

    mux_copy_subtitled(tmp_path / "v.mp4", tmp_path / "a.m4a", tmp_path / "s.vtt", tmp_path / "out.mp4")
    [cue] = mov_text_cues(tmp_path / "out.mp4")
    assert cue.text == text and cue.start_s == pytest.approx(0.25) and cue.end_s == pytest.approx(1.5)
    media.verify_stream_copy(tmp_path / "out.mp4")


# --- the narrated example ------------------------------------------------------------------------

LECTURE = "water-cycle-lecture"


def _narrations(env, plan):
    return [load_manifest((env.data_dir / "manifests" / "narration" / plan.video_id / f"{b.segment}.json")
                          .read_bytes()) for b in plan.beats]


def test_the_lecture_speaks_where_its_beats_have_narration(rendered_examples):
    env, report = rendered_examples[LECTURE]
    plan, final = report.plan, report.final
    assert plan.narration.voice == "joe" and plan.narration.model == "local/piper-tts-v1"
    voiced = _narrations(env, plan)
    assert [n.clip is not None for n in voiced] == [b.narration is not None for b in plan.beats] == \
        [False] + [True] * 5
    for b, n in zip(plan.beats, voiced):  # auto beats last their clip plus the pause (frame / chunk rule)
        if b.duration_from == "narration":
            assert b.duration_s == narration.auto_length(n.clip.duration_s, 0.5, plan.fps, 5.0)
        if n.clip is not None:
            assert n.clip.duration_s + 0.25 <= b.duration_s + 1e-6
    samples, rate = narration.read_mono(final.path, 16_000)
    title = band_db(samples, rate, 0.5, plan.beats[0].duration_s - 0.5)  # music only
    for b, n in zip(plan.beats[1:], voiced[1:]):
        for c in n.cues:
            assert band_db(samples, rate, b.start_s + c.start_s, b.start_s + c.end_s) > title + 6, (b.segment, c)


def test_the_lecture_subtitles_match_the_narration_clips(rendered_examples):
    env, report = rendered_examples[LECTURE]
    plan, final = report.plan, report.final
    frame = 1 / plan.fps
    expected = [(b.start_s + c.start_s, b.start_s + c.end_s) for b, n in zip(plan.beats, _narrations(env, plan))
                for c in n.cues]
    assert final.subtitles["track"] == "mov_text" and final.subtitles["captions"] == "soft"
    vtt = subtitles.parse_vtt(Path(final.subtitles["vtt"]).read_text())
    srt = Path(final.subtitles["srt"]).read_text()
    assert final.subtitles["cues"] == len(vtt) >= len(expected) and srt.count(" --> ") == len(vtt)
    for cues in (vtt, mov_text_cues(final.path)):
        starts, ends = [c.start_s for c in cues], [c.end_s for c in cues]
        for start, end in expected:  # every sentence starts and ends on a cue boundary, within a frame
            assert min(abs(s - start) for s in starts) <= frame, (start, starts)
            assert min(abs(e - end) for e in ends) <= frame, (end, ends)
    assert final.mux_method == "stream_copy"


def test_the_lecture_soundtrack_and_costs(rendered_examples):
    import dagster as dg

    env, report = rendered_examples[LECTURE]
    plan, final = report.plan, report.final
    [record] = env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("soundtrack"), asset_partitions=[plan.video_id]), limit=1).records
    md = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert md["method"] == "mix" and md["duration_s"] == pytest.approx(plan.duration_s, abs=1024 / 48_000)
    lines = [c for c in final.costs if c.stage == "narration"]
    assert [c.segment for c in lines] == [b.segment for b in plan.beats if b.narration]
    assert all(c.model == "local/piper-tts-v1" and c.paid_usd == 0 and c.unit == "audio s" for c in lines)
    # What `pipeline render` and `pipeline status` print under the final video's path.
    from pipeline.cli_summary import subtitles_line

    line = subtitles_line(final)
    assert line == (f"subtitles: {final.subtitles['vtt']}, {final.subtitles['srt']} "
                    f"({final.subtitles['cues']} cues, a mov_text track)"), line
    assert final.subtitles["vtt"].endswith(f"{plan.video_id}.vtt") and final.subtitles["cues"] >= 5


# --- failures, captions --------------------------------------------------------------------------

def test_a_narration_too_long_for_its_beat_fails_that_segment_alone(env, tmp_path):
    spec = {"video_id": "too-long", "title": "t", "duration_s": 8,
            "beats": [{"prompt": "A quiet lake", "duration_s": 5, "narration": "A lake."},
                      {"prompt": "A storm", "duration_s": 3,
                       "narration": "A storm rolls in over the hills, and the rain comes down on the lake for hours."}]}
    report = env.render(_write(tmp_path / "s.yaml", spec), max_parallel=2)
    assert report.final is None
    [failed] = report.failed
    assert failed.name == "segment 001"
    assert "beats[1]: its narration lasts" in failed.error and "duration_s: auto" in failed.error
    calls = [c for c in read_call_log(Workspace.at(env.data_dir)) if c.get("video_id") == "too-long"]
    assert not [c for c in calls if c.get("segment") == "001" and c["stage"] in ("storyboard_images", "chunk_videos")]
    assert [c for c in calls if c.get("segment") == "000" and c["stage"] == "chunk_videos"]


def test_narration_alone_and_burned_captions(env, tmp_path):
    spec = {"video_id": "burned", "title": "Burned", "duration_s": 12, "aspect_ratio": "9:16",
            "narration": {"captions": "burned", "pause_s": 0.3},
            "beats": [{"prompt": "A quiet lake at dawn", "duration_s": 2},
                      {"prompt": "Mist over the water", "duration_s": "auto",
                       "narration": "Mist lifts from the lake. The day begins."},
                      {"prompt": "The sun over the trees", "duration_s": 2}]}
    report = env.render(_write(tmp_path / "b.yaml", spec), max_parallel=2)
    assert report.final is not None, [r.error for r in report.failed]
    plan, final = report.plan, report.final
    assert len(plan.beats) == 3 and plan.truncation is None
    assert final.mux_method == "reencode" and final.subtitles["captions"] == "burned"
    samples, rate = narration.read_mono(final.path, 16_000)
    b = plan.beats[1]
    speech = band_db(samples, rate, b.start_s + 0.2, b.start_s + 1.5)
    assert band_db(samples, rate, 0.2, 1.8) < speech - 40  # no music: silence where nothing is said
    assert band_db(samples, rate, b.start_s + b.duration_s + 0.2, plan.duration_s - 0.2) < speech - 40
    stitched = load_manifest((env.data_dir / "manifests" / "stitched_video" / "burned.json").read_bytes())
    at = int((b.start_s + 0.8) * plan.fps)
    from pipeline_tests.frames import decode_frames

    store = lambda m: m.uri[len("file://"):]  # noqa: E731
    plain, drawn = decode_frames(store(stitched.video))[at], decode_frames(final.path)[at]
    h = plain.shape[0]
    bottom = np.abs(drawn[int(h * 0.8):].astype(int) - plain[int(h * 0.8):].astype(int)).mean()
    top = np.abs(drawn[:int(h * 0.5)].astype(int) - plain[:int(h * 0.5)].astype(int)).mean()
    assert bottom > top + 3  # the caption is drawn near the bottom; the rest is the same picture


# --- Replicate through the fake server -------------------------------------------------------------

def test_replicate_narration_is_cached_costed_and_paid_once(env, monkeypatch, tmp_path):
    from pipeline import models
    from pipeline.definitions import build_definitions
    from pipeline_tests.fake_replicate import FakeReplicate

    kokoro = models.get_model(models.DEFAULTS["speech"])
    spec = {"video_id": "rep-narrated", "title": "t", "duration_s": 10, "aspect_ratio": "16:9",
            "narration": {"voice": "am_adam"},
            "beats": [{"prompt": "A fox in snow", "duration_s": "auto",
                       "narration": "A fox hunts in the snow. It listens for mice."},
                      {"prompt": "The fox pounces", "duration_s": 5, "narration": "Then it pounces."}]}
    path = _write(tmp_path / "r.yaml", spec)
    with FakeReplicate(run_seconds=(0.05, 0.08), render_scale=0.25) as server:
        monkeypatch.setenv("REPLICATE_API_TOKEN", server.token)
        monkeypatch.setenv("REPLICATE_BASE_URL", server.base_url)
        env.defs = build_definitions(str(env.data_dir), replicate_output_hosts=[server.origin],
                                     replicate_poll_interval_s=0.02)
        report = env.render(path, provider="replicate", max_parallel=2)
        assert report.final is not None, [r.error for r in report.failed]
        assert server.create_count(kokoro.ref) == 2  # one paid call per narrated beat (the plan voiced beat 000)
        plan, final = report.plan, report.final
        assert plan.narration.voice == "am_adam" and plan.narration.model == kokoro.id
        lines = [c for c in final.costs if c.stage == "narration"]
        assert [c.segment for c in lines] == ["000", "001"]
        assert all(c.paid_usd > 0 and c.paid_by == "rep-narrated" and c.model == kokoro.id for c in lines)
        ledger = Ledger(default_ledger_path(env.data_dir))
        assert ledger.spent_usd("rep-narrated") == pytest.approx(final.paid_usd, abs=1e-6)
        for line in lines:  # time-billed: predict_time x the T4 price
            [p] = [p for p in ledger.predictions(video_id="rep-narrated") if p.prediction_id == line.prediction_id]
            assert p.cost_usd == pytest.approx(line.paid_usd)
        vtt = subtitles.parse_vtt(Path(final.subtitles["vtt"]).read_text())
        assert [c.text for c in vtt] == ["A fox hunts in the snow.", "It listens for mice.", "Then it pounces."]
        voiced = _narrations(env, plan)
        assert voiced[0].timing == "silences" and plan.beats[0].duration_from == "narration"
        again = env.render(path, provider="replicate", max_parallel=2, force=True)
        assert again.final is not None and server.create_count(kokoro.ref) == 2  # the rerun pays nothing
        assert costs.totals([c for c in again.final.costs if c.stage == "narration"]) == \
            costs.totals(lines)  # still this video's own earlier payment, not paid again
        assert ledger.spent_usd("rep-narrated") == pytest.approx(final.paid_usd, abs=1e-6)
    assert math.isclose(again.final.paid_usd, final.paid_usd, abs_tol=1e-6)
