"""The ledger across processes, on SQLite and PostgreSQL: processes racing ``begin`` for the same
keys and one budget get exactly one owner per key and never commit past the budget; on
PostgreSQL a process reuses a few pooled connections however many calls it makes, and a forked
child opens its own instead of sharing its parent's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.ledger import Ledger
from pipeline.ledger_db import POSTGRES_POOL
from pipeline_tests.dagster_services import wait_until
from pipeline_tests.ledger_backends import ledger_target, postgres_url  # noqa: F401 (fixtures)
from pipeline_tests.ledger_racer import BUDGET_USD, ESTIMATE_USD
from pipeline_tests.pg_service import fresh_database

ROOT = Path(__file__).resolve().parent.parent
PROCESSES, KEYS = 4, 8


def test_racing_processes_get_one_owner_per_key_and_stay_within_the_budget(ledger_target, tmp_path):
    # The ledger is not created beforehand: the racers also race to create its tables.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [subprocess.Popen([sys.executable, "-m", "pipeline_tests.ledger_racer", ledger_target, str(tmp_path),
                                str(KEYS)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(PROCESSES)]
    try:
        def all_ready() -> bool:
            for r in racers:
                assert r.poll() is None, f"a racer exited early ({r.returncode}): {r.stderr.read()}"
            return len(list(tmp_path.glob("ready-*"))) == PROCESSES

        wait_until(all_ready, timeout=300, interval=0.05, what="every racer to open the ledger")
        (tmp_path / "go").touch()
        outputs = [r.communicate(timeout=300) for r in racers]
    finally:
        for r in racers:
            if r.poll() is None:
                r.kill()
                r.wait(60)
    for r, (out, err) in zip(racers, outputs):
        assert r.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    owned_shared = 0
    for i in range(KEYS):
        free = Counter(res["claims"][f"free-{i}"] for res in results)
        assert free["owner"] == 1 and free["refused"] == 0, (i, free)  # one owner; the others waited or adopted
        shared = Counter(res["claims"][f"shared-{i}"] for res in results)
        assert shared["owner"] in (0, 1), (i, shared)
        if shared["owner"] == 0:  # refused by everyone: the budget was taken when each of them asked
            assert shared["refused"] == PROCESSES, (i, shared)
        owned_shared += shared["owner"]
    assert owned_shared == round(BUDGET_USD / ESTIMATE_USD)  # the whole budget, and not a cent more
    assert max(res["max_committed"] for res in results) <= BUDGET_USD + 1e-9

    ledger = Ledger(ledger_target)
    assert ledger.spent_usd("shared") == pytest.approx(BUDGET_USD)
    assert ledger.committed_usd("shared") == pytest.approx(BUDGET_USD)
    assert ledger.spent_usd("free") == pytest.approx(KEYS * ESTIMATE_USD)
    jobs = ledger.jobs()
    assert len(jobs) == KEYS + owned_shared and {j.state for j in jobs} == {"succeeded"}
    assert all(j.attempts == 1 for j in jobs)
    assert len(ledger.predictions()) == len(jobs)  # one paid prediction per key


def _cycle(ledger: Ledger, key: str) -> None:
    job = ledger.begin(key, provider="test", model="m/x", video_id="v", estimate_usd=0.01, max_cost_usd=1000.0)
    assert ledger.renew(key, job.owner) == "renewed"
    ledger.set_in_flight(key, f"p-{key}", owner=job.owner)
    ledger.finish(key, "succeeded", cost_usd=0.01, owner=job.owner)
    assert ledger.get(key).state == "succeeded"
    ledger.committed_usd("v")
    ledger.predictions(key=key)


def test_a_process_reuses_a_few_pooled_postgres_connections(postgres_url):
    url = fresh_database(postgres_url)
    ledger = Ledger(url)
    connects = []
    sa.event.listen(ledger.db.engine, "connect", lambda *_: connects.append(1))
    for i in range(40):  # 280 ledger calls, one after another
        _cycle(ledger, f"serial-{i}")
    assert len(connects) <= 1

    threads = [threading.Thread(target=lambda t=t: [_cycle(ledger, f"t{t}-{i}") for i in range(15)])
               for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger.jobs()) == 40 + 6 * 15
    assert len(connects) <= 7  # at most one per thread at once, reused: not one per call
    with ledger.db.connect() as db:
        open_now = db.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                      " AND application_name = 'pipeline-ledger'")).scalar_one()
    assert 1 <= open_now <= POSTGRES_POOL["pool_size"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_postgres_connection(postgres_url):
    ledger = Ledger(fresh_database(postgres_url))
    backend = sa.select(sa.func.pg_backend_pid())
    with ledger.db.connect() as db:
        parent_backend = db.execute(backend).scalar_one()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: use the ledger, report its connection's server process, exit at once
        code = 1
        try:
            os.close(read)
            with ledger.db.connect() as db:
                child_backend = db.execute(backend).scalar_one()
            ledger.begin("from-child", provider="test", model="m/x", video_id="v", estimate_usd=0.01)
            os.write(write, str(child_backend).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        child_backend = int(f.read() or 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_backend and child_backend != parent_backend  # not the parent's pooled socket
    with ledger.db.connect() as db:
        assert db.execute(backend).scalar_one() == parent_backend  # the parent's connection still works
    assert ledger.get("from-child").state == "intent"


def test_postgres_sessions_end_when_their_client_vanishes(postgres_url):
    """The ledger's sessions ask the server to probe idle clients and to end a transaction left
    idle, so a crashed machine cannot hold the ledger's write lock or an upload lock for hours."""
    ledger = Ledger(fresh_database(postgres_url))
    with ledger.db.connect() as db:
        settings = dict(db.execute(sa.text(
            "SELECT name, setting FROM pg_settings WHERE name IN ('tcp_keepalives_idle',"
            " 'idle_in_transaction_session_timeout')")).all())
        name = db.execute(sa.text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"))
        assert name.scalar_one() == "pipeline-ledger"
    assert settings == {"tcp_keepalives_idle": "30", "idle_in_transaction_session_timeout": "60000"}
