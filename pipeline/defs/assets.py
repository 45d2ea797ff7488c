"""The asset graph (DESIGN.md "Asset graph and partitions"):

    video_spec [videos] ─┬─> beats ─> storyboard_images ─> chunk_videos [per_segment] ─> stitched_video ─┐
                         └─> music [videos] ─────────────────────────────────────────────────────────────┴─> final_video

Each asset is thin glue over one function in ``pipeline.stages``. Per-segment assets do nothing
on a phantom segment (no output, no provider call, a log line saying why).

Assembly takes constant time: the work that grows with the video is done beside the segments.
``chunk_videos`` conforms each chunk to the plan while the next one generates and leaves a segment
clip; ``music`` finishes the audio (duration, fade, loudness, AAC). ``stitched_video`` and
``final_video`` then copy streams (each records ``method``: "stream_copy", or "reencode" for
manifests written before clips and finished tracks existed).
"""


from contextlib import contextmanager
from typing import Iterator

import dagster as dg

from pipeline import costs, media, previews, stages
from pipeline.defs import checks, metadata, run_log
from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import BY_VIDEO, per_segment, segment_beat, segment_partition_key, split_key, videos
from pipeline.defs.resources import PipelineResource
from pipeline.characters import beat_references, registered_image_bytes
from pipeline.manifests import (
    BeatManifest,
    CharactersManifest,
    ChunkVideosManifest,
    FinalManifest,
    MusicManifest,
    NarrationManifest,
    SoundtrackManifest,
    StitchedManifest,
    StoryboardManifest,
    VideoPlan,
    segment_key,
)
from pipeline.progress import run_cost
from pipeline.providers.base import ProviderError
from pipeline.spec import SpecError
from pipeline.submissions import UnknownVideoError

PROVIDER_RETRY = dg.RetryPolicy(max_retries=3, delay=2.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
"""Step retries for assets that call providers: 2 s, 4 s, 8 s (±jitter). Permanent errors skip it."""

SPEC_IN = dg.AssetIn("video_spec", partition_mapping=BY_VIDEO)
CHARACTERS_IN = dg.AssetIn("characters", partition_mapping=BY_VIDEO)
"""A segment's video's character references (``pipeline.defs.character_assets``)."""


@contextmanager
def permanent_errors() -> Iterator[None]:
    """Turn errors that no retry can fix into a dg.Failure that is not retried."""
    try:
        yield
    except (SpecError, UnknownVideoError, stages.FanInError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    except ProviderError as exc:
        if exc.retryable:
            raise
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def _require(value, what: str, context: dg.AssetExecutionContext):
    if value is None:
        raise dg.Failure(description=f"{what} is not materialized for partition {context.partition_key}; "
                                     "materialize it first", allow_retries=False)
    return value


def _real_beat(context: dg.AssetExecutionContext, plan: VideoPlan | None):
    """The beat behind this segment partition, or None (logged) for a phantom segment."""
    video_id, segment = split_key(context.partition_key)
    plan = _require(plan, f"video_spec[{video_id}]", context)
    beat = segment_beat(plan, segment)
    if beat is None:
        context.log.info(f"segment {segment} is a phantom of video {video_id!r}: its plan has "
                         f"{len(plan.beats)} beats (segments {plan.segment_keys[0]}-{plan.segment_keys[-1]}); "
                         "nothing to do, no output")
    return beat


@dg.asset(partitions_def=videos, group_name="video", kinds={"yaml"}, retry_policy=PROVIDER_RETRY)
def video_spec(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.Output[VideoPlan]:
    """The validated spec: beats planned from a brief if needed, truncated to ceil(duration_s / 5),
    start times computed. Reads the spec registered for this video (``specs/<video_id>.json`` in the
    registry, ``PipelineResource.specs``: the data directory, or S3 when configured)."""
    from pipeline.submissions import load_submission

    from pipeline import voiceover

    voiced = []

    def voicer(request):  # narrated beats whose length comes from their narration (voiceover.time_beats)
        voiced.append(voiceover.voice_clip(request, provider, pipeline.generator))
        return voiced[-1]

    with permanent_errors(), run_log.provider_logs(context):
        submission = load_submission(pipeline.specs, context.partition_key)
        provider = pipeline.provider(submission.provider, submission.models)
        plan = stages.plan_video(submission, provider, voicer)
    if plan.truncation is not None:
        context.log.warning(stages.truncation_message(plan, plan.truncation))
        stages.record_truncation(pipeline.workspace, plan)
    if abs(plan.duration_s - plan.target_duration_s) > 1 / plan.fps:
        context.log.warning(f"{plan.video_id}: beats add up to {plan.duration_s:g} s but duration_s is "
                            f"{plan.target_duration_s:g} s; the video follows the beats")
    return dg.Output(plan, metadata={
        "beats": len(plan.beats),
        "duration_s": plan.duration_s,
        "target_duration_s": plan.target_duration_s,
        "provider": plan.provider,
        "models": dg.MetadataValue.json(plan.models),
        "planned_by": plan.planned_by,
        "resolution": f"{plan.width}x{plan.height} @ {plan.fps} fps",
        "truncated": plan.truncation is not None,
        "truncation": dg.MetadataValue.json(plan.truncation.model_dump() if plan.truncation else {}),
        "beat_table": metadata.md_table([{"segment": b.segment, "start_s": b.start_s, "duration_s": b.duration_s,
                                          "duration_from": b.duration_from, "motion": b.motion or "",
                                          "prompt": b.prompt, "narration": b.narration or ""} for b in plan.beats]),
        "narration": dg.MetadataValue.json(plan.narration.model_dump() if plan.narration else {}),
        "voiced_while_planning": len(voiced),
        "spec_sha256": plan.spec_sha256,
        **run_log.tag_run_cost(context, round(plan.planning_cost_usd + run_cost(voiced)[0], 6), run_cost(voiced)[1]),
    })


@dg.asset(partitions_def=per_segment, ins={"video_spec": SPEC_IN, "narration": dg.AssetIn("narration")},
          output_required=False, group_name="segments")
def beats(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
          narration: NarrationManifest | None):
    """One beat record per segment: image prompt, motion prompt, seed and chunk plan
    (ceil(duration / chunk length) chunks: a reference image chunk, then continuous chunks). Made
    after the segment's ``narration`` (``narration_assets``), so a narration that does not fit stops
    the segment before anything is paid for its pictures."""
    beat = _real_beat(context, video_spec)
    if beat is None:
        return
    manifest = stages.plan_beat(video_spec, beat, pipeline.provider(video_spec.provider, video_spec.models))
    yield dg.Output(manifest, metadata={
        "start_s": manifest.start_s, "duration_s": manifest.duration_s, "chunks": len(manifest.chunks),
        "chunk_plan": metadata.md_table([c.model_dump() for c in manifest.chunks]),
        "image_prompt": manifest.image_prompt, "motion_prompt": manifest.motion_prompt,
    })


@dg.asset(partitions_def=per_segment, ins={"video_spec": SPEC_IN, "characters": CHARACTERS_IN}, output_required=False,
          group_name="segments", kinds={"png"}, pool="image_api", retry_policy=PROVIDER_RETRY)
def storyboard_images(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
                      beats: BeatManifest | None, characters: CharactersManifest | None):
    """Exactly one storyboard image per beat, at the aspect ratio's draft resolution. A beat that
    names characters gets its image generated from their reference images (``characters``; made
    here through the same cache if that asset is not done for this plan yet): the request's inputs
    ``character:<name>`` hold their sha256 (metadata ``characters``)."""
    if _real_beat(context, video_spec) is None:
        return
    beat = _require(beats, "beats", context)
    provider = pipeline.provider(beat.provider, video_spec.models)
    with permanent_errors(), run_log.provider_logs(context):
        refs = beat_references(video_spec, beat, characters, provider, pipeline.generator,
                               registered_image_bytes(pipeline.specs, beat.video_id)) if beat.characters else {}
        manifest = stages.render_storyboard(beat, provider, pipeline.generator,
                                            progress=run_log.progress_logger(context), references=refs)
    image = manifest.image
    yield dg.Output(manifest, metadata={
        "path": dg.MetadataValue.path(str(pipeline.generator.local_path(image))),
        "size": f"{image.width}x{image.height}", "cache_hit": image.cache_hit, "cost_usd": image.cost_usd,
        "model": image.model, **run_log.tag_run_cost(context, *run_cost([image])),
        "characters": dg.MetadataValue.json({name: m.sha256 for name, m in refs.items()}),
    })


@dg.asset(partitions_def=per_segment, ins={"video_spec": SPEC_IN}, output_required=False, group_name="segments",
          kinds={"mp4"}, pool="video_api", retry_policy=PROVIDER_RETRY)
def chunk_videos(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
                 beats: BeatManifest | None, storyboard_images: StoryboardManifest | None):
    """The beat's chunk chain: a reference image chunk from the storyboard image, then continuous
    chunks each starting on the previous chunk's last frame. Each chunk's kept frames are conformed
    to the plan (fps, size, H.264 settings; a stream copy when the chunk already matches) in a
    background thread while the next chunk generates, then joined by stream copy into the segment
    clip that ``stitched_video`` joins. Finished chunks, conformed pieces and clips are cached, so a
    retry resumes at the chunk that failed. Metadata: the clip's frames, how each chunk was
    conformed, and the colour/brightness drift from the beat's first frame to each chunk's last
    frame (``drift_metadata``)."""
    if _real_beat(context, video_spec) is None:
        return
    beat = _require(beats, "beats", context)
    storyboard = _require(storyboard_images, "storyboard_images", context)
    with permanent_errors(), run_log.provider_logs(context):
        manifest = stages.render_chunks(beat, storyboard, pipeline.provider(beat.provider, video_spec.models),
                                        pipeline.generator, progress=run_log.progress_logger(context))
    lines = costs.segment_lines(manifest)[1:]
    yield dg.Output(manifest, metadata={
        "chunks": len(manifest.chunks),
        "generated_s": sum(c.video.duration_s or 0 for c in manifest.chunks),
        "duration_s": manifest.duration_s,
        "cost_usd": manifest.cost_usd,
        "paid_usd": costs.totals(lines)[0],
        "reused_usd": costs.totals(lines)[1],
        "cache_hits": sum(c.video.cache_hit for c in manifest.chunks),
        "clip_frames": manifest.clip.extra.get("frames", -1) if manifest.clip else -1,
        "clip_sha256": manifest.clip.sha256[:12] if manifest.clip else "",
        "conform_methods": dg.MetadataValue.json([c.conformed.extra.get("method") if c.conformed else None
                                                  for c in manifest.chunks]),
        "chunk_table": metadata.md_table([
            {"chunk": c.plan.index, "type": c.plan.chunk_type, "keep_s": c.plan.keep_s, "video_s": c.video.duration_s,
             "kept_frames": c.conformed.extra.get("frames", "") if c.conformed else 0,
             "conform": c.conformed.extra.get("method", "") if c.conformed else "",
             "cache_hit": "yes" if c.video.cache_hit else "no", "this_run_usd": costs.money(c.video.cost_usd),
             "paid_usd": costs.money(line.paid_usd), "reused_usd": costs.money(line.reused_usd),
             "paid_by": line.paid_by or "", "sha256": c.video.sha256[:12],
             "drift_delta_e": (c.drift or {}).get("delta_e", ""), "drift_luma": (c.drift or {}).get("luma_delta", "")}
            for c, line in zip(manifest.chunks, lines)]),
        **drift_metadata(manifest),
        **run_log.tag_run_cost(context, *run_cost(c.video for c in manifest.chunks)),
    })


def drift_metadata(manifest: ChunkVideosManifest) -> dict:
    """chunk_videos' drift metadata (``pipeline.drift``): the beat's drift (its first frame to its
    last frame) as ``drift_delta_e`` (CIE76 ΔE*ab of the mean colours) and ``drift_luma_delta``
    (mean BT.601 luma, 8-bit code values), and every chunk's drift record under ``drift``."""
    beat = manifest.drift or {}
    return {
        "drift_delta_e": float(beat.get("delta_e", float("nan"))),
        "drift_luma_delta": float(beat.get("luma_delta", float("nan"))),
        "drift": dg.MetadataValue.json({"beat": beat, "chunks": [c.drift for c in manifest.chunks],
                                        "units": "delta_e/delta_l/delta_a/delta_b: CIELAB; luma_delta, "
                                                 "rgb_mean_delta, rgb_std_delta: 8-bit code values (0-255)"}),
    }


@dg.asset(partitions_def=videos, group_name="video", kinds={"mp4"},
          ins={"chunk_videos": dg.AssetIn(partition_mapping=BY_VIDEO,
                                          metadata={"fan_in": True, "allow_missing_partitions": True})})
def stitched_video(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
                   chunk_videos: dict[str, ChunkVideosManifest]) -> dg.Output[StitchedManifest]:
    """All beats concatenated in timeline order, each trimmed to its exact duration: the segments'
    clips joined by stream copy (``method`` "stream_copy"); segments without a clip (older
    manifests) give their chunks, re-encoded as a whole unless they already match the plan
    ("reencode"). Checks the loaded segments against the spec: a missing or outdated real segment
    is an error naming it."""
    plan = _require(video_spec, "video_spec", context)
    provider = pipeline.provider(plan.provider, plan.models)
    expected = {b.segment: stages.plan_beat(plan, b, provider).fingerprint for b in plan.beats}
    with permanent_errors():
        ordered = stages.check_fan_in(plan, chunk_videos, expected)
    manifest = stages.stitch_video(plan, ordered, pipeline.generator)
    return dg.Output(manifest, metadata={
        "duration_s": manifest.video.duration_s, "segments": len(manifest.segments), "method": manifest.method,
        "segments_from_clips": manifest.clips or 0, "model": manifest.video.model,
        "cache_hit": manifest.video.cache_hit,
        "path": dg.MetadataValue.path(str(pipeline.generator.local_path(manifest.video))),
        "ignored_phantom_segments": sorted(set(chunk_videos) - set(plan.segment_keys)),
    })


@dg.asset(partitions_def=videos, group_name="video", kinds={"m4a"}, pool="music_api", retry_policy=PROVIDER_RETRY)
def music(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None) -> dg.Output[MusicManifest]:
    """A music track as long as the video, from the spec's music prompt and bpm, and the final
    video's audio finished from it: the video's duration, faded out, loudness-normalized (EBU R128,
    two-pass loudnorm), AAC at 48 kHz, which ``final_video`` muxes by stream copy."""
    plan = _require(video_spec, "video_spec", context)
    with permanent_errors(), run_log.provider_logs(context):
        manifest = stages.render_music(plan, pipeline.provider(plan.provider, plan.models),
                                       pipeline.generator, progress=run_log.progress_logger(context))
    line = costs.music_line(plan.video_id, manifest)
    return dg.Output(manifest, metadata={
        "duration_s": manifest.audio.duration_s, "bpm": plan.music.bpm if plan.music else 0,
        "cost_usd": manifest.audio.cost_usd,
        "paid_usd": line.paid_usd, "reused_usd": line.reused_usd, "paid_by": line.paid_by or "",
        "cache_hit": manifest.audio.cache_hit,
        "path": dg.MetadataValue.path(str(pipeline.generator.local_path(manifest.audio))),
        "track_duration_s": manifest.track.duration_s if manifest.track else 0.0,
        "track_path": (dg.MetadataValue.path(str(pipeline.generator.local_path(manifest.track)))
                       if manifest.track else ""),
        "loudness_in_lufs": float(manifest.track.extra.get("loudness", {}).get("input_i", "nan")) if manifest.track
        else float("nan"),
        **run_log.tag_run_cost(context, *run_cost([manifest.audio])),
    })


@dg.asset(partitions_def=videos, group_name="video", kinds={"mp4"}, check_specs=checks.FINAL_CHECKS)
def final_video(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
                stitched_video: StitchedManifest | None, music: MusicManifest | None,
                soundtrack: SoundtrackManifest | None):
    """The stitched video muxed with the music's finished track by stream copy (``mux_method``
    "stream_copy"; "reencode" when the music manifest predates finished tracks and the music is
    faded out and loudness-normalized here), published as ``videos/<video_id>.mp4``: in the data
    directory, or with S3 as the object ``s3://<bucket>/<prefix>/videos/<video_id>.mp4`` (a
    server-side copy; ``FinalManifest.published_uri``). Metadata: where it is (path or URI, and a
    link), an animated preview, a poster frame, a storyboard contact
    sheet and the cost table. Checks, recorded per video partition: storyboards match beats,
    duration matches the spec, audio present. The audio is the ``soundtrack``'s track (music, the
    narrated mix, or silence); with narration the subtitles are published as .vtt and .srt beside
    the video and muxed as a mov_text track (``subtitles`` in the metadata)."""
    plan = _require(video_spec, "video_spec", context)
    ledger = costs.open_ledger(pipeline.workspace.root, pipeline.provider(plan.provider, plan.models))
    cast = read_manifest(pipeline.manifests_dir, "characters", plan.video_id)
    cast = cast if isinstance(cast, CharactersManifest) and cast.spec_sha256 == plan.spec_sha256 else None
    manifest = stages.mux_video(plan, _require(stitched_video, "stitched_video", context),
                                _require(music, "music", context), pipeline.generator, pipeline.workspace, ledger,
                                characters=cast, soundtrack=soundtrack)
    boards = [read_manifest(pipeline.manifests_dir, "storyboard_images", str(segment_partition_key(plan.video_id, b.index)))
              for b in plan.beats]
    found = [b for b in boards if isinstance(b, StoryboardManifest)]
    shown = previews.render_previews(plan.video_id, manifest.video, [b.image for b in found],
                                     [segment_key(b.index) for b in found], pipeline.generator)
    info = media.probe(pipeline.generator.local_path(manifest.video), decode=False)  # the published bytes
    table = costs.cost_frame(manifest.costs)
    yield dg.Output(manifest, metadata={
        **metadata.final_video_metadata(manifest, shown, pipeline.generator),
        "duration_s": manifest.video.duration_s,
        "beats": manifest.beats, "chunks": manifest.chunks,
        "cost_usd": manifest.cost_usd,
        "paid_usd": manifest.paid_usd,
        "reused_usd": manifest.reused_usd,
        "cost_table": dg.MetadataValue.md(costs.markdown(table, columns=metadata.COST_TABLE_COLUMNS)),
        "costs": metadata.cost_table(table),
        "loudness_in_lufs": float(manifest.video.extra.get("loudness", {}).get("input_i", "nan")),
        "mux_method": manifest.mux_method or "",
        "subtitles": dg.MetadataValue.json(manifest.subtitles or {}),
        **run_log.tag_run_cost(context, 0.0, 0.0, {run_log.VIDEO_COST_TAG: costs.money(manifest.paid_usd)}),
    })
    yield from checks.final_checks(plan, manifest, {b.image.sha256 for b in found}, info)


segment_assets = [beats, storyboard_images, chunk_videos]
video_assets = [video_spec, stitched_video, music, final_video]
all_assets = [video_spec, *segment_assets, stitched_video, music, final_video]
