"""A Dagster asset pipeline that turns a video spec into a finished AI-generated video.

Domain modules (no Dagster): ``spec``, ``manifests``, ``media``, ``store``, ``generation``,
``providers``, ``submissions``, ``stages``. Dagster layer: ``pipeline.defs`` and ``pipeline.definitions``.
"""
