"""The Dagster instance as the CLI uses it: opened safely by many processes at once, with runs
that name the process executing them, and runs of processes that are gone reported failed.

- ``open_instance``: Dagster's SQLite storages create their tables on first open and race when
  several processes open a fresh ``$DAGSTER_HOME`` at once ("table runs already exists", or an
  ``alembic_version`` table left with two heads, which breaks the instance for good). Opening
  and initializing every storage under a file lock in ``$DAGSTER_HOME`` serializes exactly that.
- ``OWNER_TAG``: every run the CLI executes carries ``pipeline/owner = host:pid:start`` of the
  process executing it (``pipeline.procs.ProcessIdentity``).
- ``run_owner_state`` / ``fail_dead_runs``: a run still STARTING/STARTED (or NOT_STARTED for over
  a minute) whose owner is a process of this host that is gone was killed with it; it is reported
  failed instead of showing as running forever. ``run_owner_state`` is a plain function of
  (instance, run) so a run launcher's health check (run monitoring) can reuse it.
- ``instance_home``: the ``$DAGSTER_HOME`` an instance was opened from, so a render's forked
  workers open the very same instance (``open_instance(home)``) without reading the environment.
- ``cli_startup``: what the CLI runs before render / retry / status: the dead-run sweep and the
  temp-file sweep (``pipeline.housekeeping.sweep_temp``).
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dagster as dg

from pipeline.housekeeping import SweepReport, sweep_temp
from pipeline.procs import ProcessIdentity, file_lock

log = logging.getLogger("pipeline.instance")

OWNER_TAG = "pipeline/owner"
"""Run tag: ``host:pid:start`` of the process executing the run (``str(ProcessIdentity)``)."""

INSTANCE_LOCK = ".pipeline-instance.lock"
"""Lock file in ``$DAGSTER_HOME`` held while a process opens and initializes the instance."""

DEAD_RUNS_LOCK = ".pipeline-dead-runs.lock"
"""Lock file in the instance's root directory held while dead runs are reported failed."""

NOT_STARTED_GRACE_S = 60.0
"""A NOT_STARTED run of a dead owner is failed only once it is this old (seconds)."""

IN_FLIGHT = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)

OwnerState = Literal["alive", "dead", "unknown"]


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` as a path. Raises RuntimeError if it is unset (Dagster needs it)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise RuntimeError("DAGSTER_HOME is not set")
    return Path(home)


def initialize_storages(instance: dg.DagsterInstance) -> None:
    """Touch every storage of ``instance`` (runs, event log and its index, schedules, dynamic
    partitions), so each one creates its tables now rather than lazily in the middle of a run."""
    instance.get_runs(limit=1)
    instance.all_instigator_state()
    instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION), limit=1)
    instance.get_dynamic_partitions("videos")


_OPENED_HOME: list[Path] = []
"""The home of the last instance ``open_instance`` opened in this process; forked workers inherit it."""
_HOMES: "weakref.WeakKeyDictionary[dg.DagsterInstance, Path]" = weakref.WeakKeyDictionary()
"""The home of each instance ``open_instance`` returned."""


def open_instance(home: str | Path | None = None) -> dg.DagsterInstance:
    """The Dagster instance at ``home`` (its ``dagster.yaml``), opened and initialized under an
    exclusive file lock ``<home>/.pipeline-instance.lock``, so any number of processes can open a
    fresh home at once. ``home`` None: ``$DAGSTER_HOME``, else the home this process (or the
    parent it was forked from) last opened, so a render's forked workers open the parent's
    instance without any environment variable. Takes a few hundred ms per waiting process on a
    fresh home, about 1 ms more than an unlocked open afterwards. Raises RuntimeError if there is
    no home to open, and whatever Dagster raises for a broken instance."""
    if home is None:
        home = os.environ.get("DAGSTER_HOME") or (str(_OPENED_HOME[-1]) if _OPENED_HOME else None)
    home = Path(home).expanduser().resolve() if home else dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(home / INSTANCE_LOCK):
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            initialize_storages(instance)
        except BaseException:
            instance.dispose()
            raise
    _OPENED_HOME[:] = [home]
    _HOMES[instance] = home
    return instance


def instance_home(instance: dg.DagsterInstance) -> Path:
    """The ``$DAGSTER_HOME`` directory ``instance`` was opened from: the one ``open_instance`` was
    given, else (an instance from ``DagsterInstance.get()``) ``$DAGSTER_HOME``. Raises RuntimeError
    for an ephemeral instance, or one of unknown home: no other process can open it."""
    if instance in _HOMES:
        return _HOMES[instance]
    if instance.is_ephemeral:
        raise RuntimeError("an ephemeral Dagster instance cannot be shared with worker processes; "
                           "open a persistent one (open_instance)")
    try:
        return dagster_home().resolve()
    except RuntimeError:
        raise RuntimeError("the Dagster instance's home is unknown: open it with open_instance(home), "
                           "or set DAGSTER_HOME") from None


def owner_tags() -> dict[str, str]:
    """``{OWNER_TAG: "host:pid:start"}`` of this process, for the runs it executes."""
    return {OWNER_TAG: str(ProcessIdentity.current())}


def run_owner_state(instance: dg.DagsterInstance, run: dg.DagsterRun) -> OwnerState:
    """Whether the process named by ``run``'s ``pipeline/owner`` tag still runs: "alive",
    "dead" (a process of this host that is gone, pid reuse included), or "unknown" (no tag, a
    malformed one, or a process on another host). ``instance`` is unused today; it is part of the
    signature so a run launcher's health check can look further (e.g. a heartbeat)."""
    owner = ProcessIdentity.parse(run.tags.get(OWNER_TAG))
    if owner is None:
        return "unknown"
    alive = owner.is_alive()
    return "unknown" if alive is None else ("alive" if alive else "dead")


def _candidates(instance: dg.DagsterInstance, grace_s: float) -> list[dg.DagsterRun]:
    records = instance.get_run_records(dg.RunsFilter(statuses=[*IN_FLIGHT, dg.DagsterRunStatus.NOT_STARTED]))
    now = time.time()
    out = []
    for record in records:
        run = record.dagster_run
        if OWNER_TAG not in run.tags:
            continue
        if run.status == dg.DagsterRunStatus.NOT_STARTED and now - record.create_timestamp.timestamp() < grace_s:
            continue
        out.append(run)
    return out


def fail_dead_runs(instance: dg.DagsterInstance, *, not_started_grace_s: float = NOT_STARTED_GRACE_S) -> list[str]:
    """Report failed every run that is STARTING or STARTED (or NOT_STARTED for more than
    ``not_started_grace_s`` seconds) and whose owner process is dead (``run_owner_state``),
    with a message naming that process. Returns the run ids failed. Runs of live owners, of
    other hosts and without the owner tag (e.g. launched through a code server) are left alone.
    The CLI's runs carry the tag, and so do runs of ``ForkServerRunLauncher`` (the same rule as its
    ``check_run_worker_health``, which run monitoring calls while the daemon runs). Serialized
    with other processes by a file lock in the instance's root directory, and each run's status
    is read again under it, so two sweeps never fail one run twice."""
    if not _candidates(instance, not_started_grace_s):
        return []
    failed = []
    with file_lock(Path(instance.root_directory) / DEAD_RUNS_LOCK):
        for run in _candidates(instance, not_started_grace_s):
            if run_owner_state(instance, run) != "dead":
                continue
            current = instance.get_run_by_id(run.run_id)
            if current is None or current.status not in (*IN_FLIGHT, dg.DagsterRunStatus.NOT_STARTED):
                continue
            owner = run.tags[OWNER_TAG]
            instance.report_run_failed(
                current, f"The process executing this run (host:pid:start {owner}) is gone: it was killed or "
                         f"crashed while the run was {current.status.value}. Run `pipeline retry` or render again; "
                         "finished work is reused.")
            failed.append(run.run_id)
    if failed:
        log.warning("reported %d run(s) of dead processes failed: %s", len(failed), ", ".join(failed))
    return failed


@dataclass
class Housekeeping:
    """What ``cli_startup`` did: runs reported failed, and the temp-file sweep."""

    failed_runs: list[str] = field(default_factory=list)
    sweep: SweepReport = field(default_factory=SweepReport)


def cli_startup(instance: dg.DagsterInstance, data_dir: str | Path) -> Housekeeping:
    """The CLI's housekeeping before render / retry / status: ``fail_dead_runs`` on
    ``instance``, then ``sweep_temp`` of ``data_dir``. Never raises for a temp file it cannot
    remove. Costs a run query plus a directory walk (milliseconds)."""
    failed = fail_dead_runs(instance)
    return Housekeeping(failed, sweep_temp(data_dir))
