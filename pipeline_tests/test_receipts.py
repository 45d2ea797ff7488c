"""Render receipts: an up-to-date ``pipeline render SPEC`` answers without Dagster, and anything that
changes what the render would look at sends it the full way (pipeline.receipts, pipeline.cli_fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_tests.cli_processes import clean_env, pipeline_command
from pipeline_tests.conftest import make_dagster_home, write_spec

PROBE = ("import sys; from pipeline.cli_fast import main; code = main(sys.argv[1:]); "
         "print('DAGSTER_IMPORTED' if 'dagster' in sys.modules else 'NO_DAGSTER'); sys.exit(code)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A 3-beat local render through the real ``pipeline`` command (which writes the receipt)."""
    root = tmp_path_factory.mktemp("receipts")
    home = make_dagster_home(root / "dagster_home")
    data = root / "data"
    spec = write_spec(root / "tiny.yaml", beats=[{"prompt": "A red kite", "duration_s": 5},
                                                 {"prompt": "A blue kite", "duration_s": 5}])
    env = clean_env(DAGSTER_HOME=str(home), PIPELINE_DATA_DIR=str(data), COLUMNS="200")
    first = subprocess.run([*pipeline_command(), "render", str(spec)], env=env, cwd=root, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "up to date" not in first.stdout
    return root, spec, data, env


def probe(rendered, *args: str) -> subprocess.CompletedProcess:
    root, spec, _data, env = rendered
    argv = list(args) or ["render", str(spec)]
    return subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)


def test_up_to_date_render_answers_without_dagster(rendered):
    _root, _spec, data, _env = rendered
    assert len(list((data / "receipts").glob("*.json"))) == 1
    out = probe(rendered)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "up to date: tiny was already rendered" in out.stdout
    assert "NO_DAGSTER" in out.stdout
    assert f"final video: {data / 'videos' / 'tiny.mp4'}" in out.stdout
    # the same table as the full path: 2 beats, 2 chunks, nothing paid
    assert "2 beats, 2 chunks, paid $0.0000" in out.stdout


def test_options_other_than_max_parallel_take_the_full_path(rendered):
    _root, spec, _data, _env = rendered
    out = probe(rendered, "render", str(spec), "--max-parallel", "3")
    assert "NO_DAGSTER" in out.stdout and out.returncode == 0
    forced = probe(rendered, "render", str(spec), "--provider", "local")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "DAGSTER_IMPORTED" in forced.stdout and "up to date" in forced.stdout


def _rewrite(path: Path) -> bytes:
    before = path.read_bytes()
    data = json.loads(before)
    path.write_text(json.dumps(data, indent=3))  # same content, other bytes: a re-materialization
    return before


def test_a_changed_manifest_or_published_file_takes_the_full_path(rendered):
    _root, _spec, data, _env = rendered
    manifest = data / "manifests" / "chunk_videos" / "tiny" / "001.json"
    before = _rewrite(manifest)
    out = probe(rendered)
    assert "DAGSTER_IMPORTED" in out.stdout and out.returncode == 0, out.stdout + out.stderr
    manifest.write_bytes(before)
    assert "NO_DAGSTER" in probe(rendered).stdout  # the receipt holds again for the same bytes

    video = data / "videos" / "tiny.mp4"
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # replaced by someone else
    out = probe(rendered)
    assert "DAGSTER_IMPORTED" in out.stdout and out.returncode == 0, out.stdout + out.stderr


def test_an_edited_spec_is_a_new_request(rendered, tmp_path):
    root, spec, data, env = rendered
    edited = tmp_path / "tiny.yaml"
    edited.write_text(spec.read_text().replace("A red kite", "A green kite"))
    out = subprocess.run([sys.executable, "-c", PROBE, "render", str(edited)], env=env, cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DAGSTER_IMPORTED" in out.stdout and "up to date" not in out.stdout


def test_no_receipt_when_an_input_is_newer_than_the_final(tmp_path):
    from pipeline.receipts import fresh_receipt, write_receipt

    data = tmp_path / "data"
    final_dir = data / "manifests" / "final_video"
    final_dir.mkdir(parents=True)
    video = data / "videos" / "v.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"not really a video")
    (final_dir / "v.json").write_text(json.dumps({
        "kind": "final", "video_id": "v", "path": str(video), "beats": 1, "chunks": 1, "cost_usd": 0.0, "costs": [],
        "video": {"kind": "media", "uri": str(video), "sha256": "0" * 64, "size": 18, "mime": "video/mp4"}}))
    (data / "specs").mkdir()
    (data / "specs" / "v.json").write_text("{}")
    seg = data / "manifests" / "chunk_videos" / "v" / "000.json"
    seg.parent.mkdir(parents=True)
    seg.write_text("{}")
    final_ns = (final_dir / "v.json").stat().st_mtime_ns
    os.utime(seg, ns=(final_ns + 10**9, final_ns + 10**9))
    try:
        written = write_receipt(data, "k" * 64, "v")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"write_receipt raised {exc!r}")
    assert written is None
    assert fresh_receipt(data, "k" * 64) is None


def test_receipts_are_off_with_s3(monkeypatch, tmp_path):
    from pipeline.receipts import fresh_receipt, receipts_enabled, write_receipt

    monkeypatch.setenv("PIPELINE_S3_BUCKET", "bucket")
    assert not receipts_enabled()
    assert write_receipt(tmp_path, "k", "v") is None and fresh_receipt(tmp_path, "k") is None


def test_a_changed_reference_image_is_a_new_request(tmp_path):
    """A character's reference image is part of the spec's version although the spec file is unchanged."""
    from PIL import Image

    from pipeline.receipts import fresh_receipt, write_receipt

    data = tmp_path / "data"
    (data / "manifests" / "final_video").mkdir(parents=True)
    (data / "specs").mkdir()
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    (data / "manifests" / "final_video" / "v.json").write_text("{}")
    (data / "specs" / "v.json").write_text("{}")
    ref = tmp_path / "hero.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(ref)
    import pipeline.receipts as receipts

    written = receipts._receipt_path(data, "k")
    written.parent.mkdir(parents=True)
    # a receipt as write_receipt makes it, with the image among its inputs
    assert write_receipt(data, "k", "v", inputs=[ref]) is None  # "{}" is no final manifest: nothing written
    written.write_text(json.dumps({"version": receipts.RECEIPT_VERSION, "video_id": "v", "files": {
        "manifests/final_video/v.json": receipts._digest(data / "manifests" / "final_video" / "v.json"),
        "specs/v.json": receipts._digest(data / "specs" / "v.json")},
        "inputs": {str(ref.resolve()): receipts._digest(ref)},
        "published": {"path": str(video), "size": 1, "mtime_ns": video.stat().st_mtime_ns}}))
    checked = []
    real = receipts._digest
    receipts_digest = lambda p: checked.append(Path(p).name) or real(p)  # noqa: E731
    try:
        receipts._digest = receipts_digest
        assert fresh_receipt(data, "k") is None  # "{}" is not a plan: refused after every check
        assert "hero.png" in checked
        Image.new("RGB", (32, 32), (10, 200, 10)).save(ref)
        checked.clear()
        assert fresh_receipt(data, "k") is None and checked == ["hero.png"]  # refused at the image
    finally:
        receipts._digest = real
