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
from pipeline.defs.resources import PipelineResource, default_data_dir
from pipeline.defs.schedules import all_schedules
from pipeline.defs.sensors import all_sensors


def build_definitions(data_dir: str | None = None, **pipeline_options) -> dg.Definitions:
    """Definitions bound to ``data_dir`` (default: $PIPELINE_DATA_DIR or ``data``).

    ``pipeline_options`` override PipelineResource fields (e.g. ``replicate_output_hosts``).
    """
    root = str(Path(data_dir or default_data_dir()).expanduser().resolve())
    token = dg.EnvVar("REPLICATE_API_TOKEN") if os.environ.get("REPLICATE_API_TOKEN") else None
    options = {"replicate_api_token": token, "replicate_base_url": os.environ.get("REPLICATE_BASE_URL"),
               "inbox_dir": os.environ.get("PIPELINE_INBOX_DIR"),
               **{f"replicate_{kind}_model": os.environ.get(f"REPLICATE_{kind.upper()}_MODEL")
                  for kind in ("image", "video", "music")},
               **pipeline_options}
    return dg.Definitions(
        assets=all_assets,
        jobs=all_jobs,
        sensors=all_sensors,
        schedules=all_schedules,
        resources={
            "pipeline": PipelineResource(data_dir=root, **options),
            "io_manager": ManifestIOManager(base_dir=str(Path(root) / "manifests")),
        },
    )


defs = build_definitions()
