"""The cluster of deploy/ on loopback (``-m cluster`` selects it; it also runs in ``make test``
when Postgres and redis-server are installed, and is skipped with the reason otherwise):

Postgres (Dagster's storage with the run-first ordering, and the ledger), Redis (Celery broker and
result backend), moto's S3 server, the fake Replicate server, a webserver and a daemon with the
cluster's dagster.yaml (``PipelineCeleryRunLauncher``), and two Celery workers, each with its own
DAGSTER_HOME and its own empty data directory. Three specs are submitted through the S3 inbox.
The first chunk prediction is held at the fake server. While its run waits on it, the whole
worker executing that run is SIGKILLed (its process group, as if its machine died); the run is
retried on the other worker, which adopts the held prediction; then the process executing that
retry is SIGKILLed (its worker lives); the third run of the segment finishes once the prediction
is released.

Asserted: all three final videos are published to S3 and decode to their planned duration; runs
executed on both workers; both killed runs were failed by run monitoring (the worker's silence for
the first, Celery's WorkerLostError for the second), and the segment's third run succeeded on the
surviving worker; no run failed for another reason; the fake server saw exactly one create per
cache key (the minimum: nothing paid twice, across machines and across the kills). Specs go in
with ``pipeline submit`` and ``pipeline status`` reads each video back, both on a "client
machine" (the cluster's environment, an empty data directory).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline import media, models
from pipeline_tests.cluster_stack import missing_services, running_cluster
from pipeline_tests.dagster_services import BIN, ROOT, wait_until
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


def pipeline_cli(cluster, *args: str) -> subprocess.CompletedProcess:
    """``pipeline ARGS`` as a client machine runs it against the cluster: the cluster's
    environment (its dagster.yaml, S3, ledger) and an empty data directory of its own."""
    client = cluster.root / "client-data"
    client.mkdir(exist_ok=True)
    env = {**cluster.stack.env, "PIPELINE_DATA_DIR": str(client)}
    return subprocess.run([str(BIN / "pipeline"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def submit_all(cluster, staging: Path) -> None:
    """Submit every spec where the cluster's inbox sensor looks: ``pipeline submit`` (the S3 inbox
    prefix) on a client machine, three at once."""
    staging.mkdir(exist_ok=True)
    client = cluster.root / "client-data"
    client.mkdir(exist_ok=True)
    env = {**cluster.stack.env, "PIPELINE_DATA_DIR": str(client)}
    procs = {}
    for video_id in VIDEOS:
        spec = staging / f"{video_id}.yaml"
        spec.write_text(spec_text(video_id))
        procs[video_id] = subprocess.Popen([str(BIN / "pipeline"), "submit", str(spec)], env=env, cwd=ROOT,
                                           text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for video_id, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"pipeline submit {video_id}: exit {proc.returncode}\n{out}"


def published(cluster, video_id: str, tmp: Path) -> Path | None:
    """The published final video of ``video_id`` (``<prefix>/videos/<id>.mp4`` in S3) downloaded
    into ``tmp``, or None if it is not published yet."""
    key = cluster.key("videos", f"{video_id}.mp4")
    s3 = cluster.s3()
    try:
        s3.head_object(Bucket=cluster.bucket, Key=key)
    except s3.exceptions.ClientError:
        return None
    target = tmp / f"{video_id}.mp4"
    s3.download_file(cluster.bucket, key, str(target))
    return target


def describe(instance: dg.DagsterInstance) -> str:
    lines = []
    for record in instance.get_run_records(limit=200):
        run = record.dagster_run
        lines.append(f"{run.run_id[:8]} {run.job_name:15} {run.status.value:9} "
                     f"{run.tags.get('dagster/partition', '')} worker={run.tags.get('pipeline/celery_worker')} "
                     f"parent={run.tags.get('dagster/parent_run_id', '')[:8]}")
    return "\n".join(reversed(lines))


def held_run(instance: dg.DagsterInstance, prediction_id: str, parent: str | None = None) -> dg.DagsterRun | None:
    """The STARTED render_segment run whose logs name ``prediction_id`` (the held chunk); with
    ``parent``, only a retry of run ``parent``."""
    for run in instance.get_runs(dg.RunsFilter(job_name="render_segment", statuses=[dg.DagsterRunStatus.STARTED])):
        if parent is not None and run.tags.get("dagster/parent_run_id") != parent:
            continue
        if any(prediction_id in (entry.user_message or "") for entry in instance.all_logs(run.run_id)):
            return run
    return None


def held_runs(fake, instance: dg.DagsterInstance, parent: str | None = None) -> list[tuple[str, dg.DagsterRun]]:
    """[(prediction id, run)] of the held chunk prediction (the server holds the first chunk
    prediction created) while it is processing, with the STARTED run polling it (tagged by the
    worker hook; with ``parent``, a retry of that run); [] before that."""
    chunks = [p for p in fake.stats()["predictions"] if p["model"].startswith(VIDEO_MODEL)]  # oldest first
    if not chunks or chunks[0]["status"] != "processing":
        return []
    run = held_run(instance, chunks[0]["id"], parent)
    if run is None or not (run.tags.get("pipeline/celery_worker") and run.tags.get("pipeline/owner")):
        return []
    return [(chunks[0]["id"], run)]


def retry_chain(runs: list[dg.DagsterRun], run_id: str) -> list[dg.DagsterRun]:
    """The runs retrying ``run_id``, then their retries, ..., oldest first."""
    chain, current = [], run_id
    while True:
        children = [r for r in runs if r.tags.get("dagster/parent_run_id") == current]
        if not children:
            return chain
        assert len(children) == 1, describe_runs(runs)
        chain.append(children[0])
        current = children[0].run_id


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return "\n".join(e.message or "" for e in events)


def test_three_videos_render_across_two_workers_and_survive_killed_workers(services_present, tmp_path, monkeypatch):
    from pipeline.procs import ProcessIdentity

    with FakeServerProcess("--run-seconds", "0.3", "0.8", "--render-scale", "0.25") as fake:
        # A 2 s sync wait: the held chunk's create answers (and its run logs the prediction id, which
        # the kill below waits for) after 2 s instead of 60; every other prediction still ends in
        # the create's answer.
        replicate = {"REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url,
                     "REPLICATE_OUTPUT_HOSTS": fake.origin, "REPLICATE_SYNC_WAIT_S": "2"}
        with running_cluster(tmp_path, monkeypatch, replicate=replicate) as cluster, cluster.instance() as instance:
            fake.inject("hold", model=VIDEO_MODEL)  # the first chunk prediction waits for release()
            t0 = time.monotonic()
            submit_all(cluster, tmp_path / "specs")
            diagnose = lambda: describe(instance) + "\n" + cluster.tails()  # noqa: E731
            [(prediction_id, lost_worker_run)] = wait_until(
                lambda: cluster.stack.check_alive() or held_runs(fake, instance), timeout=600, interval=1.0,
                what="the held chunk's run", on_timeout=diagnose)

            # 1. A whole worker dies (its process group, as if its machine was lost) in the middle of
            #    the chunk: nothing records it; the launcher's health check stops hearing the worker,
            #    run monitoring fails the run and run retries launch it again, on the survivor.
            victim = next(w for w in cluster.workers.values()
                          if w.hostname == lost_worker_run.tags["pipeline/celery_worker"])
            survivor = next(w for w in cluster.workers.values() if w is not victim)
            victim.kill()
            # 2. The retry adopts the held prediction (shared ledger: its owner is dead) and polls it.
            #    Now the process executing that retry dies (SIGKILL), its worker lives: Celery records
            #    the task failed (WorkerLostError), run monitoring fails the run, it is retried again.
            [(_, lost_process_run)] = wait_until(
                lambda: survivor.service.proc.poll() is None and held_runs(fake, instance, lost_worker_run.run_id),
                timeout=600, interval=1.0, what="the retry polling the held chunk", on_timeout=diagnose)
            assert lost_process_run.tags["pipeline/celery_worker"] == survivor.hostname
            os.kill(ProcessIdentity.parse(lost_process_run.tags["pipeline/owner"]).pid, signal.SIGKILL)
            wait_until(lambda: instance.get_run_by_id(lost_process_run.run_id).status == dg.DagsterRunStatus.FAILURE,
                       timeout=300, interval=1.0, what="the run whose process was killed to be failed",
                       on_timeout=diagnose)
            fake.release()  # the third run of that segment finishes the prediction: paid once

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
                       on_timeout=diagnose)
            wall_s = time.monotonic() - t0
            stats = fake.stats()
            runs = [r.dagster_run for r in instance.get_run_records()]
            messages = {r.run_id: failure_message(instance, r.run_id) for r in runs
                        if r.status == dg.DagsterRunStatus.FAILURE}
            connections = cluster.postgres.connections("dagster")
            statuses = {v: pipeline_cli(cluster, "status", v) for v in VIDEOS}
            # `pipeline retry` on a client machine, against the cluster's instance, ledger and S3:
            # every segment is done and the state assembled, so it re-renders and pays for nothing.
            runs_before = len(runs)
            retried = pipeline_cli(cluster, "retry", next(iter(VIDEOS)))
            retry_creates = sum(fake.stats()["creates"].values()) - sum(stats["creates"].values())
            retry_runs = len(instance.get_run_records()) - runs_before

    # All three finals are published and decode to their planned duration, with music.
    for video_id, beats in VIDEOS.items():
        info = media.verify_video(finals[video_id])
        planned = sum(b["duration_s"] for b in beats)
        assert abs(info.frames / info.fps - planned) <= 1 / info.fps, (video_id, info.frames, info.fps)
        assert info.has_audio, video_id

    # `pipeline status` on a client machine reads the cluster: every video done, published in S3.
    for video_id, status in statuses.items():
        assert status.returncode == 0, f"pipeline status {video_id}: exit {status.returncode}\n{status.stdout}"
        uri = f"s3://{cluster.bucket}/{cluster.key('videos', video_id + '.mp4')}"
        assert uri in status.stdout.replace("\n", ""), status.stdout

    assert retried.returncode == 0, f"pipeline retry: exit {retried.returncode}\n{retried.stdout}\n{retried.stderr}"
    assert (retry_creates, retry_runs) == (0, 0), (retry_creates, retry_runs, retried.stdout)
    assert f"s3://{cluster.bucket}/" in retried.stdout.replace("\n", ""), retried.stdout

    # Runs executed on both workers, and every run names its worker.
    succeeded = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
    assert {r.tags.get("pipeline/celery_worker") for r in succeeded} == {w.hostname for w in cluster.workers.values()}

    # Both killed runs were failed by run monitoring, each for its reason, and retried until done.
    by_id = {r.run_id: r for r in runs}
    assert by_id[lost_process_run.run_id].status == dg.DagsterRunStatus.FAILURE, describe_runs(runs)
    assert "WorkerLostError" in messages[lost_process_run.run_id], messages
    assert by_id[lost_worker_run.run_id].status == dg.DagsterRunStatus.FAILURE, describe_runs(runs)
    assert f"Celery worker {victim.hostname}" in messages[lost_worker_run.run_id], messages
    assert "has not answered pings" in messages[lost_worker_run.run_id], messages
    # Nothing else failed, for no other reason: no run waited for a start that never came (a task a
    # dead worker had prefetched) until run monitoring's start timeout.
    for run_id, message in messages.items():
        assert "WorkerLostError" in message or f"Celery worker {victim.hostname}" in message, (run_id, message)
    for run_id in messages:
        chain = retry_chain(runs, run_id)
        assert chain and chain[-1].status == dg.DagsterRunStatus.SUCCESS, describe_runs(runs)
    chain = retry_chain(runs, lost_worker_run.run_id)
    assert [r.run_id for r in chain[:1]] == [lost_process_run.run_id] and len(chain) == 2, describe_runs(runs)
    assert chain[-1].tags["pipeline/celery_worker"] == survivor.hostname

    # Paid creates: one per cache key, nothing twice (the held predictions were resumed, not re-created).
    creates: dict[str, int] = stats["creates"]
    print(f"\ncluster: 3 videos in {wall_s:.1f} s, {len(runs)} runs, {sum(creates.values())} creates for "
          f"{len(creates)} keys (minimum {MIN_CREATES}); killed {victim.name}, then its run's retry's process, "
          f"during prediction {prediction_id}; {connections} connections to Dagster's database since it was created")
    assert {k: n for k, n in creates.items() if n > 1} == {}, creates
    assert len(creates) == MIN_CREATES, creates


def describe_runs(runs: list[dg.DagsterRun]) -> str:
    return "\n".join(f"{r.run_id[:8]} {r.job_name} {r.status.value} {r.tags.get('pipeline/celery_worker')} "
                     f"parent={r.tags.get('dagster/parent_run_id', '')[:8]}" for r in runs)
