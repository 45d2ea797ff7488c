"""Handoff: a finishing run submits the next stage's runs itself, instead of waiting for a sensor
tick (DESIGN.md "Orchestration"; BENCHMARKS.md section 9).

The sensor daemon loops every 5 s and that loop is not configurable
(``dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME``), so every sensor hop of a video costs 4-5 s
between one stage ending and the next being queued: plan -> segment runs, last segment ->
assembly. Here the run that ends a stage queues the next one at once, with exactly the runs the
sensor would request (the same planner, ``planner.fanout_runs`` / ``planner.assembly_run``), and
the same identity: the sensor's name (``dagster/sensor_name``) and run key (``dagster/run_key``),
and the repository of the running code location. So:

- when the sensor ticks afterwards, Dagster's own run-key check finds those runs and skips them
  ("already completed with run keys"): the sensors stay as they are, as the backstop for anything
  a handoff did not cover (a materialization from the UI's asset job, a crashed handoff, a run
  launched without a code location);
- a sensor request and a handoff that race each other are settled by the run coordinator
  (``coordinator.VideoRunCoordinator``): one queued run per sensor and run key, the other one is
  canceled with a message naming the first;
- each handed-off run is tagged ``pipeline/handoff_from=<run id>``, so the UI shows who queued it.

What hands off (``HANDOFF_AFTER``): a ``plan_video`` run after its last asset (``characters``)
fans the video out, as ``segment_fanout_sensor`` would (segment keys added, phantoms recorded); a
``render_segment`` run after ``chunk_videos`` and a ``render_music`` run after ``music`` queue
``assemble_video`` when that makes the video ready, as ``assembly_sensor`` would (the check and
the run's creation are done under the video's assembly lock, so two segments ending together
queue one assembly). Nothing hands off for runs ``pipeline render`` executes in-process (tag
``pipeline/launched_by=cli``: the CLI runs its own stages), for runs without a code location
origin (``execute_in_process``), for instances whose run coordinator does not queue runs, or with
``PIPELINE_HANDOFF=0`` in the run's environment (benchmarks compare both).

A handoff never fails the run that makes it: its errors are logged, and the sensor does the work
on its next tick.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._utils.hosted_user_process import recon_repository_from_origin
from dagster._core.remote_origin import RemoteJobOrigin
from dagster._core.origin import JobPythonOrigin
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import partition_key
from pipeline.manifests import VideoPlan
from pipeline.orchestration.coordinator import assembly_lock, video_for_tags
from pipeline.orchestration.phantoms import ensure_plan_partitions
from pipeline.orchestration.planner import LAUNCHED_BY_TAG, PlannedRun, assembly_run, fanout_runs
from pipeline.orchestration.status import assembly_runs, video_status
from pipeline.orchestration.tags import MUSIC_JOB, PLAN_JOB, SEGMENT_JOB
from pipeline.text_objects import TextObjects

log = logging.getLogger(__name__)

HANDOFF_TAG = "pipeline/handoff_from"
"""Run tag of a handed-off run: the id of the run that queued it."""
FANOUT_SENSOR, ASSEMBLY_SENSOR = "segment_fanout_sensor", "assembly_sensor"
"""The sensors whose requests a handoff makes early (``pipeline.defs.sensors``)."""
HANDOFF_AFTER = {PLAN_JOB: "characters", SEGMENT_JOB: "chunk_videos", MUSIC_JOB: "music"}
"""Job -> the asset after whose step the run hands off (the job's last asset)."""
ENV_SWITCH = "PIPELINE_HANDOFF"
"""Environment variable: ``0`` turns handoffs off (the sensors then do all of it)."""


@dataclass(frozen=True)
class Handoff:
    """What one handoff did: the runs it queued (ids), and why it queued nothing, if it did not."""

    queued: tuple[str, ...] = ()
    skipped: str | None = None


def handoff_blocker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Why ``run`` may not hand off (for the log), or None when it may (module doc)."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return f"{ENV_SWITCH}=0"
    if run.tags.get(LAUNCHED_BY_TAG) == "cli":
        return "run executed by `pipeline render`/`retry`, which runs its own stages"
    if run.remote_job_origin is None or run.job_code_origin is None:
        return "run has no code location origin (executed in-process)"
    if not isinstance(instance.run_coordinator, dg.QueuedRunCoordinator):
        return "the instance's run coordinator does not queue runs"
    return None


def _existing_keys(instance: dg.DagsterInstance, sensor: str, keys: Sequence[str]) -> set[str]:
    found = set()
    for key in keys:  # one query per key, as Dagster's sensor daemon does (fetch_existing_runs)
        runs = instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: key, SENSOR_NAME_TAG: sensor}), limit=1)
        if runs:
            found.add(key)
    return found


def create_runs(instance: dg.DagsterInstance, origin: dg.DagsterRun, planned: Sequence[PlannedRun],
                sensor: str) -> Iterator[dg.DagsterRun]:
    """Create (``NOT_STARTED``), one at a time, the runs of ``planned`` that ``sensor`` has not
    created yet (by run key), as that sensor's requests would be: the job from the repository
    ``origin`` runs in (``origin.job_code_origin``), partition tags and run config resolved by
    ``dg.RunRequest``, tags ``planned.tags`` + ``dagster/sensor_name`` + ``dagster/run_key`` +
    ``pipeline/handoff_from``. Yields each as it is created, in ``planned``'s order, so the caller
    can queue the first (the longest beat chain) before the others are created: creating a run
    costs 0.1-0.5 s (its event log, its planned-materialization events). Raises whatever Dagster
    raises for a job or partition the repository does not have."""
    skip = _existing_keys(instance, sensor, [p.run_key for p in planned])
    todo = [p for p in planned if p.run_key not in skip]
    if not todo:
        return
    assert origin.remote_job_origin is not None and origin.job_code_origin is not None
    repository = recon_repository_from_origin(origin.job_code_origin.repository_origin).get_definition()
    for p in todo:
        job = repository.get_job(p.job)
        request = dg.RunRequest(job_name=p.job, partition_key=partition_key(p.video_id, p.segment), run_key=p.run_key,
                                tags={**p.tags, SENSOR_NAME_TAG: sensor, RUN_KEY_TAG: p.run_key,
                                      HANDOFF_TAG: origin.run_id})
        request = request.with_resolved_tags_and_config(target_definition=job, dynamic_partitions_requests=[],
                                                        dynamic_partitions_store=instance)
        yield instance.create_run_for_job(
            job, run_config=request.run_config, tags={**job.run_tags, **request.tags},
            status=dg.DagsterRunStatus.NOT_STARTED,
            remote_job_origin=RemoteJobOrigin(repository_origin=origin.remote_job_origin.repository_origin,
                                              job_name=p.job),
            job_code_origin=JobPythonOrigin(p.job, origin.job_code_origin.repository_origin))


def submit_runs(instance: dg.DagsterInstance, runs: Iterable[dg.DagsterRun]) -> tuple[str, ...]:
    """Submit each of ``runs`` to the instance's run coordinator (the queue) as it comes. Returns
    the ids of those that were queued (not canceled as a duplicate by the coordinator)."""
    queued = []
    for run in runs:
        after = instance.submit_run(run.run_id, workspace=None)  # type: ignore[arg-type]  # the queue needs none
        if after.status != dg.DagsterRunStatus.CANCELED:
            queued.append(run.run_id)
    return tuple(queued)


def fan_out(instance: dg.DagsterInstance, origin: dg.DagsterRun, plan: VideoPlan) -> Handoff:
    """After ``origin`` (a ``plan_video`` run) materialized ``plan``'s ``video_spec``: add the
    video's segment keys and record its phantoms (``phantoms.ensure_plan_partitions``), then queue
    one ``render_segment`` run per real segment and ``render_music`` (``planner.fanout_runs``, keyed
    on the materialization's storage id as ``segment_fanout_sensor`` does). Nothing when the
    latest ``video_spec`` of the video is not ``origin``'s (a newer plan is its own handoff's)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("video_spec"), asset_partitions=[plan.video_id]), limit=1).records
    if not records or records[0].run_id != origin.run_id:
        return Handoff(skipped="the video's latest video_spec is not this run's")
    ensure_plan_partitions(instance, plan)
    queued = submit_runs(instance, create_runs(instance, origin, fanout_runs(plan, records[0].storage_id),
                                               FANOUT_SENSOR))
    return Handoff(queued=queued) if queued else Handoff(skipped="fanned out already")


def assemble_when_ready(instance: dg.DagsterInstance, origin: dg.DagsterRun,
                        manifests_dir: str | Path | TextObjects, video_id: str) -> Handoff:
    """After ``origin`` (a segment or music run of ``video_id``) materialized its asset: queue
    ``assemble_video`` if the video is now ready to assemble and its state is not assembled or
    being assembled (``planner.assembly_run``, as ``assembly_sensor`` decides). The decision and
    the run's creation happen under the video's assembly lock; the submission after it (the run
    coordinator takes that lock itself)."""
    with assembly_lock(instance, video_id):
        status = video_status(instance, manifests_dir, video_id)
        planned = assembly_run(status, assembly_runs(instance, video_id, status.assembly_state))
        if not isinstance(planned, PlannedRun):
            return Handoff(skipped=str(planned))
        runs = list(create_runs(instance, origin, [planned], ASSEMBLY_SENSOR))
    queued = submit_runs(instance, runs)
    return Handoff(queued=queued) if queued else Handoff(skipped="requested already")


def hand_off(instance: dg.DagsterInstance, run_id: str, asset: str,
             manifests_dir: str | Path | TextObjects) -> Handoff:
    """The handoff of run ``run_id`` after its step of ``asset`` succeeded (``HANDOFF_AFTER``):
    ``fan_out`` after a plan (read from its ``video_spec`` manifest in ``manifests_dir``),
    ``assemble_when_ready`` after a segment or the music. Returns what it did; never raises for a
    run that may not hand off (``handoff_blocker``)."""
    run = instance.get_run_by_id(run_id)
    if run is None or HANDOFF_AFTER.get(run.job_name) != asset:
        return Handoff(skipped="not a handoff point")
    if (blocker := handoff_blocker(instance, run)) is not None:
        return Handoff(skipped=blocker)
    video_id = video_for_tags(run.tags)
    if not video_id:
        return Handoff(skipped="run of no single video")
    if run.job_name == PLAN_JOB:
        plan = read_manifest(manifests_dir, "video_spec", video_id)
        if not isinstance(plan, VideoPlan):
            return Handoff(skipped="plan manifest unreadable")
        return fan_out(instance, run, plan)
    return assemble_when_ready(instance, run, manifests_dir, video_id)

