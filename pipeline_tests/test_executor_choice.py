"""The executor is chosen in one place (``pipeline.definitions.executor_def``: the ``executor``
argument, else $PIPELINE_EXECUTOR, else in-process) and applies to every job and to the UI's
materializations and backfills. The Celery (step-level) executor builds, and its broker and result
backend come from $CELERY_BROKER_URL / $CELERY_RESULT_BACKEND when a run's config is resolved."""

from __future__ import annotations

import dagster as dg
import pytest

from pipeline.definitions import build_definitions, definitions_recipe

JOBS = ("plan_video", "render_segment", "render_music", "assemble_video")


def executors(defs: dg.Definitions) -> set[str]:
    """The executor names of every job and of the implicit asset job (the UI's Materialize)."""
    names = {defs.get_job_def(job).executor_def.name for job in JOBS}
    return names | {defs.get_implicit_global_asset_job_def().executor_def.name}


@pytest.fixture
def no_executor_env(monkeypatch):
    for name in ("PIPELINE_EXECUTOR", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)


def test_the_default_is_in_process_for_every_job(no_executor_env, tmp_path):
    assert executors(build_definitions(str(tmp_path))) == {"in_process"}


@pytest.mark.parametrize("name,expected", [("in_process", "in_process"), ("multiprocess", "multiprocess"),
                                           ("celery", "celery")])
def test_the_environment_or_the_argument_chooses_it(no_executor_env, monkeypatch, tmp_path, name, expected):
    assert executors(build_definitions(str(tmp_path), executor=name)) == {expected}
    monkeypatch.setenv("PIPELINE_EXECUTOR", name)
    defs = build_definitions(str(tmp_path))
    assert executors(defs) == {expected}
    # Worker processes rebuild the same definitions from the recipe.
    monkeypatch.delenv("PIPELINE_EXECUTOR")
    assert executors(build_definitions(str(tmp_path), executor=name)) == executors(definitions_recipe(
        build_definitions(str(tmp_path), executor=name)).build())


def test_an_unknown_executor_is_refused_with_the_choices(no_executor_env, monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_EXECUTOR", "k8s")
    with pytest.raises(ValueError, match=r"unknown executor 'k8s' \(\$PIPELINE_EXECUTOR\); choose one of "
                                         r"in_process, multiprocess, celery"):
        build_definitions(str(tmp_path))


def test_the_celery_executor_takes_broker_and_backend_from_the_environment(no_executor_env, monkeypatch, tmp_path):
    job = build_definitions(str(tmp_path), executor="celery").get_job_def("render_segment")
    with pytest.raises(dg.DagsterInvalidConfigError, match="CELERY_BROKER_URL"):
        dg.validate_run_config(job, {})
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
    config = dg.validate_run_config(job, {})["execution"]["celery"]
    assert (config["broker"], config["backend"]) == ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1")
