"""The one entry point: every asset, resource, job, sensor and schedule of the pipeline, and the one
place that reads the environment.

``dagster dev`` (see workspace.yaml) loads ``defs``; the ``pipeline`` CLI calls ``build_definitions``
with the values given on its command line (it writes no environment variable).

Configuration has one path: ``build_definitions(...)`` arguments > environment variables > defaults,
chosen per deployment (hooli's pattern) by ``$PIPELINE_DEPLOYMENT``:

- ``local`` (default): media, cache and manifests under the data directory unless
  ``$PIPELINE_S3_BUCKET`` is set; the Replicate token only if ``$REPLICATE_API_TOKEN`` is set;
  default provider ``local``.
- ``production``: S3 is required (``$PIPELINE_S3_BUCKET``), the token is always read from
  ``$REPLICATE_API_TOKEN`` (a run fails at start, naming the variable, if it is unset), and the
  default provider is ``replicate``.

Variables read here (see README "Configuration"): PIPELINE_DEPLOYMENT, PIPELINE_EXECUTOR,
PIPELINE_DATA_DIR, PIPELINE_INBOX_DIR, PIPELINE_DEFAULT_PROVIDER, PIPELINE_LOCAL_FAULTS, PIPELINE_S3_BUCKET,
PIPELINE_S3_PREFIX, REPLICATE_API_TOKEN, REPLICATE_BASE_URL, REPLICATE_OUTPUT_HOSTS,
REPLICATE_IMAGE_MODEL, REPLICATE_VIDEO_MODEL, REPLICATE_MUSIC_MODEL. The token, the base URL, the
fault file, the default provider and the model defaults reach the resource as ``dg.EnvVar``s
(Dagster reads them when a run, sensor or schedule starts; run config and the UI show only the
variable's name). Paths and S3 settings are plain values: the CLI uses them outside any run.

PIPELINE_LEDGER_URL (the prediction ledger's database, e.g. PostgreSQL for a cluster; unset: the
SQLite file ``<data>/ledger.sqlite``) reaches the resource as a ``dg.EnvVar`` too: a URL may hold a
password.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.defs.assets import all_assets
from pipeline.defs.character_assets import characters
from pipeline.defs.io_manager import ManifestIOManager
from pipeline.defs.jobs import all_jobs
from pipeline.defs.narration_assets import narration_assets
from pipeline.defs.resources import LocalSettings, PipelineResource, ReplicateSettings, S3Settings
from pipeline.defs.schedules import all_schedules
from pipeline.defs.sensors import all_sensors
from pipeline.providers import PROVIDERS

DEPLOYMENTS = ("local", "production")
EXECUTORS = ("in_process", "multiprocess", "celery")


def default_data_dir() -> str:
    """$PIPELINE_DATA_DIR, else ``data`` (relative to the working directory)."""
    return os.environ.get("PIPELINE_DATA_DIR") or "data"


def _env(name: str, *, required: bool = False) -> dg.EnvVar | None:
    """``dg.EnvVar(name)`` if the variable is set (or ``required``), else None."""
    return dg.EnvVar(name) if required or os.environ.get(name) else None


def _int_env(name: str) -> int | None:
    """The variable's whole number if it is set (not a secret: read when the definitions are built).
    Raises ValueError naming it when it is not a whole number."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${name} must be a whole number of seconds, not {raw!r}") from None


def _given(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def deployment_name(deployment: str | None = None) -> str:
    """``deployment``, else $PIPELINE_DEPLOYMENT, else ``local``. Raises ValueError for another name."""
    name = deployment or os.environ.get("PIPELINE_DEPLOYMENT") or "local"
    if name not in DEPLOYMENTS:
        raise ValueError(f"unknown deployment {name!r} ($PIPELINE_DEPLOYMENT); choose one of {', '.join(DEPLOYMENTS)}")
    return name


def executor_def(name: str | None = None) -> dg.ExecutorDefinition:
    """The executor of every job (and of the UI's materializations and backfills): ``name``, else
    $PIPELINE_EXECUTOR, else ``in_process``.

    - ``in_process`` (default): a run's steps execute one after another in the run's process. Each
      job's steps form one chain (beats -> storyboard_images -> chunk_videos, stitched_video ->
      final_video), so a process per step bought no parallelism, only a Python start per step
      (~3 per run, seconds each on a busy 2-core machine). Step retry policies still apply.
    - ``multiprocess``: Dagster's default, a process per step.
    - ``celery``: dagster-celery's ``celery_executor``: each step is a Celery task (``execute_plan``)
      on the workers, with the broker and result backend from $CELERY_BROKER_URL and
      $CELERY_RESULT_BACKEND (read when a run starts; a run fails at start naming a variable that
      is unset). Steps of one run may then execute on different machines: configure S3
      (PIPELINE_S3_BUCKET), which holds the manifests they pass. Whole runs on Celery workers
      (``CeleryRunLauncher`` in dagster.yaml, see deploy/) need no executor change.

    Raises ValueError for another name, or for ``celery`` without dagster-celery installed."""
    name = name or os.environ.get("PIPELINE_EXECUTOR") or "in_process"
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError:
            raise ValueError("PIPELINE_EXECUTOR=celery needs dagster-celery: pip install -e '.[cluster]'") from None
        return celery_executor.configured({"broker": {"env": "CELERY_BROKER_URL"},
                                           "backend": {"env": "CELERY_RESULT_BACKEND"}}, name="celery")
    raise ValueError(f"unknown executor {name!r} ($PIPELINE_EXECUTOR); choose one of {', '.join(EXECUTORS)}")


def replicate_settings(deployment: str = "local", **values: Any) -> ReplicateSettings:
    """``ReplicateSettings`` from ``values`` (its field names; None: not given) over the environment.

    The token is never taken as a value: it is ``dg.EnvVar("REPLICATE_API_TOKEN")`` (always in
    production, when set in local), or an ``api_token`` given as a ``dg.EnvVar``. Raises ValueError
    for a token given as plain text and TypeError for an unknown field.
    """
    unknown = set(values) - set(ReplicateSettings.model_fields)
    if unknown:
        raise TypeError(f"unknown Replicate setting(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(ReplicateSettings.model_fields)}")
    token = values.pop("api_token", None)
    if token is not None and not isinstance(token, dg.EnvVar):
        raise ValueError("give the Replicate token as dg.EnvVar(...) (e.g. $REPLICATE_API_TOKEN), never as a value: "
                         "a value would show in run config and the UI")
    hosts = [h.strip() for h in os.environ.get("REPLICATE_OUTPUT_HOSTS", "").split(",") if h.strip()]
    env_values = {"api_token": token or _env("REPLICATE_API_TOKEN", required=deployment == "production"),
                  "base_url": _env("REPLICATE_BASE_URL"), "output_hosts": hosts or None,
                  "sync_wait_s": _int_env("REPLICATE_SYNC_WAIT_S"),
                  **{f"{kind}_model": _env(f"REPLICATE_{kind.upper()}_MODEL") for kind in ("image", "video", "music")}}
    merged = {name: _given(values.get(name), env_values.get(name)) for name in ReplicateSettings.model_fields}
    return ReplicateSettings(**{k: v for k, v in merged.items() if v is not None})


def s3_settings(deployment: str = "local", *, s3: S3Settings | None = None, bucket: str | None = None,
                prefix: str | None = None) -> S3Settings | None:
    """The S3 settings: ``s3``, else ``bucket`` / ``prefix`` over $PIPELINE_S3_BUCKET /
    $PIPELINE_S3_PREFIX; None (local media) without a bucket. Raises ValueError in production
    without a bucket."""
    if s3 is not None:
        return s3
    bucket = bucket or os.environ.get("PIPELINE_S3_BUCKET") or None
    if bucket is None:
        if deployment == "production":
            raise ValueError("the production deployment keeps media in S3: set PIPELINE_S3_BUCKET "
                             "(or use PIPELINE_DEPLOYMENT=local)")
        return None
    return S3Settings(bucket=bucket, prefix=_given(prefix, os.environ.get("PIPELINE_S3_PREFIX", "")))


def pipeline_resources(data_dir: str | None = None, *, deployment: str | None = None, inbox_dir: str | None = None,
                       default_provider: str | None = None, replicate: ReplicateSettings | None = None,
                       local_faults_file: str | None = None, s3: S3Settings | None = None,
                       s3_bucket: str | None = None, s3_prefix: str | None = None,
                       ledger_url: str | None = None, **replicate_options: Any) -> dict[str, Any]:
    """The resources of a deployment (``"pipeline"`` and ``"io_manager"``), every argument over the
    environment (None: not given). See ``build_definitions`` for the arguments. Raises ValueError
    for an unknown deployment or provider, TypeError for an unknown option."""
    deployment = deployment_name(deployment)
    root = str(Path(data_dir or default_data_dir()).expanduser().resolve())
    if replicate is None:
        bad = [k for k in replicate_options if not k.startswith("replicate_")]
        if bad:
            raise TypeError(f"unknown option(s) {', '.join(sorted(bad))}")
        replicate = replicate_settings(deployment, **{k.removeprefix("replicate_"): v
                                                      for k, v in replicate_options.items()})
    elif replicate_options:
        raise TypeError("give either replicate=ReplicateSettings(...) or replicate_* options, not both")
    if default_provider is not None and default_provider not in PROVIDERS:
        raise ValueError(f"unknown default provider {default_provider!r}; choose one of {', '.join(PROVIDERS)}")
    env_provider = os.environ.get("PIPELINE_DEFAULT_PROVIDER")
    if default_provider is None and env_provider and env_provider not in PROVIDERS:
        raise ValueError(f"PIPELINE_DEFAULT_PROVIDER={env_provider!r} is not a provider; "
                         f"choose one of {', '.join(PROVIDERS)}")
    provider = default_provider or _env("PIPELINE_DEFAULT_PROVIDER") or (
        "replicate" if deployment == "production" else "local")
    s3 = s3_settings(deployment, s3=s3, bucket=s3_bucket, prefix=s3_prefix)
    pipeline = PipelineResource(
        data_dir=root, inbox_dir=inbox_dir or os.environ.get("PIPELINE_INBOX_DIR") or None,
        default_provider=provider, replicate=replicate, s3=s3,
        ledger_url=ledger_url or _env("PIPELINE_LEDGER_URL"),
        local=LocalSettings(faults_file=local_faults_file or _env("PIPELINE_LOCAL_FAULTS")))
    return {"pipeline": pipeline, "io_manager": ManifestIOManager(base_dir=str(Path(root) / "manifests"), s3=s3)}


def build_definitions(data_dir: str | None = None, *, executor: str | None = None,
                      **options: Any) -> dg.Definitions:
    """Definitions bound to ``data_dir`` (default: $PIPELINE_DATA_DIR or ``data``).

    ``executor``: the jobs' executor (``executor_def``; over $PIPELINE_EXECUTOR, default
    ``in_process``). ``options`` (each over its environment variable; None: not given):
    ``deployment`` ("local" or "production"), ``inbox_dir``, ``default_provider`` ("local" or "replicate"), ``replicate``
    (a whole ``ReplicateSettings``) or ``replicate_<field>`` shorthands (e.g.
    ``replicate_output_hosts=["http://127.0.0.1:8765"]``, ``replicate_poll_interval_s=0.02``,
    ``replicate_video_model="kwaivgi/kling-v2.1"``), ``local_faults_file``, ``s3``
    (``S3Settings``) or ``s3_bucket`` / ``s3_prefix``, ``ledger_url`` (the ledger's database URL,
    over $PIPELINE_LEDGER_URL; unset: ``<data_dir>/ledger.sqlite``). S3 endpoint, region and credentials come
    from boto3's environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, ...,
    profiles, roles); the IO manager gets the same S3 settings. Raises ValueError / TypeError for
    a bad option (see ``pipeline_resources``).
    """
    defs = dg.Definitions(
        assets=[*all_assets, characters, *narration_assets],
        jobs=all_jobs,
        sensors=all_sensors,
        # Every job, backfills and "Materialize" from the UI: one executor (in-process by default).
        executor=executor_def(executor),
        schedules=all_schedules,
        resources=pipeline_resources(data_dir, **options),
    )
    setattr(defs, _RECIPE_ATTR, DefinitionsRecipe(data_dir, {**options, **({"executor": executor} if executor else {})}))
    return defs


_RECIPE_ATTR = "_pipeline_recipe"


@dataclass(frozen=True)
class DefinitionsRecipe:
    """The arguments of one ``build_definitions`` call (picklable), so another process builds the
    same definitions: a CLI render's worker processes do (``pipeline.orchestration.render``).
    Environment variables are read again where ``build`` runs, so give that process the same
    environment and working directory."""

    data_dir: str | None
    options: dict[str, Any]

    def build(self) -> dg.Definitions:
        """``build_definitions(data_dir, **options)``."""
        return build_definitions(self.data_dir, **self.options)


def definitions_recipe(defs: dg.Definitions) -> DefinitionsRecipe:
    """How ``defs`` was built. Raises ValueError for definitions not made by ``build_definitions``."""
    recipe = getattr(defs, _RECIPE_ATTR, None)
    if not isinstance(recipe, DefinitionsRecipe):
        raise ValueError("these definitions were not made by pipeline.definitions.build_definitions, so worker "
                         "processes cannot rebuild them; build them with build_definitions(data_dir, **options)")
    return recipe


defs = build_definitions()
