"""Choosing the ledger's database: ``Ledger(path_or_url)``, and $PIPELINE_LEDGER_URL read by
``pipeline.definitions`` into ``PipelineResource.ledger_url`` (a ``dg.EnvVar``: a URL may hold a
password), reaching the replicate provider and ``pipeline cost``."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from pipeline.definitions import build_definitions
from pipeline.ledger import Ledger
from pipeline.ledger_db import ledger_url
from pipeline_tests.cli_processes import clean_env, pipeline_command
from pipeline_tests.conftest import ROOT, make_dagster_home
from pipeline_tests.ledger_backends import postgres_url  # noqa: F401 (fixture)
from pipeline_tests.pg_service import fresh_database


def test_urls_and_paths_name_the_right_database(tmp_path):
    assert ledger_url(tmp_path / "l.sqlite").render_as_string() == f"sqlite:///{tmp_path.resolve()}/l.sqlite"
    assert ledger_url("rel/l.sqlite").database == str(Path("rel/l.sqlite").resolve())
    # SQLAlchemy 2.x would take a bare postgresql:// to psycopg 3, which is not installed.
    for bare in ("postgresql://u:pw@db.example:5432/ledger", "postgres://u:pw@db.example:5432/ledger"):
        assert ledger_url(bare).drivername == "postgresql+psycopg2"
    assert ledger_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"
    with pytest.raises(ValueError, match="SQLite or PostgreSQL, not 'mysql'"):
        ledger_url("mysql://u:secret@h/db")
    with pytest.raises(ValueError, match="in-memory"):
        ledger_url("sqlite://")
    with pytest.raises(ValueError) as err:
        ledger_url("postgresql://u:secret@h:notaport/db")
    assert "secret" not in str(err.value)
    ledger = Ledger(tmp_path / "sub" / "l.sqlite")  # a missing directory is made
    assert ledger.path == (tmp_path / "sub" / "l.sqlite").resolve() and ledger.url == str(ledger.path)


def test_the_environment_variable_reaches_the_provider_and_pipeline_cost(postgres_url, tmp_path, monkeypatch):
    url = fresh_database(postgres_url)
    monkeypatch.setenv("PIPELINE_LEDGER_URL", url)
    data = tmp_path / "data"
    pipeline = build_definitions(str(data)).resources["pipeline"]
    assert isinstance(pipeline.ledger_url, dg.EnvVar) and pipeline.ledger_url.env_var_name == "PIPELINE_LEDGER_URL"
    assert pipeline.ledger_target == url
    provider = pipeline.provider("replicate")
    assert provider.ledger.path is None and provider.ledger.url == url
    assert not (data / "ledger.sqlite").exists()  # nothing machine-local

    # A payment recorded in the database is what `pipeline cost` (another process) reports.
    ledger = Ledger(url)
    ledger.begin("k", provider="replicate", model="m/x", video_id="shared-video", estimate_usd=0.2)
    ledger.set_in_flight("k", "p1")
    ledger.finish("k", "succeeded", cost_usd=0.1234)
    home = make_dagster_home(tmp_path / "home")
    env = clean_env(DAGSTER_HOME=str(home), PIPELINE_DATA_DIR=str(data), PIPELINE_LEDGER_URL=url, COLUMNS="200")
    cli = subprocess.run([*pipeline_command(), "cost", "--since", f"{time.time() - 3600:.0f}", "--markdown"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    assert "shared-video" in cli.stdout and "0.1234" in cli.stdout, cli.stdout
    assert not (data / "ledger.sqlite").exists()

    # Given explicitly, the URL wins over the variable; unset, the data directory's SQLite file.
    other = fresh_database(postgres_url)
    assert build_definitions(str(data), ledger_url=other).resources["pipeline"].ledger_target == other
    monkeypatch.delenv("PIPELINE_LEDGER_URL")
    local = build_definitions(str(data)).resources["pipeline"]
    assert local.ledger_url is None and local.provider("replicate").ledger.path == (data / "ledger.sqlite").resolve()
