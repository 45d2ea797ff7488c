"""Minimal specs: aspect_ratio defaults to 16:9, style and music are optional, and such a spec
renders (with a silent audio track when there is neither music nor narration). ``pipeline
validate`` says which defaults it applied. Specs written before these defaults keep their
fingerprint (nothing re-plans)."""

from __future__ import annotations

import yaml

from pipeline import media
from pipeline.cli import main
from pipeline.manifests import load_manifest
from pipeline.spec import load_spec, parse_spec
from pipeline_tests.conftest import EXAMPLES
from pipeline_tests.frames import integrated_loudness

MINIMAL = {"video_id": "minimal-kite", "title": "A kite", "duration_s": 8,
           "beats": [{"prompt": "A red kite over a green field", "duration_s": 4},
                     {"prompt": "The kite lands in the grass", "duration_s": 4}]}


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_minimal_spec_loads_with_defaults():
    spec = parse_spec(MINIMAL)
    assert (spec.aspect_ratio, spec.style, spec.music, spec.narration) == ("16:9", None, None, None)
    assert spec.resolution == (854, 480)
    assert spec.applied_defaults() == ["aspect_ratio 16:9 (default)",
                                       "style: none (default: prompts carry no style text)",
                                       "music: none (default: the soundtrack is silence)"]
    full = parse_spec({**MINIMAL, "aspect_ratio": "1:1", "style": "ink", "music": {"prompt": "harp", "bpm": 90}})
    assert full.applied_defaults() == []


def test_specs_keep_the_fingerprints_they_had_before_the_defaults():
    """Values computed with the code before narration and defaults existed: nothing re-plans."""
    expected = {"tortoise-and-hare": "3b428f58fa19b59b433fb2090314035fa32c3b059e96994cb572d5b42a81f7d7",
                "water-cycle": "804b38c7e97a62c02ef291ce34af2f14b9b073f35bf1d3aa4c396f1ab4cfb38e",
                "too-many-beats": "717fd596d3cf6e73b195d67048a6ef47117794aad612a688082f0632112d5a2c"}
    for name, sha in expected.items():
        assert load_spec(EXAMPLES / f"{name}.yaml").fingerprint() == sha, name


def test_validate_prints_the_defaults_it_applied(tmp_path, capsys):
    path = _write(tmp_path / "minimal.yaml", MINIMAL)
    assert main(["--data-dir", str(tmp_path / "data"), "validate", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "defaults applied: aspect_ratio 16:9 (default); style: none (default: prompts carry no style text); " \
           "music: none (default: the soundtrack is silence)" in out
    assert "854x480" in out


def test_a_minimal_spec_renders_with_a_silent_track(env, tmp_path):
    report = env.render(_write(tmp_path / "minimal.yaml", MINIMAL), max_parallel=2)
    assert report.final is not None, [r.error for r in report.failed]
    info = media.probe(report.final.path)
    assert (info.width, info.height) == (854, 480)
    assert abs(info.frames / info.fps - 8) <= 1 / info.fps
    assert info.audio_codec == "aac" and abs(info.audio_duration_s - 8) <= 1 / info.fps
    assert integrated_loudness(report.final.path) <= -69.9  # silence: ebur128's floor (-70 LUFS)
    beat = load_manifest((env.data_dir / "manifests" / "beats" / "minimal-kite" / "000.json").read_bytes())
    assert beat.image_prompt == "A red kite over a green field." and "Style" not in beat.motion_prompt
    music = load_manifest((env.data_dir / "manifests" / "music" / "minimal-kite.json").read_bytes())
    assert music.audio.model == "silence-v1" and music.track == music.audio
    assert [c.item for c in report.final.costs if c.stage == "music"] == ["silent track (no music)"]
    assert report.final.subtitles is None and report.final.mux_method == "stream_copy"


def test_a_brief_without_music_renders(env, tmp_path):
    spec = {"video_id": "brief-no-music", "title": "Tides", "duration_s": 10, "style": "woodcut print",
            "brief": "The moon pulls the sea. The tide rises on the beach."}
    report = env.render(_write(tmp_path / "brief.yaml", spec), max_parallel=2)
    assert report.final is not None, [r.error for r in report.failed]
    plan = report.plan
    assert plan.music is None and plan.narration is None and len(plan.beats) == 2
    info = media.probe(report.final.path)
    assert info.has_audio and abs(info.audio_duration_s - plan.duration_s) <= 1 / info.fps
    assert abs(info.frames / info.fps - 10) <= 1 / info.fps
