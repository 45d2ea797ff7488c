"""Dagster machinery that is not definitions (those live in ``pipeline.defs``):

- ``planner``: which runs a video needs, in what order, with which tags and run keys, and when it
  is up to date; the one planner of the sensors, the retry schedule and the CLI.
- ``status``: where each segment and video-level asset of a video stands, read from the instance.
- ``render``: the CLI's way to execute planned runs in-process (``pipeline render`` / ``retry``).
- ``instance``: opening the instance safely from many processes, run owners, dead-run sweeps.
- ``coordinator.VideoRunCoordinator`` (dagster.yaml ``run_coordinator``): the run queue, plus the
  ``video`` tag on every queued run and one assembly per state.
- ``launcher.ForkServerRunLauncher`` (dagster.yaml ``run_launcher``): runs start as processes forked
  from a warm fork server instead of fresh interpreters, with run-worker liveness for Dagster's run
  monitoring (the ``pipeline/owner`` run tag).
"""
