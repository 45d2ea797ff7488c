"""The asset graph (DESIGN.md "Asset graph and partitions"):

    video_spec [videos] ─┬─> beats ─> storyboard_images ─> chunk_videos [per_segment] ─> stitched_video ─┐
                         └─> music [videos] ─────────────────────────────────────────────────────────────┴─> final_video

Each asset is thin glue over one function in ``pipeline.stages``. Per-segment assets do nothing
on a phantom segment (no output, no provider call, a log line saying why).
"""


from contextlib import contextmanager
from typing import Iterator

import base64

import dagster as dg
import pandas as pd

from pipeline import costs, media, stages
from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import BY_VIDEO, per_segment, segment_beat, segment_partition_key, split_key, videos
from pipeline.defs.resources import PipelineResource
from pipeline.manifests import (
    BeatManifest,
    ChunkVideosManifest,
    FinalManifest,
    MusicManifest,
    StitchedManifest,
    StoryboardManifest,
    VideoPlan,
)
from pipeline.providers.base import ProviderError
from pipeline.spec import SpecError
from pipeline.submissions import UnknownVideoError

PROVIDER_RETRY = dg.RetryPolicy(max_retries=3, delay=2.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
"""Step retries for assets that call providers: 2 s, 4 s, 8 s (±jitter). Permanent errors skip it."""

SPEC_IN = dg.AssetIn("video_spec", partition_mapping=BY_VIDEO)


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


def _md_table(rows: list[dict]) -> dg.MetadataValue:
    return dg.MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False) if rows else "_none_")


COST_TABLE_COLUMNS = ["stage", "segment", "item", "provider", "model", "units", "unit", "paid_usd", "reused_usd",
                      "paid_by", "cache_hit", "note"]
"""The cost table's columns in final_video's markdown metadata (``costs`` has them all)."""


def _table_metadata(table: pd.DataFrame) -> dg.MetadataValue:
    """A cost table as Dagster table metadata: every column as text (empty when missing), money
    formatted, with a total row (``pipeline.costs.display_rows``)."""
    columns = [c for c in table.columns if c != "cache_key"]
    rows = costs.display_rows(table)
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: r[c] for c in columns}) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]))


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
    start times computed. Reads the spec registered for this video (``data/specs/<video_id>.json``)."""
    from pipeline.submissions import load_submission

    with permanent_errors():
        submission = load_submission(pipeline.workspace, context.partition_key)
        plan = stages.plan_video(submission, pipeline.provider(submission.provider, submission.models))
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
        "beat_table": _md_table([{"segment": b.segment, "start_s": b.start_s, "duration_s": b.duration_s,
                                  "motion": b.motion or "", "prompt": b.prompt} for b in plan.beats]),
        "spec_sha256": plan.spec_sha256,
    })


@dg.asset(partitions_def=per_segment, ins={"video_spec": SPEC_IN}, output_required=False, group_name="segments")
def beats(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None):
    """One beat record per segment: image prompt, motion prompt, seed and chunk plan
    (ceil(duration / chunk length) chunks: a reference image chunk, then continuous chunks)."""
    beat = _real_beat(context, video_spec)
    if beat is None:
        return
    manifest = stages.plan_beat(video_spec, beat, pipeline.provider(video_spec.provider, video_spec.models))
    yield dg.Output(manifest, metadata={
        "start_s": manifest.start_s, "duration_s": manifest.duration_s, "chunks": len(manifest.chunks),
        "chunk_plan": _md_table([c.model_dump() for c in manifest.chunks]),
        "image_prompt": manifest.image_prompt, "motion_prompt": manifest.motion_prompt,
    })


@dg.asset(partitions_def=per_segment, ins={"video_spec": SPEC_IN}, output_required=False, group_name="segments",
          kinds={"png"}, pool="image_api", retry_policy=PROVIDER_RETRY)
def storyboard_images(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
                      beats: BeatManifest | None):
    """Exactly one storyboard image per beat, at the aspect ratio's draft resolution."""
    if _real_beat(context, video_spec) is None:
        return
    beat = _require(beats, "beats", context)
    with permanent_errors():
        manifest = stages.render_storyboard(beat, pipeline.provider(beat.provider, video_spec.models), pipeline.generator)
    image = manifest.image
    yield dg.Output(manifest, metadata={
        "path": dg.MetadataValue.path(str(pipeline.generator.local_path(image))),
        "size": f"{image.width}x{image.height}", "cache_hit": image.cache_hit, "cost_usd": image.cost_usd,
        "model": image.model,
    })


@dg.asset(partitions_def=per_segment, ins={"video_spec": SPEC_IN}, output_required=False, group_name="segments",
          kinds={"mp4"}, pool="video_api", retry_policy=PROVIDER_RETRY)
def chunk_videos(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
                 beats: BeatManifest | None, storyboard_images: StoryboardManifest | None):
    """The beat's chunk chain: a reference image chunk from the storyboard image, then continuous
    chunks each starting on the previous chunk's last frame. Finished chunks are cached, so a
    retry resumes at the chunk that failed."""
    if _real_beat(context, video_spec) is None:
        return
    beat = _require(beats, "beats", context)
    storyboard = _require(storyboard_images, "storyboard_images", context)
    with permanent_errors():
        manifest = stages.render_chunks(beat, storyboard, pipeline.provider(beat.provider, video_spec.models), pipeline.generator)
    lines = costs.segment_lines(manifest)[1:]
    yield dg.Output(manifest, metadata={
        "chunks": len(manifest.chunks),
        "generated_s": sum(c.video.duration_s or 0 for c in manifest.chunks),
        "duration_s": manifest.duration_s,
        "cost_usd": manifest.cost_usd,
        "paid_usd": costs.totals(lines)[0],
        "reused_usd": costs.totals(lines)[1],
        "cache_hits": sum(c.video.cache_hit for c in manifest.chunks),
        "chunk_table": _md_table([{"chunk": c.plan.index, "type": c.plan.chunk_type, "keep_s": c.plan.keep_s,
                                   "video_s": c.video.duration_s, "cache_hit": "yes" if c.video.cache_hit else "no",
                                   "this_run_usd": costs.money(c.video.cost_usd),
                                   "paid_usd": costs.money(line.paid_usd), "reused_usd": costs.money(line.reused_usd),
                                   "paid_by": line.paid_by or "",
                                   "sha256": c.video.sha256[:12]}
                                  for c, line in zip(manifest.chunks, lines)]),
    })


@dg.asset(partitions_def=videos, group_name="video", kinds={"mp4"},
          ins={"chunk_videos": dg.AssetIn(partition_mapping=BY_VIDEO,
                                          metadata={"fan_in": True, "allow_missing_partitions": True})})
def stitched_video(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
                   chunk_videos: dict[str, ChunkVideosManifest]) -> dg.Output[StitchedManifest]:
    """All chunks concatenated in timeline order, each beat trimmed to its exact duration. Checks
    the loaded segments against the spec: a missing or outdated real segment is an error naming it."""
    plan = _require(video_spec, "video_spec", context)
    provider = pipeline.provider(plan.provider, plan.models)
    expected = {b.segment: stages.plan_beat(plan, b, provider).fingerprint for b in plan.beats}
    with permanent_errors():
        ordered = stages.check_fan_in(plan, chunk_videos, expected)
    manifest = stages.stitch_video(plan, ordered, pipeline.generator)
    return dg.Output(manifest, metadata={
        "duration_s": manifest.video.duration_s, "segments": len(manifest.segments), "method": manifest.method,
        "path": dg.MetadataValue.path(str(pipeline.generator.local_path(manifest.video))),
        "ignored_phantom_segments": sorted(set(chunk_videos) - set(plan.segment_keys)),
    })


@dg.asset(partitions_def=videos, group_name="video", kinds={"m4a"}, pool="music_api", retry_policy=PROVIDER_RETRY)
def music(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None) -> dg.Output[MusicManifest]:
    """A music track as long as the video, from the spec's music prompt and bpm."""
    plan = _require(video_spec, "video_spec", context)
    with permanent_errors():
        manifest = stages.render_music(plan, pipeline.provider(plan.provider, plan.models), pipeline.generator)
    line = costs.music_line(plan.video_id, manifest)
    return dg.Output(manifest, metadata={
        "duration_s": manifest.audio.duration_s, "bpm": plan.music.bpm, "cost_usd": manifest.audio.cost_usd,
        "paid_usd": line.paid_usd, "reused_usd": line.reused_usd, "paid_by": line.paid_by or "",
        "cache_hit": manifest.audio.cache_hit,
        "path": dg.MetadataValue.path(str(pipeline.generator.local_path(manifest.audio))),
    })


FINAL_CHECKS = [
    dg.AssetCheckSpec("storyboards_match_beats", asset="final_video",
                      description="Exactly one storyboard image per beat of the plan."),
    dg.AssetCheckSpec("duration_matches_spec", asset="final_video",
                      description="The final video lasts the spec's duration_s, within one frame."),
    dg.AssetCheckSpec("audio_present", asset="final_video",
                      description="The final video has an audio track as long as the video, within one frame."),
]


@dg.asset(partitions_def=videos, group_name="video", kinds={"mp4"}, check_specs=FINAL_CHECKS)
def final_video(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
                stitched_video: StitchedManifest | None, music: MusicManifest | None):
    """The stitched video muxed with the music, faded out and loudness-normalized (EBU R128),
    published at ``data/videos/<video_id>.mp4``. Metadata: the cost table and a storyboard contact
    sheet. Checks: storyboards match beats, duration matches the spec, audio present."""
    plan = _require(video_spec, "video_spec", context)
    ledger = costs.open_ledger(pipeline.workspace.root, pipeline.provider(plan.provider, plan.models))
    manifest = stages.mux_video(plan, _require(stitched_video, "stitched_video", context),
                                _require(music, "music", context), pipeline.generator, pipeline.workspace, ledger)
    boards = [read_manifest(pipeline.manifests_dir, "storyboard_images", str(segment_partition_key(plan.video_id, b.index)))
              for b in plan.beats]
    board_paths = [pipeline.generator.local_path(b.image) for b in boards if isinstance(b, StoryboardManifest)]
    sheet = media.contact_sheet(board_paths, labels=[b.segment for b in plan.beats][:len(board_paths)])
    info = media.probe(manifest.path, decode=False)
    frame = 1 / plan.fps
    table = costs.cost_frame(manifest.costs)
    yield dg.Output(manifest, metadata={
        "path": dg.MetadataValue.path(manifest.path),
        "duration_s": manifest.video.duration_s,
        "beats": manifest.beats, "chunks": manifest.chunks,
        "cost_usd": manifest.cost_usd,
        "paid_usd": manifest.paid_usd,
        "reused_usd": manifest.reused_usd,
        "cost_table": dg.MetadataValue.md(costs.markdown(table, columns=COST_TABLE_COLUMNS)),
        "costs": _table_metadata(table),
        "storyboard": dg.MetadataValue.md(
            f"![storyboard contact sheet](data:image/jpeg;base64,{base64.b64encode(sheet).decode()})"),
        "loudness_in_lufs": float(manifest.video.extra.get("loudness", {}).get("input_i", "nan")),
    })
    board_shas = {b.image.sha256 for b in boards if isinstance(b, StoryboardManifest)}
    yield dg.AssetCheckResult(check_name="storyboards_match_beats", passed=len(board_shas) == len(plan.beats),
                              metadata={"beats": len(plan.beats), "storyboard_images": len(board_shas)})
    duration = manifest.video.duration_s or 0.0
    yield dg.AssetCheckResult(check_name="duration_matches_spec",
                              passed=abs(duration - plan.target_duration_s) <= frame + 1e-6,
                              severity=dg.AssetCheckSeverity.WARN,
                              metadata={"duration_s": duration, "spec_duration_s": plan.target_duration_s,
                                        "beats_duration_s": plan.duration_s})
    audio_s = info.audio_duration_s or 0.0
    yield dg.AssetCheckResult(check_name="audio_present",
                              passed=info.has_audio and abs(audio_s - duration) <= frame + 0.05,
                              metadata={"audio_codec": info.audio_codec or "none", "audio_duration_s": audio_s})


segment_assets = [beats, storyboard_images, chunk_videos]
video_assets = [video_spec, stitched_video, music, final_video]
all_assets = [video_spec, *segment_assets, stitched_video, music, final_video]
