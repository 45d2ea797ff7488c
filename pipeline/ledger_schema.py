"""The ledger's SQLite schema, and the migration of files written by older versions."""

from __future__ import annotations

import sqlite3

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
