"""``python -m pipeline_tests.cli_driver ARGS``: the ``pipeline`` CLI (``pipeline.cli.main``) with
the instance wiring of ``pipeline.defs.instance`` applied, for as long as ``pipeline/cli.py`` does
not do it itself: ``_dagster`` opens the instance with ``open_instance`` (safe when many processes
start at once) and runs ``cli_startup`` (runs of dead processes reported failed, their temp files
swept), and ``render`` reports waiting for another render of the same video.

Once ``pipeline.cli`` calls ``open_instance`` and ``cli_startup`` itself (``CLI_IS_WIRED``), tests
run the real ``pipeline`` console script instead (``pipeline_command``), and this module is unused.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from pipeline import cli

CLI_IS_WIRED = all(name in inspect.getsource(cli) for name in ("open_instance", "cli_startup"))
"""True when ``pipeline/cli.py`` itself opens the instance safely and runs the startup sweep."""


def pipeline_command() -> list[str]:
    """The argv prefix that runs the ``pipeline`` CLI in a subprocess: the venv's ``pipeline``
    console script when the CLI is wired, else this driver."""
    if CLI_IS_WIRED:
        return [str(Path(sys.executable).parent / "pipeline")]
    return [sys.executable, "-m", "pipeline_tests.cli_driver"]


def _dagster(args):
    """``pipeline.cli._dagster`` with the wiring: exactly what cli.py should do."""
    from pipeline.definitions import build_definitions
    from pipeline.defs.instance import cli_startup, open_instance

    data_dir = cli._data_dir(args)
    cli.ensure_dagster_home(data_dir)
    instance = open_instance()
    cli_startup(instance, data_dir)
    return build_definitions(data_dir), instance


def main(argv: list[str] | None = None) -> int:
    if not CLI_IS_WIRED:
        cli._dagster = _dagster
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
