"""The ledger's SQLite schema, the migration of files written by older versions, and the records
its rows are read into (``Job``, ``PredictionRecord``)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Literal

JobState = Literal["intent", "in_flight", "succeeded", "failed", "canceled"]
Claim = Literal["owner", "succeeded", "busy"]
OPEN_STATES = ("intent", "in_flight")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key            TEXT PRIMARY KEY,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    video_id       TEXT,
    labels         TEXT NOT NULL DEFAULT '{}',
    state          TEXT NOT NULL CHECK (state IN ('intent', 'in_flight', 'succeeded', 'failed', 'canceled')),
    prediction_id  TEXT,
    input_sha256   TEXT,
    estimate_usd   REAL NOT NULL DEFAULT 0,
    cost_usd       REAL NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0,
    error          TEXT,
    output         TEXT,
    intent_at      REAL NOT NULL,
    updated_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_video ON jobs (video_id, state);
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id  TEXT PRIMARY KEY,
    key            TEXT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    video_id       TEXT,
    status         TEXT NOT NULL,
    cost_usd       REAL NOT NULL DEFAULT 0,
    adopted        INTEGER NOT NULL DEFAULT 0,
    error          TEXT,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_video ON predictions (video_id);
CREATE INDEX IF NOT EXISTS predictions_created ON predictions (created_at);
"""

_MIGRATIONS = {  # columns added after the first release: name -> definition
    "jobs": {"owner": "TEXT", "lease_until": "REAL", "retryable": "INTEGER", "unusable": "TEXT NOT NULL DEFAULT '{}'"},
}


def create_or_migrate(db: sqlite3.Connection) -> None:
    """Create the ledger's tables in ``db`` (inside the caller's write transaction), and add the
    columns older files lack (``ALTER TABLE ... ADD COLUMN``). Idempotent."""
    for statement in filter(str.strip, _SCHEMA.split(";")):
        db.execute(statement)
    for table, columns in _MIGRATIONS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        for name, definition in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


@dataclass(frozen=True)
class Job:
    """A ``jobs`` row, plus what ``Ledger.begin`` decided. Times are Unix seconds; money is USD.

    - ``owner``: ``str(ProcessIdentity)`` of the process working on an open job; ``lease_until``
      when its claim lapses unless renewed.
    - ``claim`` (set by ``begin``): "owner" (the caller works on it), "succeeded" (adopt its output),
      "busy" (another live owner has it: wait). ``resumed``: the caller owns a job that was already
      open (its own from an earlier attempt, or taken over); ``took_over_from``: the previous owner
      when it was taken over (lease expired or owner dead).
    - ``unusable``: {cause: {"count": n, "message": ..., plus details}} of paid outputs that could not
      be used, over all attempts of this key. ``retryable``: whether the last failure may pass.
    """

    key: str
    provider: str
    model: str
    video_id: str | None
    labels: dict[str, str]
    state: JobState
    prediction_id: str | None
    input_sha256: str | None
    estimate_usd: float
    cost_usd: float
    attempts: int
    error: str | None
    output: Any
    intent_at: float
    updated_at: float
    owner: str | None = None
    lease_until: float | None = None
    retryable: bool | None = None
    unusable: dict[str, dict[str, Any]] = field(default_factory=dict)
    claim: Claim | None = None
    resumed: bool = False
    took_over_from: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True)
class PredictionRecord:
    """A ``predictions`` row: one provider prediction, its status and what it cost (USD).
    ``created_at`` (Unix seconds) is when the prediction became known to the ledger (create returned
    or it was adopted), the time a paid prediction counts at in ``Ledger.spent_between``."""

    prediction_id: str
    key: str
    provider: str
    model: str
    video_id: str | None
    status: str
    cost_usd: float
    adopted: bool
    error: str | None
    created_at: float
    updated_at: float


def job_from_row(row: sqlite3.Row, **decided: Any) -> Job:
    """The ``Job`` of a ``jobs`` row, plus what ``Ledger.begin`` decided (``claim``, ``resumed``, ...)."""
    return Job(key=row["key"], provider=row["provider"], model=row["model"], video_id=row["video_id"],
               labels=json.loads(row["labels"] or "{}"), state=row["state"], prediction_id=row["prediction_id"],
               input_sha256=row["input_sha256"], estimate_usd=row["estimate_usd"], cost_usd=row["cost_usd"],
               attempts=row["attempts"], error=row["error"],
               output=json.loads(row["output"]) if row["output"] else None,
               intent_at=row["intent_at"], updated_at=row["updated_at"], owner=row["owner"],
               lease_until=row["lease_until"], retryable=None if row["retryable"] is None else bool(row["retryable"]),
               unusable=json.loads(row["unusable"] or "{}"), **decided)
