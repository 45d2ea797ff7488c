"""Instance storage whose run events become visible only after the run record reflects them.

Why: Dagster's ``DagsterInstance.handle_new_event`` stores a run event (RUN_FAILURE, ...) first and
updates the run's status and its ``dagster/will_retry`` tag afterwards. Its run-retry daemon
(``EventLogConsumerDaemon``) reads new RUN_FAILURE events every 5 s and looks at the *run record*:
a run that is still STARTED with no ``will_retry`` tag is "not retried", and the daemon's cursor
moves past the event for good. A reader that lands between the two writes therefore never retries
the run. On an idle machine the window is milliseconds; with the whole test suite and a CPU hog on
2 cores it was seen to lose the retry of a SIGKILLed run (dagster 1.13.27, SQLite storage). Run
status sensors and the UI read the same pair and can see a failure event for a run still running.

``RunFirstSqliteEventLogStorage`` reverses the order: for a run event it updates the run record
(status, timestamps) and, for RUN_FAILURE with run retries on, sets ``dagster/will_retry`` exactly
as Dagster computes it, and only then stores the event. It reports
``handles_run_events_in_store_event`` so the instance does not apply the run event a second time.

``RunFirstSqliteStorage`` is Dagster's ``storage: sqlite`` with that event log storage; the
repository's ``dagster.yaml`` selects it with ``storage: custom:`` and the same ``base_dir``, so the
files on disk are the ones ``storage: sqlite`` writes. ``RunFirstEventLogMixin`` holds the rule;
``pipeline.orchestration.storage_postgres`` applies it to Dagster's Postgres storage (a cluster).
"""

from __future__ import annotations

from dagster._core.events.log import EventLogEntry
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._time import datetime_from_timestamp

from pipeline.orchestration.sqlite_event_log import FastSqliteEventLogStorage


def apply_run_event_first(instance, event: EventLogEntry) -> None:
    """Apply a run event (``is_job_event``) to ``instance``'s run storage, as
    ``DagsterInstance.handle_new_event`` would after storing it: the run's status and times, and
    for RUN_FAILURE with run retries enabled the ``dagster/will_retry`` tag (Dagster's own
    ``auto_reexecution_should_retry_run``). Other events are ignored. Errors: whatever the run
    storage raises (the event is then not stored either)."""
    from dagster._core.events import RunFailureReason
    from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG, WILL_RETRY_TAG
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import auto_reexecution_should_retry_run

    dagster_event = event.dagster_event if event.is_dagster_event else None
    if dagster_event is None or not dagster_event.is_job_event:
        return
    instance.run_storage.handle_run_event(event.run_id, dagster_event, datetime_from_timestamp(event.timestamp))
    if not (dagster_event.is_run_failure and instance.run_retries_enabled):
        return
    run = instance.get_run_by_id(event.run_id)
    if run is None:
        return
    reason = run.tags.get(RUN_FAILURE_REASON_TAG)
    will_retry = auto_reexecution_should_retry_run(instance, run, RunFailureReason(reason) if reason else None)
    instance.add_run_tags(event.run_id, {WILL_RETRY_TAG: str(will_retry).lower()})


class RunFirstEventLogMixin:
    """Mixin for a Dagster ``EventLogStorage`` class (put it first in the bases): a run event is
    applied to the run record (``apply_run_event_first``) before the storage's own ``store_event``
    stores it, and the storage reports ``handles_run_events_in_store_event`` so the instance does
    not apply it again. Used by ``RunFirstSqliteEventLogStorage`` and, for Postgres,
    ``pipeline.orchestration.storage_postgres.RunFirstPostgresEventLogStorage``."""

    @property
    def handles_run_events_in_store_event(self) -> bool:
        return self.has_instance  # without an instance there is no run storage to apply them to

    def store_event(self, event: EventLogEntry) -> None:
        if self.has_instance:
            apply_run_event_first(self._instance, event)
        super().store_event(event)  # type: ignore[misc]


class RunFirstSqliteEventLogStorage(RunFirstEventLogMixin, FastSqliteEventLogStorage):
    """Dagster's SQLite event log storage (without its per-event set-up costs:
    ``FastSqliteEventLogStorage``), except that a run event is applied to the run record
    (``apply_run_event_first``) before the event itself is stored. See the module docstring."""


class RunFirstSqliteStorage(DagsterSqliteStorage):
    """``storage: sqlite`` (same ``base_dir`` config, same files) with
    ``RunFirstSqliteEventLogStorage`` as its event log storage. Select it in dagster.yaml with::

        storage:
          custom:
            module: pipeline.orchestration.storage
            class: RunFirstSqliteStorage
            config:
              base_dir: data/dagster/storage
    """

    def __init__(self, base_dir: str, inst_data=None):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage = RunFirstSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> "RunFirstSqliteStorage":  # type: ignore[override]
        return cls.from_local(inst_data=inst_data, **config_value)
