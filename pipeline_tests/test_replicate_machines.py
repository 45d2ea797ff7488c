"""Machines sharing one PostgreSQL ledger: processes with data directories of their own (nothing
on disk in common, like workers on different hosts) and one fake Replicate server pay once per
request between them, upload a large input once, and all get the same outputs."""

from __future__ import annotations

import sys

import pytest

from pipeline.ledger import Ledger
from pipeline_tests.fake_replicate import FakeServerProcess
from pipeline_tests.ledger_backends import postgres_url  # noqa: F401 (fixture)
from pipeline_tests.pg_service import fresh_database
from pipeline_tests.test_replicate_shared import PRICES, Worker

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process identities need Linux /proc")


def test_machines_with_their_own_data_dirs_pay_once_per_key_through_a_postgres_ledger(tmp_path, postgres_url):
    url = fresh_database(postgres_url)
    machines = [tmp_path / f"machine-{i}" for i in range(3)]
    for m in machines:
        m.mkdir()
    with FakeServerProcess("--create-latency", "0.5", "--run-seconds", "0.3", "0.8", "--render-scale", "0.25") as server:
        workers = [Worker(server, m, f"video-{i}", "--ledger", url, "--go", str(tmp_path / "go"))
                   for i, m in enumerate(machines)]
        for w in workers:
            w.expect("ready")
        (tmp_path / "go").touch()
        results = [w.results() for w in workers]
        stats = server.stats()

    assert len(stats["creates"]) == len(PRICES) and set(stats["creates"].values()) == {1}, stats["creates"]
    assert stats["create_requests"] == len(PRICES)
    assert list(stats["uploads_by_sha256"].values()) == [1]  # the noisy start image, once for all machines
    for name, price in PRICES.items():
        assert len({r[name]["sha256"] for r in results}) == 1 and len({r[name]["prediction_id"] for r in results}) == 1
        payers = [r[name] for r in results if r[name]["cost_usd"] > 0]
        assert len(payers) == 1 and payers[0]["cost_usd"] == pytest.approx(price), [r[name] for r in results]
        assert all(r[name]["cache_hit"] is False for r in results)  # no cache in common: adopted via the ledger
    for m in machines:
        assert not (m / "data" / "ledger.sqlite").exists() and not (m / "data" / "locks").exists()
    ledger = Ledger(url)
    assert sum(ledger.spent_usd(f"video-{i}") for i in range(3)) == pytest.approx(sum(PRICES.values()))
    assert {j.state for j in ledger.jobs()} == {"succeeded"} and len(ledger.jobs()) == len(PRICES)
