"""The prediction ledger and the budget: a durable record of every paid provider job.

One SQLite file (``<data dir>/ledger.sqlite`` by default) shared by every process of a run:

- ``jobs``: one row per cache key (``GenerationRequest.cache_key()``): ``intent`` (written before
  the provider's create call), ``in_flight`` (the prediction id, written the moment create returns),
  then ``succeeded`` / ``failed`` / ``canceled``.
- ``predictions``: one row per provider prediction ever created or adopted, with its cost (USD).
  Spend is the sum of these, so a paid prediction whose output was lost still counts, and a
  prediction adopted by many callers counts once.

**Ownership.** Every open job (``intent`` / ``in_flight``) has an *owner*, ``str(ProcessIdentity)``
of the process working on it, and a *lease* (``lease_until``, Unix seconds) that the owner renews
while it works (``Ledger.hold``). ``Ledger.begin`` hands a job to exactly one process at a time:

- ``claim == "owner"``: a new intent; or this process already owned the open job (a retry after an
  error); or it took over an open job whose lease expired or whose owner is provably dead
  (``ProcessIdentity.is_alive() is False``: a process on this host that is gone). ``resumed`` is
  True for an open job; the caller then resumes it (an ``in_flight`` id is polled; an ``intent``
  without one is looked up on the provider before anything is created).
- ``claim == "succeeded"``: done before; the caller adopts its output for free.
- ``claim == "busy"``: another live owner holds it (``owner``, ``lease_until``); the caller waits.

**Unusable outputs.** A paid prediction whose output could not be used (too big, undecodable,
expired, ...) is recorded with a short *cause*; ``Job.unusable`` counts them per cause across
attempts, so a caller can refuse to buy the same failure again.

**Budget** (``max_cost_usd``, per video): ``begin`` checks, in the same write transaction that
records the intent, that the video's spend so far plus the estimates of its open jobs plus this
call's estimate stay within the budget; otherwise it raises BudgetExceededError before anything is
paid. A caller that waits for another owner writes nothing and reserves nothing. Concurrent
processes serialize on SQLite's write lock, so parallel segments cannot overshoot together.

Writes use WAL journaling with ``synchronous=FULL``: a committed state survives a killed process.
Ledger files written before ownership existed are migrated on open (columns added); their open
jobs have no owner and are taken over by the next ``begin``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from pipeline.ledger_lease import Lease
from pipeline.ledger_schema import OPEN_STATES, Claim, Job, JobState, PredictionRecord, job_from_row, create_or_migrate  # noqa: F401 (re-exported)
from pipeline.procs import ProcessIdentity
from pipeline.providers.base import ProviderError

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0
"""How long an owner's claim on a job lasts without renewal, seconds (renewed every third of it)."""

class BudgetExceededError(ProviderError):
    """A call would take a video's spend past its ``max_cost_usd``; it was not made (never retryable)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


def owner_is_gone(owner: str | None) -> bool:
    """True if ``owner`` (``str(ProcessIdentity)``) is provably dead: a process of this host that
    no longer runs. False when it runs or cannot be checked from here (another host)."""
    ident = ProcessIdentity.parse(owner)
    return ident is not None and ident.is_alive() is False


class Ledger:
    """The SQLite ledger at ``path`` (created with its parent directory on first use; an older
    file is migrated). Every method opens its own connection, so one Ledger may be used from many
    threads, and many processes may share the file. Raises sqlite3.Error only for a broken file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.transaction() as db:
            create_or_migrate(db)

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection (autocommit, rows as sqlite3.Row) for reads; closed afterwards."""
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from the start (BEGIN IMMEDIATE),
        committed when the block ends, rolled back if it raises."""
        with self.connect() as db:
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
        with self.connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return job_from_row(row) if row else None

    def jobs(self, video_id: str | None = None) -> list[Job]:
        """All jobs (of one video), oldest intent first."""
        with self.connect() as db:
            if video_id is None:
                rows = db.execute("SELECT * FROM jobs ORDER BY intent_at").fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs WHERE video_id = ? ORDER BY intent_at", (video_id,)).fetchall()
        return [job_from_row(r) for r in rows]

    def predictions(self, video_id: str | None = None, key: str | None = None, *, since: float | None = None,
                    until: float | None = None) -> list[PredictionRecord]:
        """Every prediction recorded (for one video and/or cache key; created in ``[since, until)``,
        Unix seconds), oldest first."""
        sql, args = "SELECT * FROM predictions WHERE 1=1", []
        for clause, value in (("video_id = ?", video_id), ("key = ?", key), ("created_at >= ?", since),
                              ("created_at < ?", until)):
            if value is not None:
                sql, args = f"{sql} AND {clause}", args + [value]
        with self.connect() as db:
            rows = db.execute(sql + " ORDER BY created_at", args).fetchall()
        return [PredictionRecord(prediction_id=r["prediction_id"], key=r["key"], provider=r["provider"],
                                 model=r["model"], video_id=r["video_id"], status=r["status"], cost_usd=r["cost_usd"],
                                 adopted=bool(r["adopted"]), error=r["error"], created_at=r["created_at"],
                                 updated_at=r["updated_at"]) for r in rows]

    def spent_between(self, since: float, until: float) -> float:
        """USD paid for predictions created in ``[since, until)`` (Unix seconds), over all videos:
        the sum of those ``predictions`` rows' costs, each prediction counted once however many
        callers adopted it."""
        with self.connect() as db:
            return float(db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM predictions"
                                    " WHERE created_at >= ? AND created_at < ?", (since, until)).fetchone()[0])

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
        with self.connect() as db:
            return float(db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM predictions WHERE video_id IS ?",
                                    (video_id,)).fetchone()[0])

    def committed_usd(self, video_id: str | None) -> float:
        """Spent plus the estimates of the video's jobs still open (intent / in flight), USD."""
        with self.connect() as db:
            return self._committed(db, video_id)

    # --- claiming a job ------------------------------------------------------------------------

    @staticmethod
    def _check_budget(db: sqlite3.Connection, key: str, model: str, video_id: str | None, estimate_usd: float,
                      max_cost_usd: float | None) -> None:
        if max_cost_usd is None:
            return
        committed = Ledger._committed(db, video_id, exclude_key=key)
        if committed + estimate_usd > max_cost_usd + 1e-9:
            raise BudgetExceededError(
                f"{video_id or 'this video'}: refusing a {model} call estimated at ${estimate_usd:.4f}: "
                f"${committed:.4f} of the ${max_cost_usd:.2f} budget (max_cost_usd) is already spent or "
                f"committed, and this call would take it to ${committed + estimate_usd:.4f}")

    def begin(self, key: str, *, provider: str, model: str, video_id: str | None, estimate_usd: float,
              max_cost_usd: float | None = None, input_sha256: str | None = None,
              labels: dict[str, str] | None = None, owner: str | None = None,
              lease_s: float = DEFAULT_LEASE_S) -> Job:
        """Claim ``key``'s job for ``owner`` (default: this process), in one write transaction.

        - none, ``failed`` or ``canceled``: if ``max_cost_usd`` is set and the video's committed
          spend plus ``estimate_usd`` (USD) would exceed it, raises BudgetExceededError and records
          nothing; else writes a fresh ``intent`` (attempts + 1) owned by ``owner`` with a lease of
          ``lease_s`` seconds: claim "owner".
        - open and owned by ``owner``: claim "owner", ``resumed``; its lease is renewed.
        - open, another owner, lease expired or owner dead (``owner_is_gone``), or no owner (a
          migrated ledger): taken over, claim "owner", ``resumed``, ``took_over_from``. An ``intent``
          (nothing paid yet) moves to the caller's video (its budget checked if that differs); an
          ``in_flight`` job keeps its video: that video paid for the prediction.
        - open, another live owner within its lease: claim "busy", unchanged (nothing reserved).
        - ``succeeded``: claim "succeeded", unchanged.
        """
        owner = owner or str(ProcessIdentity.current())
        with self.transaction() as db:
            now = time.time()
            row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
            if row is not None and row["state"] == "succeeded":
                return job_from_row(row, claim="succeeded")
            if row is not None and row["state"] in OPEN_STATES:
                previous = row["owner"]
                if previous == owner:
                    db.execute("UPDATE jobs SET lease_until=? WHERE key=?", (now + lease_s, key))
                    return job_from_row(db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone(), claim="owner",
                                resumed=True)
                lapsed = previous is None or (row["lease_until"] or 0) <= now or owner_is_gone(previous)
                if not lapsed:
                    return job_from_row(row, claim="busy")
                moves = row["state"] == "intent" and row["video_id"] != video_id
                if moves:
                    self._check_budget(db, key, model, video_id, estimate_usd, max_cost_usd)
                    db.execute("UPDATE jobs SET video_id=?, labels=?, estimate_usd=? WHERE key=?",
                               (video_id, json.dumps(labels or {}, sort_keys=True), float(estimate_usd), key))
                db.execute("UPDATE jobs SET owner=?, lease_until=?, updated_at=? WHERE key=?",
                           (owner, now + lease_s, now, key))
                log.warning("ledger: %s job %s taken over from %s (%s)", row["model"], key[:12], previous or "no owner",
                            "lease expired" if previous and (row["lease_until"] or 0) <= now else
                            "owner is gone" if previous else "written before owners were recorded")
                return job_from_row(db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone(), claim="owner",
                            resumed=True, took_over_from=previous or "")
            self._check_budget(db, key, model, video_id, estimate_usd, max_cost_usd)
            attempts = (row["attempts"] if row is not None else 0) + 1
            db.execute(
                "INSERT INTO jobs (key, provider, model, video_id, labels, state, prediction_id, input_sha256,"
                " estimate_usd, cost_usd, attempts, error, output, intent_at, updated_at, owner, lease_until,"
                " retryable, unusable)"
                " VALUES (?, ?, ?, ?, ?, 'intent', NULL, ?, ?, 0, ?, NULL, NULL, ?, ?, ?, ?, NULL, '{}')"
                " ON CONFLICT(key) DO UPDATE SET provider=excluded.provider, model=excluded.model,"
                " video_id=excluded.video_id, labels=excluded.labels, state='intent', prediction_id=NULL,"
                " input_sha256=excluded.input_sha256, estimate_usd=excluded.estimate_usd, cost_usd=0,"
                " attempts=excluded.attempts, error=NULL, output=NULL, intent_at=excluded.intent_at,"
                " updated_at=excluded.updated_at, owner=excluded.owner, lease_until=excluded.lease_until,"
                " retryable=NULL",  # ``unusable`` is kept: it counts over attempts
                (key, provider, model, video_id, json.dumps(labels or {}, sort_keys=True), input_sha256,
                 float(estimate_usd), attempts, now, now, owner, now + lease_s))
            row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return job_from_row(row, claim="owner")

    def renew(self, key: str, owner: str, lease_s: float = DEFAULT_LEASE_S) -> Literal["renewed", "done", "lost"]:
        """Extend ``owner``'s lease on ``key`` to now + ``lease_s`` seconds. Returns "renewed";
        "done" when the job is no longer open and ``owner`` finished it; "lost" when another owner
        took it over (or it was finished by someone else)."""
        with self.transaction() as db:
            now = time.time()
            cur = db.execute("UPDATE jobs SET lease_until=? WHERE key=? AND owner=? AND state IN ('intent', 'in_flight')",
                             (now + lease_s, key, owner))
            if cur.rowcount:
                return "renewed"
            row = db.execute("SELECT owner, state FROM jobs WHERE key = ?", (key,)).fetchone()
        return "done" if row is not None and row["owner"] == owner and row["state"] not in OPEN_STATES else "lost"

    def release(self, key: str, owner: str) -> bool:
        """End ``owner``'s lease on an open ``key`` now, so a waiting process takes the job over at
        once (with a lookup first) instead of waiting for the lease to run out. True if released."""
        with self.transaction() as db:
            cur = db.execute("UPDATE jobs SET lease_until=? WHERE key=? AND owner=? AND state IN ('intent', 'in_flight')",
                             (time.time(), key, owner))
            return bool(cur.rowcount)

    @contextmanager
    def hold(self, job: Job, lease_s: float = DEFAULT_LEASE_S) -> Iterator[Lease]:
        """Keep ``job``'s lease (owned by ``job.owner``) alive while the block runs: a background
        thread renews it every ``lease_s / 3`` seconds. If a renewal finds the job taken over, it
        logs an error and sets ``Lease.lost`` (the block must then not create anything). When the
        block ends with the job still open, the lease is released for waiting processes."""
        lease = Lease(self, job.key, job.owner or str(ProcessIdentity.current()), lease_s)
        lease.start()
        try:
            yield lease
        finally:
            lease.stop()
            if not lease.lost:
                try:
                    self.release(job.key, lease.owner)
                except sqlite3.Error as exc:  # the lease lapses by itself
                    log.warning("ledger: could not release the lease on %s: %s", job.key[:12], exc)

    # --- transitions ---------------------------------------------------------------------------

    def set_in_flight(self, key: str, prediction_id: str, *, adopted: bool = False, status: str = "starting",
                      owner: str | None = None) -> bool:
        """Record that ``key``'s job is prediction ``prediction_id`` (created, or ``adopted`` from a
        lookup / an earlier attempt). Call it the moment the id is known. The ``predictions`` row is
        always written (what was created is paid for); the job moves to ``in_flight`` unless
        ``owner`` is given and no longer owns it (returns False then). Raises KeyError for no job."""
        now = time.time()
        with self.transaction() as db:
            job = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
            if job is None:
                raise KeyError(f"no ledger job for key {key}")
            db.execute(
                "INSERT INTO predictions (prediction_id, key, provider, model, video_id, status, cost_usd, adopted,"
                " error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, NULL, ?, ?)"
                " ON CONFLICT(prediction_id) DO UPDATE SET status=excluded.status, updated_at=excluded.updated_at",
                (prediction_id, key, job["provider"], job["model"], job["video_id"], status, int(adopted), now, now))
            if owner is not None and (job["owner"] != owner or job["state"] not in OPEN_STATES):
                log.error("ledger: %s job %s is no longer owned by %s (owner %s, %s); prediction %s recorded only",
                          job["model"], key[:12], owner, job["owner"], job["state"], prediction_id)
                return False
            db.execute("UPDATE jobs SET state='in_flight', prediction_id=?, updated_at=? WHERE key=?",
                       (prediction_id, now, key))
        return True

    def finish(self, key: str, state: Literal["succeeded", "failed", "canceled"], *, cost_usd: float = 0.0,
               error: str | None = None, output: Any = None, status: str | None = None, owner: str | None = None,
               retryable: bool | None = None, unusable: tuple[str, dict[str, Any]] | None = None,
               expect_state: JobState | None = None) -> Job | None:
        """Record ``key``'s terminal ``state``, the prediction's cost (USD, counted towards the
        video's spend even when the job failed after paying, e.g. an expired output), its output
        (JSON), the error and whether retrying may help (``retryable``).

        ``unusable=(cause, details)`` counts one more unusable paid output of that cause (details: a
        JSON dict, e.g. message, size and limit in bytes). With ``owner`` the job changes only while
        ``owner`` owns it; with ``expect_state`` only while it is in that state (e.g. adopting a
        ``succeeded`` job whose output expired). Returns the updated job, or None if it did not
        change (the prediction row is updated either way). Raises KeyError for no job."""
        now = time.time()
        with self.transaction() as db:
            job = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
            if job is None:
                raise KeyError(f"no ledger job for key {key}")
            if job["prediction_id"]:
                db.execute("UPDATE predictions SET status=?, cost_usd=?, error=?, updated_at=? WHERE prediction_id=?",
                           (status or state, float(cost_usd), error, now, job["prediction_id"]))
            if (owner is not None and job["owner"] != owner) or (expect_state is not None and job["state"] != expect_state):
                return None
            counts = json.loads(job["unusable"] or "{}")
            if unusable is not None:
                cause, details = unusable
                entry = counts.get(cause, {})
                counts[cause] = {**details, "count": int(entry.get("count", 0)) + 1,
                                 "predictions": [*entry.get("predictions", []), job["prediction_id"]]}
            db.execute("UPDATE jobs SET state=?, cost_usd=?, error=?, output=?, updated_at=?, retryable=?, unusable=?"
                       " WHERE key=?",
                       (state, float(cost_usd), error, json.dumps(output) if output is not None else None, now,
                        None if retryable is None else int(retryable), json.dumps(counts, sort_keys=True), key))
            row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return job_from_row(row)


def default_ledger_path(data_dir: str | Path) -> Path:
    """Where a data directory keeps its ledger: ``<data_dir>/ledger.sqlite``."""
    return Path(data_dir) / "ledger.sqlite"
