"""The ledger's two backends for tests: ``ledger_target`` is a fixture parametrized over a SQLite
file in the test's tmp dir and an empty database on the session's private PostgreSQL server
(``pipeline_tests.pg_service``), so one test body runs on both. Import it together with the
server fixture: ``from pipeline_tests.ledger_backends import ledger_target, postgres_url  # noqa: F401``.
The PostgreSQL server is started only when a postgres case runs; every case ends by closing the
process's pooled ledger connections (many tests make many databases)."""

from __future__ import annotations

import pytest

from pipeline.ledger_db import dispose_engines
from pipeline_tests.pg_service import fresh_database, postgres_url  # noqa: F401 (the fixture)

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def ledger_target(request, tmp_path) -> str:
    """What to open a ``Ledger`` on: a SQLite file path (str) or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        target = str(tmp_path / "ledger.sqlite")
    else:
        target = fresh_database(request.getfixturevalue("postgres_url"))
    yield target
    dispose_engines()
