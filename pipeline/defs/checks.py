"""Asset checks of ``final_video``, partitioned by video like the asset.

Each check result is recorded for the video's partition (``AssetCheckSpec(partitions_def=videos)``,
a preview feature of Dagster 1.13), so a failed check on one video stays visible on that video's
partition after another video assembles. Each result also names the video in its description and
metadata, for views that show no partition.
"""

from __future__ import annotations

import warnings

import dagster as dg

from pipeline.defs.partitions import videos
from pipeline.manifests import FinalManifest, VideoPlan
from pipeline.media import MediaInfo

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)  # partitions_def on AssetCheckSpec is "preview"
    FINAL_CHECKS = [
        dg.AssetCheckSpec("storyboards_match_beats", asset="final_video", partitions_def=videos,
                          description="Exactly one storyboard image per beat of the plan."),
        dg.AssetCheckSpec("duration_matches_spec", asset="final_video", partitions_def=videos,
                          description="The final video lasts the spec's duration_s, within one frame."),
        dg.AssetCheckSpec("audio_present", asset="final_video", partitions_def=videos,
                          description="The final video has an audio track as long as the video, within one frame."),
    ]
"""The checks ``final_video`` runs on every materialization, one result per video partition."""


def final_checks(plan: VideoPlan, manifest: FinalManifest, storyboard_shas: set[str],
                 info: MediaInfo) -> list[dg.AssetCheckResult]:
    """The results of ``FINAL_CHECKS`` for one video: ``storyboard_shas`` are the sha256 of the
    storyboard images found for its beats, ``info`` the probe of the published file. Times in
    seconds; a frame is 1 / ``plan.fps``."""
    vid, frame = plan.video_id, 1 / plan.fps
    duration = manifest.video.duration_s or 0.0
    audio_s = info.audio_duration_s or 0.0
    audio_ok = info.has_audio and abs(audio_s - duration) <= frame + 0.05
    return [
        dg.AssetCheckResult(
            check_name="storyboards_match_beats", passed=len(storyboard_shas) == len(plan.beats),
            description=f"{vid}: {len(storyboard_shas)} distinct storyboard images for {len(plan.beats)} beats",
            metadata={"video_id": vid, "beats": len(plan.beats), "storyboard_images": len(storyboard_shas)}),
        dg.AssetCheckResult(
            check_name="duration_matches_spec", passed=abs(duration - plan.target_duration_s) <= frame + 1e-6,
            severity=dg.AssetCheckSeverity.WARN,
            description=(f"{vid}: the final video lasts {duration:.3f} s, the spec's duration_s is "
                         f"{plan.target_duration_s:g} s (its beats add up to {plan.duration_s:g} s)"),
            metadata={"video_id": vid, "duration_s": duration, "spec_duration_s": plan.target_duration_s,
                      "beats_duration_s": plan.duration_s}),
        dg.AssetCheckResult(
            check_name="audio_present", passed=audio_ok,
            description=(f"{vid}: {info.audio_codec or 'no'} audio, {audio_s:.3f} s for {duration:.3f} s of video"),
            metadata={"video_id": vid, "audio_codec": info.audio_codec or "none", "audio_duration_s": audio_s}),
    ]
