"""The prediction ledger and the budget: a durable record of every paid provider job.

One database shared by every process that may pay for the same thing: a SQLite file
(``<data dir>/ledger.sqlite`` by default: one machine) or a PostgreSQL database (a cluster: the
same statements through SQLAlchemy Core, see ``pipeline.ledger_db``), chosen by
``Ledger(path_or_url)``. Tables:

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
  (``ProcessIdentity.is_alive() is False``: a process on this host that is gone; an owner on another
host is never provably dead, so its job is taken over only after its lease expires). ``resumed`` is
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
paid. A caller that waits for another owner writes nothing and reserves nothing. Every write
transaction holds the database's one write lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL an advisory
transaction lock: ``pipeline.ledger_db``), so processes on any machine serialize and parallel
segments cannot overshoot together.

SQLite writes use WAL journaling with ``synchronous=FULL``: a committed state survives a killed
process. Ledgers written before ownership existed are migrated on open (columns added); their open
jobs have no owner and are taken over by the next ``begin``.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

import sqlalchemy as sa

from pipeline.ledger_db import LedgerDatabase
from pipeline.ledger_lease import Lease
from pipeline.ledger_schema import (  # noqa: F401 (re-exported)
    JOBS, OPEN_STATES, PREDICTIONS, Claim, Job, JobState, PredictionRecord, create_or_migrate, create_tables,
    job_from_row)
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


def _job(db: sa.Connection, key: str) -> sa.RowMapping | None:
    return db.execute(sa.select(JOBS).where(JOBS.c.key == key)).mappings().first()


def _open(key: str, owner: str | None = None):
    """WHERE ``key``'s job is open (and owned by ``owner``)."""
    clause = sa.and_(JOBS.c.key == key, JOBS.c.state.in_(OPEN_STATES))
    return clause if owner is None else sa.and_(clause, JOBS.c.owner == owner)


def _sum(column: sa.Column) -> sa.ColumnElement:
    return sa.func.coalesce(sa.func.sum(column), 0)


class Ledger:
    """The ledger at ``path_or_url``: a SQLite file path (created with its parent directory on
    first use; an older file is migrated) or a SQLAlchemy URL (``sqlite:///...``,
    ``postgresql+psycopg2://user:password@host:5432/db``; a bare ``postgresql://`` gets psycopg2).
    Tables are created or migrated on open. One Ledger may be used from many threads, and many
    processes (on many machines, with PostgreSQL) may share the database. ``path``: the SQLite
    file, None for PostgreSQL; ``url``: the URL with its password hidden. Raises ValueError for an
    unsupported URL, sqlalchemy.exc.SQLAlchemyError for an unreachable or broken database."""

    def __init__(self, path_or_url: str | Path):
        self.db = LedgerDatabase.open(path_or_url)
        self.path: Path | None = self.db.path
        with self.transaction() as db:
            create_or_migrate(db)

    @property
    def url(self) -> str:
        """The database: the SQLite file's path, or the URL with its password hidden."""
        return self.db.name

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    def connect(self) -> AbstractContextManager[sa.Connection]:
        """A connection for reads (SQLAlchemy Core; rows by column name with ``.mappings()``),
        returned afterwards. Takes no lock."""
        return self.db.connect()

    def transaction(self) -> AbstractContextManager[sa.Connection]:
        """A write transaction holding the database's write lock from the start (SQLite BEGIN
        IMMEDIATE, PostgreSQL an advisory transaction lock), committed when the block ends, rolled
        back if it raises."""
        return self.db.transaction()

    def named_lock(self, name: str) -> AbstractContextManager[None]:
        """A cross-process mutex for work outside a transaction (see ``LedgerDatabase.named_lock``):
        this machine's processes for SQLite, every machine's for PostgreSQL."""
        return self.db.named_lock(name)

    def create_tables(self, *tables: sa.Table) -> None:
        """Create ``tables`` (e.g. the Replicate provider's ``uploads``) where missing, under the write lock."""
        with self.transaction() as db:
            create_tables(db, *tables)

    # --- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> Job | None:
        """The job of cache key ``key``, or None."""
        with self.connect() as db:
            row = _job(db, key)
        return job_from_row(row) if row else None

    def jobs(self, video_id: str | None = None) -> list[Job]:
        """All jobs (of one video), oldest intent first."""
        query = sa.select(JOBS).order_by(JOBS.c.intent_at)
        if video_id is not None:
            query = query.where(JOBS.c.video_id == video_id)
        with self.connect() as db:
            rows = db.execute(query).mappings().all()
        return [job_from_row(r) for r in rows]

    def predictions(self, video_id: str | None = None, key: str | None = None, *, since: float | None = None,
                    until: float | None = None) -> list[PredictionRecord]:
        """Every prediction recorded (for one video and/or cache key; created in ``[since, until)``,
        Unix seconds), oldest first."""
        p = PREDICTIONS.c
        query = sa.select(PREDICTIONS).order_by(p.created_at)
        for column, op, value in ((p.video_id, "__eq__", video_id), (p.key, "__eq__", key),
                                  (p.created_at, "__ge__", since), (p.created_at, "__lt__", until)):
            if value is not None:
                query = query.where(getattr(column, op)(value))
        with self.connect() as db:
            rows = db.execute(query).mappings().all()
        return [PredictionRecord(prediction_id=r["prediction_id"], key=r["key"], provider=r["provider"],
                                 model=r["model"], video_id=r["video_id"], status=r["status"], cost_usd=r["cost_usd"],
                                 adopted=bool(r["adopted"]), error=r["error"], created_at=r["created_at"],
                                 updated_at=r["updated_at"]) for r in rows]

    def spent_between(self, since: float, until: float) -> float:
        """USD paid for predictions created in ``[since, until)`` (Unix seconds), over all videos:
        the sum of those ``predictions`` rows' costs, each prediction counted once however many
        callers adopted it."""
        p = PREDICTIONS.c
        with self.connect() as db:
            return float(db.execute(sa.select(_sum(p.cost_usd)).where(p.created_at >= since, p.created_at < until))
                         .scalar_one())

    @staticmethod
    def _spent(video_id: str | None) -> sa.ScalarSelect:
        return (sa.select(_sum(PREDICTIONS.c.cost_usd))
                .where(PREDICTIONS.c.video_id.is_not_distinct_from(video_id)).scalar_subquery())

    @staticmethod
    def _committed(db: sa.Connection, video_id: str | None, exclude_key: str | None = None) -> float:
        # One statement, so one snapshot: a job finishing in between is counted once, either as
        # its estimate or as its cost (PostgreSQL reads outside a transaction see each statement's).
        reserved = (sa.select(_sum(JOBS.c.estimate_usd))
                    .where(JOBS.c.video_id.is_not_distinct_from(video_id), JOBS.c.state.in_(OPEN_STATES),
                           JOBS.c.key.is_distinct_from(exclude_key)).scalar_subquery())
        return float(db.execute(sa.select(Ledger._spent(video_id) + reserved)).scalar_one())

    def spent_usd(self, video_id: str | None) -> float:
        """USD paid for ``video_id``'s predictions (every prediction, whether or not its output was used)."""
        with self.connect() as db:
            return float(db.execute(sa.select(self._spent(video_id))).scalar_one())

    def committed_usd(self, video_id: str | None) -> float:
        """Spent plus the estimates of the video's jobs still open (intent / in flight), USD."""
        with self.connect() as db:
            return self._committed(db, video_id)

    # --- claiming a job ------------------------------------------------------------------------

    @staticmethod
    def _check_budget(db: sa.Connection, key: str, model: str, video_id: str | None, estimate_usd: float,
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
        - open, another owner, lease expired or owner dead (``owner_is_gone``: only a process of
          this host can be proven dead; another host's owner is waited for until its lease
          expires), or no owner (a migrated ledger): taken over, claim "owner", ``resumed``,
          ``took_over_from``. An ``intent`` (nothing paid yet) moves to the caller's video (its
          budget checked if that differs); an ``in_flight`` job keeps its video: that video paid
          for the prediction.
        - open, another live owner within its lease: claim "busy", unchanged (nothing reserved).
        - ``succeeded``: claim "succeeded", unchanged.
        """
        owner = owner or str(ProcessIdentity.current())
        labels_json = json.dumps(labels or {}, sort_keys=True)
        with self.transaction() as db:
            now = time.time()
            row = _job(db, key)
            if row is not None and row["state"] == "succeeded":
                return job_from_row(row, claim="succeeded")
            if row is not None and row["state"] in OPEN_STATES:
                previous = row["owner"]
                if previous == owner:
                    db.execute(sa.update(JOBS).where(JOBS.c.key == key).values(lease_until=now + lease_s))
                    return job_from_row(_job(db, key), claim="owner", resumed=True)
                lapsed = previous is None or (row["lease_until"] or 0) <= now or owner_is_gone(previous)
                if not lapsed:
                    return job_from_row(row, claim="busy")
                if row["state"] == "intent" and row["video_id"] != video_id:  # moves to the caller's video
                    self._check_budget(db, key, model, video_id, estimate_usd, max_cost_usd)
                    db.execute(sa.update(JOBS).where(JOBS.c.key == key).values(
                        video_id=video_id, labels=labels_json, estimate_usd=float(estimate_usd)))
                db.execute(sa.update(JOBS).where(JOBS.c.key == key).values(owner=owner, lease_until=now + lease_s,
                                                                           updated_at=now))
                log.warning("ledger: %s job %s taken over from %s (%s)", row["model"], key[:12], previous or "no owner",
                            "lease expired" if previous and (row["lease_until"] or 0) <= now else
                            "owner is gone" if previous else "written before owners were recorded")
                return job_from_row(_job(db, key), claim="owner", resumed=True, took_over_from=previous or "")
            self._check_budget(db, key, model, video_id, estimate_usd, max_cost_usd)
            fresh = {"provider": provider, "model": model, "video_id": video_id, "labels": labels_json,
                     "state": "intent", "prediction_id": None, "input_sha256": input_sha256,
                     "estimate_usd": float(estimate_usd), "cost_usd": 0.0,
                     "attempts": (row["attempts"] if row is not None else 0) + 1, "error": None, "output": None,
                     "intent_at": now, "updated_at": now, "owner": owner, "lease_until": now + lease_s,
                     "retryable": None}
            # ``unusable`` is kept on a new attempt: it counts over attempts ('{}' for a new key)
            db.execute(self.db.insert(JOBS).values(key=key, unusable="{}", **fresh)
                       .on_conflict_do_update(index_elements=[JOBS.c.key], set_=fresh))
            row = _job(db, key)
        return job_from_row(row, claim="owner")

    def renew(self, key: str, owner: str, lease_s: float = DEFAULT_LEASE_S) -> Literal["renewed", "done", "lost"]:
        """Extend ``owner``'s lease on ``key`` to now + ``lease_s`` seconds. Returns "renewed";
        "done" when the job is no longer open and ``owner`` finished it; "lost" when another owner
        took it over (or it was finished by someone else)."""
        with self.transaction() as db:
            cur = db.execute(sa.update(JOBS).where(_open(key, owner)).values(lease_until=time.time() + lease_s))
            if cur.rowcount:
                return "renewed"
            row = _job(db, key)
        return "done" if row is not None and row["owner"] == owner and row["state"] not in OPEN_STATES else "lost"

    def release(self, key: str, owner: str) -> bool:
        """End ``owner``'s lease on an open ``key`` now, so a waiting process takes the job over at
        once (with a lookup first) instead of waiting for the lease to run out. True if released."""
        with self.transaction() as db:
            return bool(db.execute(sa.update(JOBS).where(_open(key, owner)).values(lease_until=time.time())).rowcount)

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
                except sa.exc.SQLAlchemyError as exc:  # the lease lapses by itself
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
            job = _job(db, key)
            if job is None:
                raise KeyError(f"no ledger job for key {key}")
            insert = self.db.insert(PREDICTIONS).values(
                prediction_id=prediction_id, key=key, provider=job["provider"], model=job["model"],
                video_id=job["video_id"], status=status, cost_usd=0.0, adopted=int(adopted), error=None,
                created_at=now, updated_at=now)
            db.execute(insert.on_conflict_do_update(index_elements=[PREDICTIONS.c.prediction_id],
                                                    set_={"status": status, "updated_at": now}))
            if owner is not None and (job["owner"] != owner or job["state"] not in OPEN_STATES):
                log.error("ledger: %s job %s is no longer owned by %s (owner %s, %s); prediction %s recorded only",
                          job["model"], key[:12], owner, job["owner"], job["state"], prediction_id)
                return False
            db.execute(sa.update(JOBS).where(JOBS.c.key == key).values(state="in_flight", prediction_id=prediction_id,
                                                                       updated_at=now))
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
            job = _job(db, key)
            if job is None:
                raise KeyError(f"no ledger job for key {key}")
            if job["prediction_id"]:
                db.execute(sa.update(PREDICTIONS).where(PREDICTIONS.c.prediction_id == job["prediction_id"]).values(
                    status=status or state, cost_usd=float(cost_usd), error=error, updated_at=now))
            if (owner is not None and job["owner"] != owner) or (expect_state is not None and job["state"] != expect_state):
                return None
            counts = json.loads(job["unusable"] or "{}")
            if unusable is not None:
                cause, details = unusable
                entry = counts.get(cause, {})
                counts[cause] = {**details, "count": int(entry.get("count", 0)) + 1,
                                 "predictions": [*entry.get("predictions", []), job["prediction_id"]]}
            db.execute(sa.update(JOBS).where(JOBS.c.key == key).values(
                state=state, cost_usd=float(cost_usd), error=error,
                output=json.dumps(output) if output is not None else None, updated_at=now,
                retryable=None if retryable is None else int(retryable), unusable=json.dumps(counts, sort_keys=True)))
            row = _job(db, key)
        return job_from_row(row)

def default_ledger_path(data_dir: str | Path) -> Path:
    """Where a data directory keeps its ledger when no URL is configured: ``<data_dir>/ledger.sqlite``."""
    return Path(data_dir) / "ledger.sqlite"
