"""The ledger's tables (SQLAlchemy Core, the same on SQLite and PostgreSQL), the migration of
databases written by older versions, and the records its rows are read into (``Job``,
``PredictionRecord``).

Column types are chosen to match the SQLite files written before SQLAlchemy: TEXT, INTEGER and
floating point (``Double``: REAL affinity in SQLite, ``double precision`` in PostgreSQL, so Unix
seconds keep sub-millisecond precision); booleans are INTEGER 0/1 as those files have them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import sqlalchemy as sa

JobState = Literal["intent", "in_flight", "succeeded", "failed", "canceled"]
Claim = Literal["owner", "succeeded", "busy"]
OPEN_STATES = ("intent", "in_flight")

METADATA = sa.MetaData()

JOBS = sa.Table(
    "jobs", METADATA,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("video_id", sa.Text),
    sa.Column("labels", sa.Text, nullable=False, server_default="{}"),
    sa.Column("state", sa.Text, nullable=False),
    sa.CheckConstraint("state IN ('intent', 'in_flight', 'succeeded', 'failed', 'canceled')", name="jobs_state"),
    sa.Column("prediction_id", sa.Text),
    sa.Column("input_sha256", sa.Text),
    sa.Column("estimate_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    sa.Column("cost_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("error", sa.Text),
    sa.Column("output", sa.Text),
    sa.Column("intent_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # added after the first release (MIGRATED_COLUMNS): older databases get them on open
    sa.Column("owner", sa.Text),
    sa.Column("lease_until", sa.Double),
    sa.Column("retryable", sa.Integer),
    sa.Column("unusable", sa.Text, nullable=False, server_default="{}"),
)
sa.Index("jobs_video", JOBS.c.video_id, JOBS.c.state)
"""One row per cache key: its state, owner and lease, prediction, cost and output (JSON text)."""

PREDICTIONS = sa.Table(
    "predictions", METADATA,
    sa.Column("prediction_id", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("video_id", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("cost_usd", sa.Double, nullable=False, server_default=sa.text("0")),
    sa.Column("adopted", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)
sa.Index("predictions_video", PREDICTIONS.c.video_id)
sa.Index("predictions_created", PREDICTIONS.c.created_at)
"""One row per provider prediction created or adopted, with its cost (USD)."""

MIGRATED_COLUMNS = {"jobs": ("owner", "lease_until", "retryable", "unusable")}
"""Columns added after the first release, by table: added to older databases on open."""


def create_tables(db: sa.Connection, *tables: sa.Table) -> None:
    """Create ``tables`` and their indexes in ``db`` where missing (inside the caller's write
    transaction: the ledger's lock keeps two processes from creating them at once). Idempotent."""
    for table in tables:
        table.create(db, checkfirst=True)
        for index in table.indexes:
            index.create(db, checkfirst=True)


def create_or_migrate(db: sa.Connection) -> None:
    """Create the ledger's tables in ``db`` (inside the caller's write transaction), and add the
    columns older databases lack (``ALTER TABLE ... ADD COLUMN``, each nullable or with a default,
    so existing rows stay valid). Idempotent."""
    create_tables(db, *METADATA.sorted_tables)
    inspector = sa.inspect(db)
    for name, columns in MIGRATED_COLUMNS.items():
        have = {c["name"] for c in inspector.get_columns(name)}
        table = METADATA.tables[name]
        for column in (table.c[c] for c in columns if c not in have):
            db.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN {_column_ddl(db, column)}"))


def _column_ddl(db: sa.Connection, column: sa.Column) -> str:
    ddl = f"{column.name} {column.type.compile(dialect=db.dialect)}"
    if column.server_default is not None:
        default = column.server_default.arg
        literal = "'" + str(default).replace("'", "''") + "'"
        ddl += f" DEFAULT {default.text if isinstance(default, sa.TextClause) else literal}"
    if not column.nullable:
        assert column.server_default is not None, f"{column.name}: a NOT NULL column added later needs a default"
        ddl += " NOT NULL"
    return ddl


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


def job_from_row(row: Mapping[str, Any], **decided: Any) -> Job:
    """The ``Job`` of a ``jobs`` row (a mapping by column name), plus what ``Ledger.begin`` decided (``claim``, ``resumed``, ...)."""
    return Job(key=row["key"], provider=row["provider"], model=row["model"], video_id=row["video_id"],
               labels=json.loads(row["labels"] or "{}"), state=row["state"], prediction_id=row["prediction_id"],
               input_sha256=row["input_sha256"], estimate_usd=row["estimate_usd"], cost_usd=row["cost_usd"],
               attempts=row["attempts"], error=row["error"],
               output=json.loads(row["output"]) if row["output"] else None,
               intent_at=row["intent_at"], updated_at=row["updated_at"], owner=row["owner"],
               lease_until=row["lease_until"], retryable=None if row["retryable"] is None else bool(row["retryable"]),
               unusable=json.loads(row["unusable"] or "{}"), **decided)
