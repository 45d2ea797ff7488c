"""The Definitions load with the documented asset graph, and the CLI renders and reports errors."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from pipeline import media
from pipeline.cli import main
from pipeline.definitions import defs
from pipeline_tests.conftest import ROOT, write_spec


def test_asset_graph_is_the_documented_one():
    graph = defs.resolve_asset_graph()
    deps = {key.to_user_string(): sorted(k.to_user_string() for k in graph.get(key).parent_keys)
            for key in graph.get_all_asset_keys()}
    assert deps == {
        "video_spec": [],
        "characters": ["video_spec"],
        "narration": ["video_spec"],
        "beats": ["narration", "video_spec"],
        "storyboard_images": ["beats", "characters", "video_spec"],
        "chunk_videos": ["beats", "storyboard_images", "video_spec"],
        "stitched_video": ["chunk_videos", "video_spec"],
        "music": ["video_spec"],
        "soundtrack": ["music", "narration", "video_spec"],
        "final_video": ["music", "soundtrack", "stitched_video", "video_spec"],
    }
    per_segment = {"narration", "beats", "storyboard_images", "chunk_videos"}
    for key in graph.get_all_asset_keys():
        pdef = graph.get(key).partitions_def
        if key.to_user_string() in per_segment:
            assert isinstance(pdef, dg.MultiPartitionsDefinition)
            assert sorted(d.name for d in pdef.partitions_defs) == ["segment", "video"]
        else:
            assert isinstance(pdef, dg.DynamicPartitionsDefinition) and pdef.name == "videos"
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()}
    assert pools["storyboard_images"] == {"image_api"} and pools["chunk_videos"] == {"video_api"}
    assert pools["music"] == {"music_api"} and not pools["characters"]  # plan runs never wait for a pool slot


def test_dagster_definitions_validate_from_the_repo_root(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Validation successful" in proc.stderr + proc.stdout


def test_cli_render_prints_the_summary_and_a_playable_file(env, tmp_path, capsys):
    spec = write_spec(tmp_path / "cli.yaml", video_id="cli-video")
    assert main(["render", str(spec), "--max-parallel", "2"]) == 0
    out = capsys.readouterr().out
    final = env.data_dir.resolve() / "videos" / "cli-video.mp4"
    assert str(final) in out.replace("\n", "")
    for needle in ("segment", "000", "001", "002", "music", "total", "16", "3 beats", "4 chunks"):
        assert needle in out
    info = media.probe(final)
    assert abs(info.duration_s - 16) <= 1 / 24 and info.has_audio
    # The runs landed in the instance at $DAGSTER_HOME.
    assert len(env.instance.get_run_records(dg.RunsFilter(tags={"video": "cli-video"}))) == 6


def test_cli_rejects_a_bad_spec_with_file_and_field(env, tmp_path, capsys):
    spec = write_spec(tmp_path / "bad.yaml", video_id="Bad_Id", colour="blue")
    assert main(["render", str(spec)]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert str(spec) in err and "video_id" in err and "colour: unknown field" in err
    assert not (env.data_dir / "specs").exists()  # nothing registered
    assert main(["render", str(tmp_path / "missing.yaml")]) == 2


def test_cli_validate_shows_the_plan(capsys):
    assert main(["validate", str(ROOT / "examples" / "too-many-beats.yaml")]) == 0
    out = capsys.readouterr().out
    assert "6 beats" in out and "dropped the last 6 beats" in out
