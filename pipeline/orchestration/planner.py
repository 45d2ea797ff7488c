"""The run planner: which runs a video needs, in what order, with which tags and run keys, and
when it is up to date. One planner for every launcher (DESIGN.md "Orchestration"): the sensors
and the retry schedule wrap its ``PlannedRun``s in ``dg.RunRequest``s, the CLI executes them
in-process (``pipeline.orchestration.render``). Plain functions over plans, submissions and
statuses; no Dagster import, no I/O except ``up_to_date``'s check that the published video exists
(done by the caller's ``published`` check, or on the local file).

- ``plan_run(submission)``: ``plan_video`` for a registered spec version.
- ``fanout_runs(plan, spec_storage_id)``: one ``render_segment`` run per real segment, longest beat
  chains first, and ``render_music``, all at once: nothing here serializes a video's beats (the
  per-video limit in dagster.yaml is sized so they run together; the CLI's ``--max-parallel`` is
  the CLI's own choice).
- ``retry_runs(statuses, attempts)``: the schedule's bounded re-requests of failed segments.
- ``assembly_run(status, runs)``: ``assemble_video`` for the video's current *assembly state*
  (the storage id of its newest input), or ``Waiting`` saying what it waits on, e.g.
  ``segments 002 (failed), 004 (running); music (missing)``. One assembly per state, whoever asks:
  the run carries ``pipeline/assembly_state``, and a state with a run in progress or succeeded is
  not assembled again (the sensor and the CLI consult ``status.assembly_runs``; the run
  coordinator cancels a duplicate that slips between check and launch).
- ``video_tags``: the tags every run of a video carries: ``video`` (found by one filter, counted
  against the per-video run limit), ``pipeline/spec`` and ``pipeline/provider``.
- ``up_to_date(status, final, submission)``: nothing to do for this registration.

Phantom segments are never planned: a real segment is one with index < len(plan.beats). The tag
names and job names are ``pipeline.orchestration.tags``' (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.manifests import FinalManifest, PlannedBeat, VideoPlan
from pipeline.orchestration.tags import (  # noqa: F401 - the planner's names, re-exported
    ASSEMBLE_JOB,
    ASSEMBLY_STATE_TAG,
    ATTEMPT_TAG,
    LAUNCHED_BY_TAG,
    MUSIC_JOB,
    PLAN_JOB,
    RETRY_TAG,
    SEGMENT_JOB,
    VIDEO_TAG,
    video_of_partition,
)
from pipeline.submissions import PROVIDER_TAG, SPEC_TAG, Submission

if TYPE_CHECKING:
    from pipeline.orchestration.status import VideoStatus

MAX_SCHEDULED_RETRIES = 3
"""Scheduled re-requests per segment and spec version; after that a person decides (backfill/CLI)."""

STATE_WORDS = {"in_progress": "running", "failed": "failed", "stale": "stale", "missing": "missing"}


@dataclass(frozen=True)
class PlannedRun:
    """One run to launch: ``job`` for ``video_id`` (and ``segment`` for a per-segment job),
    ``run_key`` (sensor idempotence), ``tags``, and a short ``name`` for people ("segment 002")."""

    job: str
    video_id: str
    segment: str | None
    run_key: str
    tags: dict[str, str]
    name: str

    @property
    def partition_key(self) -> str:
        """The Dagster partition key as text: ``segment|video`` (dimension names sorted) or the video id."""
        return f"{self.segment}|{self.video_id}" if self.segment is not None else self.video_id


@dataclass(frozen=True)
class RunSummary:
    """What the planner needs to know of an existing run (``status.run_summary``)."""

    run_id: str
    job: str
    status: str
    in_progress: bool
    succeeded: bool
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Waiting:
    """Why a video is not assembled now. ``reasons``: what it waits on, for people. ``blocked``:
    some of it needs an action (a failed, missing or stale input); False when it resolves by
    itself (runs in progress). ``runs``: ids of runs in progress it waits for. ``assembled_by``:
    the run that already assembled (or is assembling) this state."""

    video_id: str
    reasons: tuple[str, ...]
    blocked: bool = True
    runs: tuple[str, ...] = ()
    assembled_by: RunSummary | None = None

    def __str__(self) -> str:
        return "; ".join(self.reasons)


def video_tags(source: VideoPlan | Submission | str, **extra: str) -> dict[str, str]:
    """The tags of every run of a video: ``video``, plus ``pipeline/spec`` (version, 12 hex digits)
    and ``pipeline/provider`` when ``source`` is a plan or a submission (``Submission.run_tags``),
    and ``extra`` (keys with ``/`` are given as ``**{"pipeline/retry": "cli"}``)."""
    if isinstance(source, Submission):
        tags = source.run_tags()
    elif isinstance(source, VideoPlan):
        tags = {VIDEO_TAG: source.video_id, SPEC_TAG: source.spec_sha256[:12], PROVIDER_TAG: source.provider}
    else:
        tags = {VIDEO_TAG: source}
    return {**tags, **extra}


def plan_run(submission: Submission, **extra_tags: str) -> PlannedRun:
    """``plan_video`` for ``submission``'s registered version (run key: video and version)."""
    return PlannedRun(PLAN_JOB, submission.video_id, None, f"{submission.video_id}:{submission.spec_sha256[:16]}",
                      video_tags(submission, **extra_tags), "video_spec")


def segment_run(plan: VideoPlan, beat: PlannedBeat, run_key: str, **extra_tags: str) -> PlannedRun:
    """``render_segment`` for one real beat of ``plan``."""
    return PlannedRun(SEGMENT_JOB, plan.video_id, beat.segment, run_key, video_tags(plan, **extra_tags),
                      f"segment {beat.segment}")


def music_run(plan: VideoPlan, run_key: str, **extra_tags: str) -> PlannedRun:
    """``render_music`` for ``plan``'s video."""
    return PlannedRun(MUSIC_JOB, plan.video_id, None, run_key, video_tags(plan, **extra_tags), "music")


def fanout_runs(plan: VideoPlan, spec_storage_id: int | str, *, segments: Iterable[str] | None = None,
                music: bool = True, **extra_tags: str) -> list[PlannedRun]:
    """The runs that render ``plan`` after its ``video_spec`` materialization ``spec_storage_id``:
    one ``render_segment`` per real segment (only those in ``segments`` when given; phantom keys
    there are ignored), longest beat chains first (the makespan is bounded below by the longest
    chain), and ``render_music`` (if ``music``) after the longer half, so it runs beside the
    segments rather than last. Run keys carry the storage id: a re-planned video fans out again."""
    wanted = None if segments is None else set(segments)
    beats = [b for b in plan.beats if wanted is None or b.segment in wanted]
    runs = [segment_run(plan, b, f"{plan.video_id}:{b.segment}:{spec_storage_id}", **extra_tags)
            for b in sorted(beats, key=lambda b: (-b.duration_s, b.index))]
    if music:
        runs.insert(len(runs) // 2, music_run(plan, f"{plan.video_id}:music:{spec_storage_id}", **extra_tags))
    return runs


def retry_runs(statuses: Iterable[VideoStatus], attempts: Mapping[str, Mapping[str, int]], *,
               max_attempts: int = MAX_SCHEDULED_RETRIES) -> tuple[list[PlannedRun], list[str]]:
    """The retry schedule's runs: each failed real segment of each planned video in ``statuses``
    that had fewer than ``max_attempts`` scheduled retries for its current spec version
    (``attempts[video_id][segment]``, from ``status.scheduled_retry_attempts``), tagged
    ``pipeline/retry=scheduled`` and ``pipeline/retry_attempt=N``. Returns (runs, the segments
    that gave up as "video/segment")."""
    runs, exhausted = [], []
    for status in statuses:
        plan = status.plan
        if plan is None:
            continue
        for seg in status.segments:
            if seg.state != "failed":
                continue
            done = attempts.get(status.video_id, {}).get(seg.segment, 0)
            if done >= max_attempts:
                exhausted.append(f"{status.video_id}/{seg.segment}")
                continue
            beat = plan.beat_for_segment(seg.segment)
            if beat is None:
                continue
            attempt = done + 1
            runs.append(segment_run(plan, beat, f"{plan.video_id}:{seg.segment}:retry:{plan.spec_sha256[:12]}:{attempt}",
                                    **{RETRY_TAG: "scheduled", ATTEMPT_TAG: str(attempt)}))
    return runs, exhausted


def _segment_words(status: VideoStatus) -> list[str]:
    return [f"{s.segment} ({STATE_WORDS[s.state]})" for s in status.segments if s.state != "materialized"]


def waiting_reasons(status: VideoStatus) -> Waiting | None:
    """What keeps ``status``'s video from being ready to assemble (None when it is ready):
    its plan, the real segments that are not done, and its music."""
    video_id = status.video_id
    if status.plan is None or status.spec_storage_id is None:
        return Waiting(video_id, ("video_spec (not materialized)",))
    reasons, blocked = [], False
    pending = _segment_words(status)
    if pending:
        reasons.append("segments " + ", ".join(pending))
        blocked = any(s.state != "in_progress" for s in status.segments if s.state != "materialized")
    music = status.video_assets.get("music", "missing")
    if music != "materialized":
        reasons.append(f"music ({STATE_WORDS[music]})")
        blocked = blocked or music != "in_progress"
    if not reasons:
        return None
    runs = tuple(s.latest_run_id for s in status.segments if s.state == "in_progress" and s.latest_run_id)
    if music == "in_progress" and status.latest_runs.get("music"):
        runs += (status.latest_runs["music"],)
    return Waiting(video_id, tuple(reasons), blocked=blocked, runs=runs)


def assembly_run(status: VideoStatus, runs: Sequence[RunSummary] = (), **extra_tags: str) -> PlannedRun | Waiting:
    """``assemble_video`` for ``status``'s current assembly state, or ``Waiting``: for its inputs
    (``waiting_reasons``), for a run of the same state in progress (``runs``: the state's
    ``assemble_video`` runs, ``status.assembly_runs``), or because that state was assembled
    already (a run succeeded, or ``final_video`` is newer than every input). The run key names the
    state (the sensor fires once per state; a re-materialized segment is a new state)."""
    waiting = waiting_reasons(status)
    if waiting is not None:
        return waiting
    state = status.assembly_state
    video_id = status.video_id
    for run in runs:
        if run.in_progress:
            return Waiting(video_id, (f"assembly of this state already in progress (run {run.run_id[:8]}, "
                                      f"{run.status.lower()})",), blocked=False, runs=(run.run_id,), assembled_by=run)
    for run in runs:
        if run.succeeded:
            return Waiting(video_id, (f"this state was assembled already (run {run.run_id[:8]})",), blocked=False,
                           assembled_by=run)
    if (status.final_storage_id or 0) > (state or 0):
        return Waiting(video_id, ("final_video is newer than every input (up to date)",), blocked=False)
    assert status.plan is not None and state is not None
    return PlannedRun(ASSEMBLE_JOB, video_id, None, f"{video_id}:assemble:{state}",
                      video_tags(status.plan, **{ASSEMBLY_STATE_TAG: str(state), **extra_tags}), "assemble")


def up_to_date(status: VideoStatus, final: FinalManifest | None, submission: Submission | None,
               published: Callable[[FinalManifest], bool] | None = None) -> bool:
    """Whether the video needs nothing for ``submission`` (its registered version): the
    materialized plan is of that version (``spec_sha256``), every real segment and the music are
    materialized after it, ``final_video`` is materialized after all of them, and its published
    video is there: ``published(final)`` (``PipelineResource.is_published``: the S3 object, or the
    local file), by default the local file ``final.path`` exists."""
    plan = status.plan
    if plan is None or submission is None or plan.spec_sha256 != submission.spec_sha256:
        return False
    state = status.assembly_state
    if state is None or (status.final_storage_id or 0) <= state:
        return False
    if not isinstance(final, FinalManifest):
        return False
    return published(final) if published is not None else Path(final.path).exists()
