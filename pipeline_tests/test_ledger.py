"""The prediction ledger: durable job states, resumption, spend accounting and the budget, on
SQLite and on PostgreSQL (``ledger_target``)."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import sqlalchemy as sa

from pipeline import costs
from pipeline.ledger import BudgetExceededError, Ledger
from pipeline.manifests import CostLine
from pipeline.providers.base import ProviderError
from pipeline_tests.ledger_backends import ledger_target, postgres_url  # noqa: F401 (fixtures)


def _begin(ledger: Ledger, key: str, estimate: float = 0.05, budget: float | None = None, video: str = "v1"):
    return ledger.begin(key, provider="replicate", model="m/x", video_id=video, estimate_usd=estimate,
                        max_cost_usd=budget, labels={"video_id": video})


def test_job_goes_intent_in_flight_succeeded_and_survives_reopening(ledger_target):
    path = ledger_target
    ledger = Ledger(path)
    job = _begin(ledger, "k1")
    assert (job.state, job.prediction_id, job.resumed, job.attempts) == ("intent", None, False, 1)
    ledger.set_in_flight("k1", "pred-1")

    reopened = Ledger(path)  # another process would see the same
    job = _begin(reopened, "k1")
    assert (job.state, job.prediction_id, job.resumed) == ("in_flight", "pred-1", True)
    assert job.attempts == 1  # resuming is not a new attempt

    reopened.finish("k1", "succeeded", cost_usd=0.05, output={"urls": ["https://x/y.mp4"]})
    job = reopened.get("k1")
    assert (job.state, job.cost_usd, job.output) == ("succeeded", 0.05, {"urls": ["https://x/y.mp4"]})
    assert [p.prediction_id for p in reopened.predictions(video_id="v1")] == ["pred-1"]
    assert reopened.spent_usd("v1") == pytest.approx(0.05)
    # A succeeded job is returned as is (its output can be fetched again for free).
    again = _begin(reopened, "k1")
    assert (again.state, again.prediction_id, again.resumed) == ("succeeded", "pred-1", False)


def test_failed_job_restarts_as_a_new_attempt_and_keeps_the_paid_cost(ledger_target):
    ledger = Ledger(ledger_target)
    _begin(ledger, "k")
    ledger.set_in_flight("k", "p1")
    ledger.finish("k", "failed", cost_usd=0.05, error="output expired")  # paid, but unusable
    job = _begin(ledger, "k")
    assert (job.state, job.prediction_id, job.attempts, job.error) == ("intent", None, 2, None)
    ledger.set_in_flight("k", "p2")
    ledger.finish("k", "succeeded", cost_usd=0.05)
    assert ledger.spent_usd("v1") == pytest.approx(0.10)  # both predictions were paid
    assert [(p.prediction_id, p.status) for p in ledger.predictions()] == [("p1", "failed"), ("p2", "succeeded")]


def test_budget_counts_spend_and_open_estimates_and_refuses_before_recording(ledger_target):
    ledger = Ledger(ledger_target)
    _begin(ledger, "a", estimate=0.30, budget=1.0)
    ledger.set_in_flight("a", "pa")
    ledger.finish("a", "succeeded", cost_usd=0.25)
    _begin(ledger, "b", estimate=0.50, budget=1.0)  # open: reserves 0.50
    assert ledger.committed_usd("v1") == pytest.approx(0.75)
    with pytest.raises(BudgetExceededError) as err:
        _begin(ledger, "c", estimate=0.30, budget=1.0)
    assert isinstance(err.value, ProviderError) and err.value.retryable is False
    assert "max_cost_usd" in str(err.value) and "$1.00" in str(err.value)
    assert ledger.get("c") is None  # nothing recorded for a refused call
    _begin(ledger, "c", estimate=0.25, budget=1.0)  # exactly at the budget is allowed
    # Resuming an open job never re-checks the budget (it is already reserved).
    assert _begin(ledger, "b", estimate=0.50, budget=0.01).resumed
    # Other videos have their own budget.
    _begin(ledger, "d", estimate=0.9, budget=1.0, video="v2")


def test_concurrent_reservations_cannot_overshoot_the_budget(ledger_target):
    ledger = Ledger(ledger_target)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            Ledger(ledger_target).begin(f"k{i}", provider="replicate", model="m", video_id="v", estimate_usd=0.1,
                                      max_cost_usd=0.5)
            result = "ok"
        except BudgetExceededError:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 5 and outcomes.count("refused") == 7
    assert ledger.committed_usd("v") == pytest.approx(0.5)


def test_cost_table_has_a_total_row():
    rows = [CostLine(stage="storyboard_images", segment="000", item="storyboard image", provider="replicate",
                     model="black-forest-labs/flux-schnell", units=1, unit="image", cost_usd=0.003, cache_hit=False),
            CostLine(stage="chunk_videos", segment="000", item="chunk 0", provider="replicate",
                     model="wan-video/wan-2.2-i2v-fast", units=5.06, unit="video s", cost_usd=0.05, cache_hit=False)]
    rows_out = costs.display_rows(costs.cost_frame(rows))
    assert [r["stage"] for r in rows_out] == ["storyboard_images", "chunk_videos", "total"]
    assert float(rows_out[-1]["paid_usd"]) == pytest.approx(0.053)
    assert float(costs.display_rows(costs.cost_frame([]))[-1]["paid_usd"]) == 0.0


SQLITE3_ERA_SCHEMA = """
CREATE TABLE jobs (
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
, owner TEXT, lease_until REAL, retryable INTEGER, unusable TEXT NOT NULL DEFAULT '{}');
CREATE INDEX jobs_video ON jobs (video_id, state);
CREATE TABLE predictions (
    prediction_id  TEXT PRIMARY KEY, key TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, video_id TEXT,
    status TEXT NOT NULL, cost_usd REAL NOT NULL DEFAULT 0, adopted INTEGER NOT NULL DEFAULT 0, error TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX predictions_video ON predictions (video_id);
CREATE INDEX predictions_created ON predictions (created_at);
CREATE TABLE uploads (
    file_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, url TEXT NOT NULL, size INTEGER NOT NULL,
    content_type TEXT NOT NULL, expires_at REAL, created_at REAL NOT NULL, gone INTEGER NOT NULL DEFAULT 0);
CREATE INDEX uploads_sha ON uploads (sha256, created_at);
CREATE INDEX uploads_url ON uploads (url);
INSERT INTO jobs VALUES ('done', 'replicate', 'm/x', 'v1', '{"video_id": "v1"}', 'succeeded', 'p1', 'abc', 0.05, 0.05,
    1, NULL, '{"urls": ["https://x/y.mp4"]}', 1.5, 2.5, 'host:1:2', 40.0, NULL, '{}');
INSERT INTO predictions VALUES ('p1', 'done', 'replicate', 'm/x', 'v1', 'succeeded', 0.05, 0, NULL, 1.5, 2.5);
INSERT INTO uploads VALUES ('f1', 'sha-1', 'https://files/f1', 300000, 'image/png', NULL, 1.0, 0);
"""


def test_a_ledger_file_of_the_sqlite3_version_opens_unchanged_and_keeps_working(tmp_path):
    """``data/ledger.sqlite`` files written before SQLAlchemy (same tables, made by hand-written
    DDL) are used as they are: no table or column changes, WAL kept, old rows read, new rows
    readable by plain sqlite3."""
    from pipeline.providers.replicate.files import UPLOADS

    path = tmp_path / "ledger.sqlite"
    raw = sqlite3.connect(path)
    raw.executescript(SQLITE3_ERA_SCHEMA)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.commit()
    schema = sorted(raw.execute("SELECT type, name, sql FROM sqlite_master").fetchall(), key=str)
    raw.close()

    ledger = Ledger(path)
    ledger.create_tables(UPLOADS)  # what the replicate provider's Uploads does on open
    done = _begin(ledger, "done")
    assert (done.claim, done.output, done.owner, done.labels) == ("succeeded", {"urls": ["https://x/y.mp4"]},
                                                                   "host:1:2", {"video_id": "v1"})
    assert ledger.spent_usd("v1") == pytest.approx(0.05) and ledger.predictions()[0].created_at == 1.5
    _begin(ledger, "new")
    ledger.set_in_flight("new", "p2")
    ledger.finish("new", "succeeded", cost_usd=0.25)
    with ledger.connect() as db:
        assert db.execute(sa.select(UPLOADS.c.url).where(UPLOADS.c.sha256 == "sha-1")).scalar_one() == "https://files/f1"

    raw = sqlite3.connect(path)
    try:
        assert sorted(raw.execute("SELECT type, name, sql FROM sqlite_master").fetchall(), key=str) == schema
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT state, cost_usd FROM jobs WHERE key = 'new'").fetchone() == ("succeeded", 0.25)
        assert raw.execute("SELECT SUM(cost_usd) FROM predictions").fetchone()[0] == pytest.approx(0.30)
    finally:
        raw.close()


def test_a_sqlite_ledger_deleted_and_made_again_is_written_to_afresh(tmp_path):
    """Connections to a SQLite ledger are pooled per process; a data directory removed and made
    again while the process runs must get the new file, not the pooled connection's unlinked one."""
    import shutil

    data = tmp_path / "data"
    ledger = Ledger(data / "ledger.sqlite")
    _begin(ledger, "old")
    shutil.rmtree(data)
    fresh = Ledger(data / "ledger.sqlite")  # the provider of a new run on the new directory
    assert fresh.get("old") is None and ledger.get("old") is None
    _begin(fresh, "new")
    raw = sqlite3.connect(data / "ledger.sqlite")
    try:
        assert raw.execute("SELECT key FROM jobs").fetchall() == [("new",)]
    finally:
        raw.close()
