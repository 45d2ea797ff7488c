"""The one entry point: every asset, resource, job, sensor and schedule of the pipeline.

``dagster dev`` (see workspace.yaml) and the ``pipeline`` CLI load ``defs`` from here.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from pipeline.defs.assets import all_assets
from pipeline.defs.io_manager import ManifestIOManager
from pipeline.defs.jobs import all_jobs
from pipeline.defs.resources import PipelineResource, S3Settings, default_data_dir
from pipeline.defs.schedules import all_schedules
from pipeline.defs.sensors import all_sensors


def build_definitions(data_dir: str | None = None, **pipeline_options) -> dg.Definitions:
    """Definitions bound to ``data_dir`` (default: $PIPELINE_DATA_DIR or ``data``).

    ``pipeline_options`` override PipelineResource fields (e.g. ``replicate_output_hosts``, or
    ``s3=S3Settings(...)``); ``s3_bucket`` and ``s3_prefix`` are shorthands for ``s3``. S3 is
    otherwise configured by $PIPELINE_S3_BUCKET (and $PIPELINE_S3_PREFIX); endpoint, region and
    credentials come from boto3's environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION,
    AWS_ACCESS_KEY_ID, ..., profiles, roles). The IO manager gets the same S3 settings.
    """
    root = str(Path(data_dir or default_data_dir()).expanduser().resolve())
    token = dg.EnvVar("REPLICATE_API_TOKEN") if os.environ.get("REPLICATE_API_TOKEN") else None
    bucket = pipeline_options.pop("s3_bucket", None) or os.environ.get("PIPELINE_S3_BUCKET") or None
    prefix = pipeline_options.pop("s3_prefix", None) or os.environ.get("PIPELINE_S3_PREFIX", "")
    s3 = pipeline_options.pop("s3", None) or (S3Settings(bucket=bucket, prefix=prefix) if bucket else None)
    options = {"replicate_api_token": token, "replicate_base_url": os.environ.get("REPLICATE_BASE_URL"),
               "inbox_dir": os.environ.get("PIPELINE_INBOX_DIR"),
               **{f"replicate_{kind}_model": os.environ.get(f"REPLICATE_{kind.upper()}_MODEL")
                  for kind in ("image", "video", "music")},
               "s3": s3,
               **pipeline_options}
    return dg.Definitions(
        assets=all_assets,
        jobs=all_jobs,
        sensors=all_sensors,
        # Backfills and "Materialize" from the UI run each partition's chain of steps in one process
        # (as the jobs do): a process per step buys no parallelism on a chain and costs seconds.
        executor=dg.in_process_executor,
        schedules=all_schedules,
        resources={
            "pipeline": PipelineResource(data_dir=root, **options),
            "io_manager": ManifestIOManager(base_dir=str(Path(root) / "manifests"), s3=s3),
        },
    )


defs = build_definitions()
