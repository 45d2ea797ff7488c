"""Partitions: one ``videos`` key per video, one ``segments`` key per beat index, crossed.

Dagster's multi-partitions are a full cross product (dagster issue #14228), so a video with 4
beats still has partitions for segments 004.. when another video has more beats. Such a
*phantom segment* is not part of its video: ``segment_beat`` tells the assets to do nothing there.
"""

from __future__ import annotations

import warnings

import dagster as dg

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


def split_key(partition_key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(video_id, segment) of a per-segment partition key."""
    if not isinstance(partition_key, dg.MultiPartitionKey):
        partition_key = per_segment.get_partition_key_from_str(partition_key)
    dims = partition_key.keys_by_dimension
    return dims["video"], dims["segment"]


def segment_beat(plan: VideoPlan, segment: str) -> PlannedBeat | None:
    """The beat a segment key stands for in ``plan``, or None when the segment is a phantom."""
    return plan.beat_for_segment(segment)


def ensure_partitions(instance: dg.DagsterInstance, plan: VideoPlan) -> list[str]:
    """Add the video's key and every segment key its plan needs. Returns the segment keys added."""
    if not instance.has_dynamic_partition(videos.name, plan.video_id):
        instance.add_dynamic_partitions(videos.name, [plan.video_id])
    existing = set(instance.get_dynamic_partitions(segments.name))
    new = [s for s in plan.segment_keys if s not in existing]
    if new:
        instance.add_dynamic_partitions(segments.name, new)
    return new
