"""The prediction ledger and the budget: a durable record of every paid provider job.

One SQLite file (``<data dir>/ledger.sqlite`` by default) shared by every process of a run:

- ``jobs``: one row per cache key (``GenerationRequest.cache_key()``): ``intent`` (written before
  the provider's create call), ``in_flight`` (the prediction id, written the moment create returns),
  then ``succeeded`` / ``failed`` / ``canceled``. A rerun that finds ``in_flight`` resumes polling
  that prediction; one that finds ``intent`` without an id looks the job up on the provider before
  creating another (the create may have happened just before a crash).
- ``predictions``: one row per provider prediction ever created or adopted, with its cost (USD).
  Spend is the sum of these, so a paid prediction whose output was lost still counts.

Budget (``max_cost_usd``, per video): ``Ledger.begin`` checks, in the same write transaction that
records the intent, that the video's spend so far plus the estimates of its jobs still in flight
plus this call's estimate stay within the budget; otherwise it raises BudgetExceededError before
anything is paid. Concurrent processes serialize on SQLite's write lock, so parallel segments
cannot overshoot together.

Writes use WAL journaling with ``synchronous=FULL``: a committed state survives a killed process.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pipeline.providers.base import ProviderError

JobState = Literal["intent", "in_flight", "succeeded", "failed", "canceled"]
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
"""


class BudgetExceededError(ProviderError):
    """A call would take a video's spend past its ``max_cost_usd``; it was not made (never retryable)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class Job:
    """A ``jobs`` row. Times are Unix seconds; money is USD.

    ``resumed`` is True when ``Ledger.begin`` found the job already open (``intent`` or
    ``in_flight``) from an earlier, interrupted attempt instead of starting it.
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
    resumed: bool = False


@dataclass(frozen=True)
class PredictionRecord:
    """A ``predictions`` row: one provider prediction, its status and what it cost (USD)."""

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


def _job(row: sqlite3.Row, resumed: bool = False) -> Job:
    return Job(key=row["key"], provider=row["provider"], model=row["model"], video_id=row["video_id"],
               labels=json.loads(row["labels"] or "{}"), state=row["state"], prediction_id=row["prediction_id"],
               input_sha256=row["input_sha256"], estimate_usd=row["estimate_usd"], cost_usd=row["cost_usd"],
               attempts=row["attempts"], error=row["error"],
               output=json.loads(row["output"]) if row["output"] else None,
               intent_at=row["intent_at"], updated_at=row["updated_at"], resumed=resumed)


class Ledger:
    """The SQLite ledger at ``path`` (created with its parent directory on first use).

    Every method opens its own connection, so one Ledger may be used from many threads, and many
    processes may share the file. Raises sqlite3.Error only for a broken file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from the start (BEGIN IMMEDIATE)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> Job | None:
        """The job of cache key ``key``, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return _job(row) if row else None

    def jobs(self, video_id: str | None = None) -> list[Job]:
        """All jobs (of one video), oldest intent first."""
        with self._connect() as db:
            if video_id is None:
                rows = db.execute("SELECT * FROM jobs ORDER BY intent_at").fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs WHERE video_id = ? ORDER BY intent_at", (video_id,)).fetchall()
        return [_job(r) for r in rows]

    def predictions(self, video_id: str | None = None, key: str | None = None) -> list[PredictionRecord]:
        """Every prediction recorded (for one video and/or cache key), oldest first."""
        sql, args = "SELECT * FROM predictions WHERE 1=1", []
        if video_id is not None:
            sql, args = sql + " AND video_id = ?", args + [video_id]
        if key is not None:
            sql, args = sql + " AND key = ?", args + [key]
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY created_at", args).fetchall()
        return [PredictionRecord(prediction_id=r["prediction_id"], key=r["key"], provider=r["provider"],
                                 model=r["model"], video_id=r["video_id"], status=r["status"], cost_usd=r["cost_usd"],
                                 adopted=bool(r["adopted"]), error=r["error"], created_at=r["created_at"],
                                 updated_at=r["updated_at"]) for r in rows]

    @staticmethod
    def _committed(db: sqlite3.Connection, video_id: str | None, exclude_key: str | None = None) -> float:
        spent = db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM predictions WHERE video_id IS ?",
                           (video_id,)).fetchone()[0]
        reserved = db.execute(
            "SELECT COALESCE(SUM(estimate_usd), 0) FROM jobs WHERE video_id IS ? AND state IN ('intent', 'in_flight')"
            " AND key IS NOT ?", (video_id, exclude_key)).fetchone()[0]
        return float(spent) + float(reserved)

    def spent_usd(self, video_id: str | None) -> float:
        """USD paid for ``video_id``'s predictions (every prediction, whether or not its output was used)."""
        with self._connect() as db:
            return float(db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM predictions WHERE video_id IS ?",
                                    (video_id,)).fetchone()[0])

    def committed_usd(self, video_id: str | None) -> float:
        """Spent plus the estimates of the video's jobs still open (intent / in flight), USD."""
        with self._connect() as db:
            return self._committed(db, video_id)

    # --- transitions ---------------------------------------------------------------------------

    def begin(self, key: str, *, provider: str, model: str, video_id: str | None, estimate_usd: float,
              max_cost_usd: float | None = None, input_sha256: str | None = None,
              labels: dict[str, str] | None = None) -> Job:
        """Record the intent to call the provider for ``key``, or find the job already open.

        - open (``intent``/``in_flight``) from an interrupted attempt: returned with ``resumed=True``,
          unchanged (its estimate is already reserved; no budget check).
        - ``succeeded``: returned unchanged (the caller re-fetches that prediction's output for free).
        - none, ``failed`` or ``canceled``: if ``max_cost_usd`` is set and the video's committed
          spend plus ``estimate_usd`` would exceed it, raises BudgetExceededError and records
          nothing; else writes a fresh ``intent`` (attempts + 1) and returns it.
        """
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
            if row is not None and row["state"] in OPEN_STATES:
                return _job(row, resumed=True)
            if row is not None and row["state"] == "succeeded":
                return _job(row)
            if max_cost_usd is not None:
                committed = self._committed(db, video_id, exclude_key=key)
                if committed + estimate_usd > max_cost_usd + 1e-9:
                    raise BudgetExceededError(
                        f"{video_id or 'this video'}: refusing a {model} call estimated at ${estimate_usd:.4f}: "
                        f"${committed:.4f} of the ${max_cost_usd:.2f} budget (max_cost_usd) is already spent or "
                        f"committed, and this call would take it to ${committed + estimate_usd:.4f}")
            attempts = (row["attempts"] if row is not None else 0) + 1
            db.execute(
                "INSERT INTO jobs (key, provider, model, video_id, labels, state, prediction_id, input_sha256,"
                " estimate_usd, cost_usd, attempts, error, output, intent_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'intent', NULL, ?, ?, 0, ?, NULL, NULL, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET provider=excluded.provider, model=excluded.model,"
                " video_id=excluded.video_id, labels=excluded.labels, state='intent', prediction_id=NULL,"
                " input_sha256=excluded.input_sha256, estimate_usd=excluded.estimate_usd, cost_usd=0,"
                " attempts=excluded.attempts, error=NULL, output=NULL, intent_at=excluded.intent_at,"
                " updated_at=excluded.updated_at",
                (key, provider, model, video_id, json.dumps(labels or {}, sort_keys=True), input_sha256,
                 float(estimate_usd), attempts, now, now))
            row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return _job(row)

    def set_in_flight(self, key: str, prediction_id: str, *, adopted: bool = False, status: str = "starting") -> None:
        """Record that ``key``'s job is prediction ``prediction_id`` (created, or ``adopted`` from a
        lookup / an earlier attempt). Call it the moment the id is known."""
        now = time.time()
        with self._write() as db:
            job = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
            if job is None:
                raise KeyError(f"no ledger job for key {key}")
            db.execute("UPDATE jobs SET state='in_flight', prediction_id=?, updated_at=? WHERE key=?",
                       (prediction_id, now, key))
            db.execute(
                "INSERT INTO predictions (prediction_id, key, provider, model, video_id, status, cost_usd, adopted,"
                " error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, NULL, ?, ?)"
                " ON CONFLICT(prediction_id) DO UPDATE SET status=excluded.status, updated_at=excluded.updated_at",
                (prediction_id, key, job["provider"], job["model"], job["video_id"], status, int(adopted), now, now))

    def finish(self, key: str, state: Literal["succeeded", "failed", "canceled"], *, cost_usd: float = 0.0,
               error: str | None = None, output: Any = None, status: str | None = None) -> None:
        """Record ``key``'s terminal state, the prediction's cost (USD, counted towards the video's
        spend even when the job failed after paying, e.g. an expired output) and its output (JSON)."""
        now = time.time()
        with self._write() as db:
            job = db.execute("SELECT prediction_id FROM jobs WHERE key = ?", (key,)).fetchone()
            if job is None:
                raise KeyError(f"no ledger job for key {key}")
            db.execute("UPDATE jobs SET state=?, cost_usd=?, error=?, output=?, updated_at=? WHERE key=?",
                       (state, float(cost_usd), error, json.dumps(output) if output is not None else None, now, key))
            if job["prediction_id"]:
                db.execute("UPDATE predictions SET status=?, cost_usd=?, error=?, updated_at=? WHERE prediction_id=?",
                           (status or state, float(cost_usd), error, now, job["prediction_id"]))


def default_ledger_path(data_dir: str | Path) -> Path:
    """Where a data directory keeps its ledger: ``<data_dir>/ledger.sqlite``."""
    return Path(data_dir) / "ledger.sqlite"


def cost_table(costs: Iterable[Any]):
    """A video's cost table as a pandas DataFrame: one row per CostLine (or dict with the same
    fields: stage, segment, item, provider, model, units, unit, cost_usd, cache_hit), in the given
    order, plus a final "total" row summing ``cost_usd`` (USD). Suitable for
    ``MetadataValue.md(df.to_markdown(index=False))`` or printing."""
    import pandas as pd

    rows = [c.model_dump() if hasattr(c, "model_dump") else dict(c) for c in costs]
    columns = ["stage", "segment", "item", "provider", "model", "units", "unit", "cost_usd", "cache_hit"]
    df = pd.DataFrame(rows, columns=columns)
    total = pd.DataFrame([{"stage": "total", "segment": None, "item": f"{len(df)} items", "provider": None,
                           "model": None, "units": None, "unit": None,
                           "cost_usd": round(float(df["cost_usd"].sum()) if len(df) else 0.0, 6),
                           "cache_hit": None}], columns=columns)
    return pd.concat([df, total], ignore_index=True) if len(df) else total
