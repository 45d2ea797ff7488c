"""Dagster machinery that is not definitions: run launching (``launcher.ForkServerRunLauncher``,
configured as the instance's ``run_launcher`` in dagster.yaml: runs start as processes forked
from a warm fork server instead of fresh interpreters) and run-worker liveness for Dagster's run
monitoring (the ``pipeline/owner`` run tag). Nothing here defines assets, jobs or sensors; those
live in ``pipeline.defs``.
"""
