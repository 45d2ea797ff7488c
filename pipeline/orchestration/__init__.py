"""Dagster machinery that is not definitions: run launching (``launcher.ForkServerRunLauncher``,
the instance's ``run_launcher`` in dagster.yaml: runs start as processes forked from a warm fork
server, tagged with the worker that executes them so run monitoring can tell a dead run), and the
pieces the CLI and the daemon share to plan, coordinate, execute in-process and report on a
video's runs. Nothing here defines assets, jobs, sensors or schedules; those live in
``pipeline.defs``.
"""
