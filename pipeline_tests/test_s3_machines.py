"""Nothing machine-local with S3 configured, part 2: one video through "machines" that share only
the Dagster instance and moto's S3 server on 127.0.0.1, each with its own empty data directory.
The spec is registered on one, planned on a second (it finds the spec in S3), rendered and
assembled on a third (the final is published to ``videos/<id>.mp4`` in S3, its URI in the final
manifest, decoded with PyAV), found up to date from a fourth, and reported by ``pipeline status``
from a fifth; a deleted published object is noticed and published again."""

from __future__ import annotations

import av
import boto3
import dagster as dg
import pytest

from pipeline.cli import main
from pipeline.definitions import build_definitions
from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import add_partitions, videos
from pipeline.manifests import FinalManifest
from pipeline.orchestration.phantoms import ensure_plan_partitions
from pipeline.orchestration.planner import plan_run
from pipeline.orchestration.render import execute_planned, render_video, retry_video
from pipeline.spec import load_spec
from pipeline_tests.conftest import make_dagster_home, write_spec
from pipeline_tests.test_s3_store import _keys, bucket, moto_endpoint  # noqa: F401 (fixtures)

LOCAL_ONLY_WITHOUT_S3 = ("specs", "videos", "manifests", "media", "cache", "inbox")
"""What each machine's data directory must not hold when S3 is configured."""


def _decode(path) -> tuple[int, float, float]:
    """(video frames, frame rate, audio seconds) of ``path``, every packet decoded with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, rate = sum(1 for _ in container.decode(stream)), float(stream.average_rate)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        audio_s = samples / stream.rate
    return frames, rate, audio_s


def _nothing_local(data_dir) -> list[str]:
    return [name for name in LOCAL_ONLY_WITHOUT_S3 if (data_dir / name).exists()]


def test_one_video_across_machines_with_only_s3_and_the_instance_shared(bucket, tmp_path, monkeypatch, capsys):
    prefix = "cluster/one"
    monkeypatch.setenv("DAGSTER_HOME", str(make_dagster_home(tmp_path / "dagster_home")))
    monkeypatch.setenv("PIPELINE_S3_BUCKET", bucket)
    monkeypatch.setenv("PIPELINE_S3_PREFIX", prefix)
    monkeypatch.delenv("PIPELINE_DATA_DIR", raising=False)
    machines = {name: tmp_path / name for name in ("submitter", "planner", "worker", "checker", "operator")}
    spec_path = write_spec(tmp_path / "two.yaml", video_id="two-machines", duration=10,
                           beats=[{"prompt": "A lighthouse at dusk", "duration_s": 5},
                                  {"prompt": "Its beam sweeps the sea", "duration_s": 5, "motion": "slow pan",
                                   "narration": "The beam sweeps the sea."}])
    s3 = boto3.client("s3")
    with dg.DagsterInstance.get() as instance:
        # Machine 1 registers the spec: it lands in S3, not in its data directory.
        submitter = build_definitions(str(machines["submitter"])).resources["pipeline"]
        sub, changed = submitter.submit_spec(load_spec(spec_path), source=str(spec_path))
        assert changed and _keys(bucket, f"{prefix}/specs/") == [f"{prefix}/specs/two-machines.json"]
        add_partitions(instance, videos, [sub.video_id])

        # Machine 2 (an empty data directory) plans it: plan_video finds the spec in S3.
        planned = execute_planned(build_definitions(str(machines["planner"])), instance, plan_run(sub))
        assert planned.success, planned.error
        plan = planned.outputs["video_spec"]
        assert plan.spec_sha256 == sub.spec_sha256 and len(plan.beats) == 2
        ensure_plan_partitions(instance, plan)  # what the fan-out sensor does

        # Machine 3 renders the segments and the music and assembles (forked workers included).
        worker_defs = build_definitions(str(machines["worker"]))
        report = retry_video(sub.video_id, defs=worker_defs, instance=instance, max_parallel=2)
        assert report.final is not None, [r.error for r in report.failed]
        final = report.final
        published = f"s3://{bucket}/{prefix}/videos/two-machines.mp4"
        assert final.published_uri == published and final.path == published
        assert read_manifest(worker_defs.resources["pipeline"].manifests_dir, "final_video", sub.video_id) == final

        # The published object: a copy of the content-addressed final, with its sha256; it decodes.
        key = f"{prefix}/videos/two-machines.mp4"
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == final.video.bytes and head["Metadata"] == {"sha256": final.video.sha256}
        download = tmp_path / "downloaded.mp4"
        download.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert download.read_bytes() == s3.get_object(
            Bucket=bucket, Key=final.video.uri.split("/", 3)[3])["Body"].read()
        frames, rate, audio_s = _decode(download)
        assert rate == plan.fps and frames == round(10 * plan.fps)
        assert audio_s == pytest.approx(10, abs=0.05)
        # The narrated beat's subtitles are published beside the video in S3, not on the worker.
        for ext in ("vtt", "srt"):
            uri = f"s3://{bucket}/{prefix}/videos/two-machines.{ext}"
            assert final.subtitles is not None and final.subtitles[ext] == uri, final.subtitles
            text = s3.get_object(Bucket=bucket, Key=f"{prefix}/videos/two-machines.{ext}")["Body"].read().decode()
            assert "The beam sweeps the sea." in text and " --> " in text, text
        for name, data_dir in machines.items():
            assert _nothing_local(data_dir) == [], name

        # Machine 4 (empty) finds it up to date by the manifest and the S3 object alone.
        checker_defs = build_definitions(str(machines["checker"]))
        checker = checker_defs.resources["pipeline"]
        assert checker.is_published(final)
        again = render_video(spec_path, defs=checker_defs, instance=instance)
        assert again.up_to_date and again.runs == [] and again.final == final
        assert _nothing_local(machines["checker"]) == []

        # Machine 5: `pipeline status` reads the instance and S3 and shows where the video is.
        capsys.readouterr()
        assert main(["--data-dir", str(machines["operator"]), "status", sub.video_id]) == 0
        out = capsys.readouterr().out.replace("\n", "")
        assert f"final video: {published}" in out and "missing" not in out
        assert _nothing_local(machines["operator"]) == []

        # The published object removed: no machine calls the video up to date; a render publishes it again.
        s3.delete_object(Bucket=bucket, Key=key)
        assert not checker.is_published(final)
        assert main(["--data-dir", str(machines["operator"]), "status", sub.video_id]) == 0
        assert "missing: the published video is not there" in capsys.readouterr().out.replace("\n", " ")
        restored = render_video(spec_path, defs=checker_defs, instance=instance, max_parallel=2)
        assert not restored.up_to_date and restored.final is not None, [r.error for r in restored.failed]
        assert restored.final.published_uri == published and checker.is_published(restored.final)
        assert restored.final.video.sha256 == final.video.sha256  # all from the cache: the same bytes
        assert isinstance(read_manifest(checker.manifests_dir, "final_video", sub.video_id), FinalManifest)
        assert _nothing_local(machines["checker"]) == []
