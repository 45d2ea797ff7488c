"""The cluster of deploy/ on loopback (``-m cluster`` selects it; it also runs in ``make test``
when Postgres and redis-server are installed, and is skipped with the reason otherwise):

Postgres (Dagster's storage with the run-first ordering, and the ledger), Redis (Celery broker and
result backend), moto's S3 server, the fake Replicate server, a webserver and a daemon with the
cluster's dagster.yaml (``PipelineCeleryRunLauncher``), and two Celery workers, each with its own
DAGSTER_HOME and its own empty data directory. Three specs are submitted through the S3 inbox.
One chunk prediction is held at the fake server; the worker executing it is SIGKILLed (its whole
process group, as if its machine died) while the run waits on it, then the prediction is released.

Asserted: all three final videos are published to S3 and decode to their planned duration; runs
executed on both workers; the killed run was failed by run monitoring and retried on the other
worker; the fake server saw exactly one create per cache key (the minimum: nothing paid twice,
across machines and across the kill).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline import media, models
from pipeline_tests.cluster_stack import missing_services, running_cluster
from pipeline_tests.dagster_services import wait_until
from pipeline_tests.fake_replicate import FakeServerProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1500)]

VIDEO_MODEL = models.DEFAULTS["video"]
VIDEOS = {
    "cluster-fox": [{"prompt": "A fox trots across fresh snow", "duration_s": 5},
                    {"prompt": "The fox curls up under a pine", "duration_s": 5, "motion": "push in"}],
    "cluster-owl": [{"prompt": "An owl blinks on a moonlit branch", "duration_s": 5},
                    {"prompt": "The owl glides over a silver field", "duration_s": 5, "motion": "slow lateral pan"}],
    "cluster-hare": [{"prompt": "A hare sprints along a hedge", "duration_s": 5},
                     {"prompt": "The hare stops and lifts its ears", "duration_s": 5, "motion": "tilt up"}],
}
MIN_CREATES = sum(2 * len(beats) + 1 for beats in VIDEOS.values())
"""One storyboard image and one 5 s chunk per beat, one music track per video."""
RENDER_TIMEOUT_S = 1200.0

# TODO(lead, issue 12): the S3 spec registry / inbox / published videos come with i12-s3 and the
# shared ledger (PIPELINE_LEDGER_URL) with i12-ledger. Until both are merged this test registers
# the specs in every worker's data directory and looks for the finals there, and cannot hold the
# pay-once assertion across machines; remove these fallbacks (and the two flags) after the merge.
S3_REGISTRY = importlib.util.find_spec("pipeline.inbox_s3") is not None
SHARED_LEDGER = "ledger_url" in __import__("pipeline.defs.resources", fromlist=["PipelineResource"]) \
    .PipelineResource.model_fields


@pytest.fixture(scope="module")
def services_present():
    reason = missing_services()
    if reason:
        pytest.skip(reason)


def spec_text(video_id: str) -> str:
    beats = VIDEOS[video_id]
    return yaml.safe_dump({"video_id": video_id, "title": video_id, "aspect_ratio": "16:9",
                           "duration_s": sum(b["duration_s"] for b in beats), "style": "woodcut print",
                           "music": {"prompt": "quiet winter strings", "bpm": 72}, "beats": beats}, sort_keys=False)


def submit(cluster, video_id: str) -> None:
    """Put the spec where the cluster's inbox sensor looks (the S3 inbox prefix)."""
    if S3_REGISTRY:
        cluster.s3().put_object(Bucket=cluster.bucket, Key=cluster.key("inbox", f"{video_id}.yaml"),
                                Body=spec_text(video_id).encode())
        return
    # Fallback until i12-s3: the daemon's local inbox, and the registry of every worker.
    from pipeline.definitions import pipeline_resources
    from pipeline.spec import parse_spec

    spec = parse_spec(yaml.safe_load(spec_text(video_id)))
    for worker in cluster.workers.values():
        pipeline_resources(str(worker.data_dir))["pipeline"].submit_spec(spec, source="test")
    path = cluster.stack.data_dir / "inbox" / f"{video_id}.yaml"
    staged = path.with_suffix(".tmp")
    staged.write_text(spec_text(video_id))
    old = time.time() - 30
    import os

    os.utime(staged, (old, old))
    os.replace(staged, path)


def published(cluster, video_id: str, tmp: Path) -> Path | None:
    """The published final video of ``video_id`` downloaded from S3 (or, before i12-s3, found in a
    worker's data directory), or None if it is not published yet."""
    if S3_REGISTRY:
        key = cluster.key("videos", f"{video_id}.mp4")
        s3 = cluster.s3()
        try:
            s3.head_object(Bucket=cluster.bucket, Key=key)
        except s3.exceptions.ClientError:
            return None
        target = tmp / f"{video_id}.mp4"
        s3.download_file(cluster.bucket, key, str(target))
        return target
    found = [w.data_dir / "videos" / f"{video_id}.mp4" for w in cluster.workers.values()]
    return next((p for p in found if p.is_file()), None)


def describe(instance: dg.DagsterInstance) -> str:
    lines = []
    for record in instance.get_run_records(limit=200):
        run = record.dagster_run
        lines.append(f"{run.run_id[:8]} {run.job_name:15} {run.status.value:9} "
                     f"{run.tags.get('dagster/partition', '')} worker={run.tags.get('pipeline/celery_worker')} "
                     f"parent={run.tags.get('dagster/parent_run_id', '')[:8]}")
    return "\n".join(reversed(lines))


def held_run(instance: dg.DagsterInstance, prediction_id: str) -> dg.DagsterRun | None:
    """The STARTED render_segment run whose logs name ``prediction_id`` (the held chunk)."""
    for run in instance.get_runs(dg.RunsFilter(job_name="render_segment", statuses=[dg.DagsterRunStatus.STARTED])):
        if any(prediction_id in (entry.user_message or "") for entry in instance.all_logs(run.run_id)):
            return run
    return None


def test_three_videos_render_across_two_workers_and_survive_a_killed_worker(services_present, tmp_path, monkeypatch):
    with FakeServerProcess("--run-seconds", "0.3", "0.8", "--render-scale", "0.25") as fake:
        replicate = {"REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url,
                     "REPLICATE_OUTPUT_HOSTS": fake.origin}
        with running_cluster(tmp_path, monkeypatch, replicate=replicate) as cluster, cluster.instance() as instance:
            fake.inject("hold", model=VIDEO_MODEL)  # the first chunk prediction runs until released
            t0 = time.monotonic()
            for video_id in VIDEOS:
                submit(cluster, video_id)

            # Kill the worker executing the held chunk, mid-segment, then let the prediction finish.
            def held() -> tuple[str, dg.DagsterRun] | None:
                cluster.stack.check_alive()
                pending = [p for p in fake.stats()["predictions"]
                           if p["model"].startswith(VIDEO_MODEL.split(":")[0]) and p["status"] == "processing"]
                for prediction in pending:
                    run = held_run(instance, prediction["id"])
                    if run is not None and run.tags.get("pipeline/celery_worker"):
                        return prediction["id"], run
                return None

            prediction_id, victim_run = wait_until(held, timeout=600, interval=1.0, what="the held chunk's run",
                                                   on_timeout=lambda: describe(instance) + "\n" + cluster.tails())
            victim = next(w for w in cluster.workers.values()
                          if w.hostname == victim_run.tags["pipeline/celery_worker"])
            survivor = next(w for w in cluster.workers.values() if w is not victim)
            victim.kill()
            fake.release()

            tmp = tmp_path / "published"
            tmp.mkdir()

            finals: dict[str, Path] = {}

            def all_published() -> bool:
                if survivor.service.proc.poll() is not None:
                    pytest.fail(f"{survivor.name} died\n{survivor.service.tail()}")
                for video_id in VIDEOS:
                    finals[video_id] = finals.get(video_id) or published(cluster, video_id, tmp)
                return all(finals.values())

            wait_until(all_published, timeout=RENDER_TIMEOUT_S, interval=2.0, what="three published videos",
                       on_timeout=lambda: describe(instance) + "\n" + cluster.tails())
            wall_s = time.monotonic() - t0
            stats = fake.stats()
            runs = [r.dagster_run for r in instance.get_run_records()]

    # All three finals are published and decode to their planned duration, with music.
    for video_id, beats in VIDEOS.items():
        info = media.verify_video(finals[video_id])
        planned = sum(b["duration_s"] for b in beats)
        assert abs(info.frames / info.fps - planned) <= 1 / info.fps, (video_id, info.frames, info.fps)
        assert info.has_audio, video_id

    # Runs executed on both workers.
    succeeded = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
    assert {r.tags.get("pipeline/celery_worker") for r in succeeded} == {w.hostname for w in cluster.workers.values()}

    # The killed run: failed by run monitoring (the worker stopped answering), retried on the survivor.
    killed = next(r for r in runs if r.run_id == victim_run.run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE, describe_runs(runs)
    retries = [r for r in runs if r.tags.get("dagster/parent_run_id") == killed.run_id]
    assert [r.status for r in retries] == [dg.DagsterRunStatus.SUCCESS], describe_runs(runs)
    assert retries[0].tags["pipeline/celery_worker"] == survivor.hostname

    # Paid creates: one per cache key, nothing twice (the held prediction was resumed, not re-created).
    creates: dict[str, int] = stats["creates"]
    print(f"\ncluster: 3 videos in {wall_s:.1f} s, {len(runs)} runs, {sum(creates.values())} creates for "
          f"{len(creates)} keys (minimum {MIN_CREATES}); killed {victim.name} during prediction {prediction_id}")
    if SHARED_LEDGER:
        assert {k: n for k, n in creates.items() if n > 1} == {}, creates
        assert len(creates) == MIN_CREATES, creates
    else:
        print("(the ledger is not shared yet: pay-once across machines is not asserted; see the TODO above)")


def describe_runs(runs: list[dg.DagsterRun]) -> str:
    return "\n".join(f"{r.run_id[:8]} {r.job_name} {r.status.value} {r.tags.get('pipeline/celery_worker')} "
                     f"parent={r.tags.get('dagster/parent_run_id', '')[:8]}" for r in runs)
