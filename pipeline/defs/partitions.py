"""Partitions: one ``videos`` key per video, one ``segments`` key per beat index, crossed.

Dagster's multi-partitions are a full cross product (dagster issue #14228), so a video with 4
beats still has partitions for segments 004.. when another video has more beats. Such a
*phantom segment* is not part of its video: ``segment_beat`` tells the assets to do nothing there,
and ``pipeline.orchestration.phantoms`` records it (a runless materialization marked
``phantom: true``) wherever keys are added or a video is planned, so Dagster does not show it missing.
"""

from __future__ import annotations

import random
import time
import warnings

import dagster as dg
import sqlalchemy.exc

from pipeline.manifests import PlannedBeat, VideoPlan, segment_key

videos = dg.DynamicPartitionsDefinition(name="videos")
segments = dg.DynamicPartitionsDefinition(name="segments")
per_segment = dg.MultiPartitionsDefinition({"video": videos, "segment": segments})

with warnings.catch_warnings():  # beta in 1.13, and exactly the mapping DESIGN.md calls for
    warnings.simplefilter("ignore", dg.BetaWarning)
    BY_VIDEO = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="video")
"""Maps a video's partition to all of its (video, segment) partitions, and back."""


def segment_partition_key(video_id: str, index: int) -> dg.MultiPartitionKey:
    """The per-segment partition key of beat ``index`` of ``video_id``."""
    return dg.MultiPartitionKey({"video": video_id, "segment": segment_key(index)})


def partition_key(video_id: str, segment: str | None) -> str | dg.MultiPartitionKey:
    """The partition key of a run: per-segment for ``segment`` ("000", ...), else the video's."""
    return video_id if segment is None else dg.MultiPartitionKey({"video": video_id, "segment": segment})


def split_key(partition_key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(video_id, segment) of a per-segment partition key."""
    if not isinstance(partition_key, dg.MultiPartitionKey):
        partition_key = per_segment.get_partition_key_from_str(partition_key)
    dims = partition_key.keys_by_dimension
    return dims["video"], dims["segment"]


def segment_beat(plan: VideoPlan, segment: str) -> PlannedBeat | None:
    """The beat a segment key stands for in ``plan``, or None when the segment is a phantom."""
    return plan.beat_for_segment(segment)


def add_partitions(instance: dg.DagsterInstance, partitions_def: str | dg.DynamicPartitionsDefinition,
                   keys: list[str], *, attempts: int = 20) -> list[str]:
    """Add the dynamic partition ``keys`` of ``partitions_def`` (a definition or its name) that
    do not exist yet. Returns the keys this call added (those that were already there, or were
    added by a racing process, are not).

    Safe under races with other processes and machines: Dagster checks and then inserts, so two
    writers can both see a key missing and one insert fails on the unique constraint
    (``sqlalchemy.exc.IntegrityError``, on SQLite and Postgres alike). Such a failure is caught,
    the keys are checked again, and only the still missing ones are added; a locked SQLite
    database ("database is locked") is retried after a short backoff. Raises the last error
    after ``attempts`` failed tries (each one means another writer made progress, so this is
    only reached when something else is wrong)."""
    name = partitions_def if isinstance(partitions_def, str) else partitions_def.name
    wanted = list(dict.fromkeys(keys))
    for attempt in range(attempts):
        existing = set(instance.get_dynamic_partitions(name)) if wanted else set()
        new = [k for k in wanted if k not in existing]
        if not new:
            return []
        try:
            instance.add_dynamic_partitions(name, new)
            return new
        except sqlalchemy.exc.IntegrityError:
            if attempt == attempts - 1:
                raise
        except sqlalchemy.exc.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
    return []


def ensure_partitions(instance: dg.DagsterInstance, plan: VideoPlan) -> list[str]:
    """Add the video's key and every segment key its plan needs (``add_partitions``: safe when
    several processes do it at once). Returns the segment keys this call added. Records no
    phantoms: after planning, call ``phantoms.ensure_plan_partitions``, which calls this."""
    add_partitions(instance, videos, [plan.video_id])
    return add_partitions(instance, segments, list(plan.segment_keys))
