"""Ledger ownership: owner / busy / succeeded claims, takeover of expired leases and dead owners
(on this host only; another host's owner only when its lease expires), lease renewal and loss,
migration of older ledgers, time-window spend, unusable causes. Each on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from pipeline.ledger import BudgetExceededError, Ledger, owner_is_gone
from pipeline.ledger_db import ledger_url
from pipeline.procs import ProcessIdentity, _start_ticks
from pipeline.providers.replicate.jobs import blocking_cause
from pipeline_tests.ledger_backends import ledger_target, postgres_url  # noqa: F401 (fixtures)

ME = str(ProcessIdentity.current())
ELSEWHERE = "other-host.example:4242:777"  # a process on another host: its liveness cannot be known here


def _begin(ledger: Ledger, key: str = "k", *, owner: str = ME, lease_s: float = 30.0, video: str = "v",
           estimate: float = 0.05, budget: float | None = None):
    return ledger.begin(key, provider="replicate", model="m/x", video_id=video, estimate_usd=estimate,
                        max_cost_usd=budget, labels={"video_id": video}, owner=owner, lease_s=lease_s)


def wait_until(predicate, what: str, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_claims_owner_busy_and_succeeded(ledger_target):
    ledger = Ledger(ledger_target)
    first = _begin(ledger, owner=ELSEWHERE)
    assert (first.claim, first.resumed, first.owner, first.attempts) == ("owner", False, ELSEWHERE, 1)
    assert first.lease_until == pytest.approx(time.time() + 30, abs=5)
    busy = _begin(ledger, owner=ME)
    assert busy.claim == "busy" and busy.owner == ELSEWHERE and busy.lease_until == first.lease_until
    assert ledger.get("k").owner == ELSEWHERE  # nothing changed
    again = _begin(ledger, owner=ELSEWHERE)  # the owner itself (e.g. its retry) resumes its own job
    assert again.claim == "owner" and again.resumed and again.attempts == 1
    ledger.set_in_flight("k", "p1", owner=ELSEWHERE)
    ledger.finish("k", "succeeded", cost_usd=0.05, output={"urls": ["u"]}, owner=ELSEWHERE)
    done = _begin(ledger, owner=ME)
    assert done.claim == "succeeded" and done.prediction_id == "p1" and done.cost_usd == 0.05


def test_a_waiter_reserves_no_budget(ledger_target):
    ledger = Ledger(ledger_target)
    _begin(ledger, owner=ELSEWHERE, estimate=0.4, budget=0.5)
    assert ledger.committed_usd("v") == pytest.approx(0.4)
    for _ in range(3):  # waiting processes poll begin: nothing more is reserved, no budget error
        assert _begin(ledger, owner=ME, estimate=0.4, budget=0.5).claim == "busy"
    assert ledger.committed_usd("v") == pytest.approx(0.4)
    with pytest.raises(BudgetExceededError):  # another key of the same video would overshoot
        _begin(ledger, "other", owner=ME, estimate=0.2, budget=0.5)


def test_an_expired_lease_is_taken_over_only_after_it_expires(ledger_target):
    ledger = Ledger(ledger_target)
    first = _begin(ledger, owner=ELSEWHERE, lease_s=1.0)
    assert _begin(ledger, owner=ME).claim == "busy"  # its owner cannot be checked from here: wait for the lease
    wait_until(lambda: time.time() > first.lease_until, "the lease to expire")
    taken = _begin(ledger, owner=ME)
    assert (taken.claim, taken.resumed, taken.took_over_from, taken.owner) == ("owner", True, ELSEWHERE, ME)
    assert taken.attempts == 1 and taken.state == "intent"
    assert _begin(ledger, owner=ELSEWHERE).claim == "busy"  # now the old owner waits


def test_a_dead_owner_on_this_host_is_taken_over_at_once(ledger_target):
    ledger = Ledger(ledger_target)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        dead = str(ProcessIdentity(socket.gethostname(), child.pid, wait_until(lambda: _start_ticks(child.pid),
                                                                                "the child's start time")))
        _begin(ledger, owner=dead, lease_s=3600)
        ledger.set_in_flight("k", "p1", owner=dead)
        assert _begin(ledger, owner=ME).claim == "busy"  # alive, within its lease
    finally:
        child.kill()
        child.wait(60)
    taken = _begin(ledger, owner=ME)  # the lease has an hour left, but its owner is gone
    assert (taken.claim, taken.took_over_from, taken.state, taken.prediction_id) == ("owner", dead, "in_flight", "p1")
    # A reused pid with another start time is another process: the identity stays dead.
    assert ProcessIdentity.parse(dead).is_alive() is False


def test_taking_over_an_intent_moves_it_to_the_new_video_within_its_budget(ledger_target):
    ledger = Ledger(ledger_target)
    _begin(ledger, owner=ELSEWHERE, lease_s=0.0, video="a")  # expired at once
    with pytest.raises(BudgetExceededError):
        _begin(ledger, owner=ME, video="b", estimate=0.05, budget=0.01)
    assert ledger.get("k").video_id == "a"
    taken = _begin(ledger, owner=ME, video="b")
    assert taken.video_id == "b" and ledger.committed_usd("a") == 0 and ledger.committed_usd("b") == 0.05
    # An in-flight job keeps its video: that video's create paid for the prediction.
    ledger.set_in_flight("k", "p1", owner=ME)
    ledger.release("k", ME)
    assert _begin(ledger, owner=ELSEWHERE, video="c").video_id == "b"


def test_hold_renews_the_lease_and_releases_it_at_the_end(ledger_target):
    ledger = Ledger(ledger_target)
    job = _begin(ledger, owner=ME, lease_s=0.6)
    with ledger.hold(job, lease_s=0.6) as lease:
        first = ledger.get("k").lease_until
        wait_until(lambda: lease.renewals >= 3, "three renewals")
        assert ledger.get("k").lease_until > first
        assert _begin(ledger, owner=ELSEWHERE).claim == "busy"  # renewed: never lapses while held
        assert not lease.lost
    assert ledger.get("k").lease_until <= time.time()  # released: a waiter takes over at once
    assert _begin(ledger, owner=ELSEWHERE).claim == "owner"


def test_a_lost_lease_is_noticed_and_the_old_owner_changes_nothing(ledger_target, caplog):
    ledger = Ledger(ledger_target)
    job = _begin(ledger, owner=ELSEWHERE, lease_s=0.0)  # e.g. a process that stalled past its lease
    assert _begin(ledger, owner=ME).claim == "owner"  # taken over
    caplog.set_level(logging.ERROR)
    with ledger.hold(job, lease_s=0.3) as lease:
        assert lease.renew_now() is False and lease.lost
        assert "lost the lease" in caplog.text
        # Its writes no longer move the job (the prediction it may have made is still recorded).
        assert ledger.set_in_flight("k", "p-old", owner=ELSEWHERE) is False
        assert ledger.finish("k", "failed", error="x", owner=ELSEWHERE) is None
    job = ledger.get("k")
    assert (job.state, job.owner, job.prediction_id) == ("intent", ME, None)
    assert [p.prediction_id for p in ledger.predictions(key="k")] == ["p-old"]


OLD_SCHEMA = [  # the first release's tables (before owners, leases, retryable, unusable), portable SQL
    """CREATE TABLE jobs (key TEXT PRIMARY KEY, provider TEXT NOT NULL, model TEXT NOT NULL, video_id TEXT,
        labels TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL, prediction_id TEXT, input_sha256 TEXT,
        estimate_usd REAL NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT, output TEXT, intent_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    """CREATE TABLE predictions (prediction_id TEXT PRIMARY KEY, key TEXT NOT NULL, provider TEXT NOT NULL,
        model TEXT NOT NULL, video_id TEXT, status TEXT NOT NULL, cost_usd REAL NOT NULL DEFAULT 0,
        adopted INTEGER NOT NULL DEFAULT 0, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    """INSERT INTO jobs VALUES ('k', 'replicate', 'm/x', 'v', '{}', 'in_flight', 'p0', NULL, 0.05, 0, 1, NULL, NULL,
                             1.0, 1.0)""",
    """INSERT INTO jobs VALUES ('done', 'replicate', 'm/x', 'v', '{}', 'succeeded', 'p1', NULL, 0.05, 0.05, 1, NULL,
                             NULL, 1.0, 1.0)""",
    "INSERT INTO predictions VALUES ('p1', 'done', 'replicate', 'm/x', 'v', 'succeeded', 0.05, 0, NULL, 1.0, 1.0)",
]


def test_an_old_ledger_is_migrated_and_its_open_jobs_are_taken_over(ledger_target):
    engine = sa.create_engine(ledger_url(ledger_target), poolclass=sa.NullPool)
    with engine.begin() as db:
        for statement in OLD_SCHEMA:
            db.exec_driver_sql(statement)
    engine.dispose()
    ledger = Ledger(ledger_target)
    columns = {c["name"] for c in sa.inspect(ledger.db.engine).get_columns("jobs")}
    assert {"owner", "lease_until", "retryable", "unusable"} <= columns
    assert ledger.get("k").owner is None and ledger.get("done").unusable == {}
    taken = _begin(ledger, owner=ME)  # written before owners existed: taken over, resumed
    assert (taken.claim, taken.resumed, taken.prediction_id, taken.took_over_from) == ("owner", True, "p0", "")
    assert _begin(ledger, "done").claim == "succeeded" and ledger.spent_usd("v") == pytest.approx(0.05)
    Ledger(ledger_target)  # opening it again changes nothing
    assert {c["name"] for c in sa.inspect(ledger.db.engine).get_columns("jobs")} == columns


def test_an_owner_on_another_host_is_waited_for_until_its_lease_expires(ledger_target):
    """``owner_is_gone`` proves death only on this host: the same dead pid under another host name is
    never presumed dead (that host's process may well run), so only its lease expiring frees the job."""
    ledger = Ledger(ledger_target)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = wait_until(lambda: _start_ticks(child.pid), "the child's start time")
    child.wait(60)  # gone: as a local owner it is provably dead
    here, there = f"{socket.gethostname()}:{child.pid}:{ticks}", f"other-host.example:{child.pid}:{ticks}"
    assert owner_is_gone(here) and not owner_is_gone(there)
    _begin(ledger, "local", owner=here, lease_s=3600)
    assert _begin(ledger, "local", owner=ME).took_over_from == here  # at once: dead on this host
    remote = _begin(ledger, "remote", owner=there, lease_s=1.0)
    ledger.set_in_flight("remote", "p-remote", owner=there)
    assert _begin(ledger, "remote", owner=ME).claim == "busy"  # within its lease: waited for
    wait_until(lambda: time.time() > remote.lease_until, "the remote owner's lease to expire")
    taken = _begin(ledger, "remote", owner=ME)
    assert (taken.claim, taken.took_over_from, taken.state, taken.prediction_id) == ("owner", there, "in_flight",
                                                                                     "p-remote")


def test_spend_in_a_time_window_is_the_sum_of_its_paid_predictions(ledger_target):
    ledger = Ledger(ledger_target)
    marks = [time.time()]
    for i, cost in enumerate([0.003, 0.05, 0.2]):
        _begin(ledger, f"k{i}", video=f"v{i % 2}")
        ledger.set_in_flight(f"k{i}", f"p{i}")
        ledger.finish(f"k{i}", "succeeded", cost_usd=cost)
        wait_until(lambda: time.time() > ledger.predictions(key=f"k{i}")[0].created_at, "the clock to move")
        marks.append(time.time())
    # Adopting a paid prediction (another caller reading the succeeded job) adds no row and no cost.
    assert _begin(ledger, "k1", video="v9").claim == "succeeded"
    assert ledger.spent_between(marks[0], marks[3]) == pytest.approx(0.253)
    assert ledger.spent_between(marks[1], marks[3]) == pytest.approx(0.25)
    assert ledger.spent_between(marks[1], marks[2]) == pytest.approx(0.05)
    for a, b in [(0, 3), (0, 1), (1, 3), (2, 3)]:
        rows = ledger.predictions(since=marks[a], until=marks[b])
        assert ledger.spent_between(marks[a], marks[b]) == pytest.approx(sum(p.cost_usd for p in rows))
    assert len(ledger.predictions(since=marks[0], until=marks[3])) == 3
    assert ledger.spent_between(marks[3], marks[3] + 60) == 0


def test_unusable_causes_are_counted_per_key_across_attempts(ledger_target):
    ledger = Ledger(ledger_target)
    for attempt, pid in enumerate(["p1", "p2"], start=1):
        job = _begin(ledger)
        assert job.attempts == attempt
        ledger.set_in_flight("k", pid, owner=ME)
        ledger.finish("k", "failed", cost_usd=0.05, status="succeeded", owner=ME, retryable=True,
                      unusable=("undecodable", {"message": f"does not decode ({pid})", "size": 1000}))
    job = ledger.get("k")
    entry = job.unusable["undecodable"]
    assert entry["count"] == 2 and entry["predictions"] == ["p1", "p2"] and entry["message"] == "does not decode (p2)"
    assert ledger.spent_usd("v") == pytest.approx(0.10)  # both were paid
    assert blocking_cause(job.unusable, lambda c, d: False)[0] == "undecodable"
    # One transient cause once does not block; a deterministic one does, until the configuration changes.
    assert blocking_cause({"expired": {"count": 1}}, lambda c, d: False) is None
    assert blocking_cause({"expired": {"count": 1}, "no_output": {"count": 1}}, lambda c, d: False) is not None
    too_large = {"too_large": {"count": 1, "limit": 100}}
    assert blocking_cause(too_large, lambda c, d: False)[0] == "too_large"
    assert blocking_cause(too_large, lambda c, d: d["limit"] < 200) is None
    # A new intent keeps the counts (they span attempts); the job itself starts clean.
    job = _begin(ledger)
    assert job.unusable["undecodable"]["count"] == 2 and job.error is None and job.retryable is None
