"""The Dagster layer: partitions, resources, the IO manager, assets, jobs, sensors and schedules.

Thin glue over the Dagster-free domain modules; ``pipeline.definitions`` assembles it.
"""
