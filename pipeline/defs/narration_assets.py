"""The narration assets (thin glue over ``pipeline.voiceover``):

    video_spec [videos] ─> narration [video × segment] ─> beats ...
    music [videos] ─┐
    narration ──────┴─> soundtrack [videos] ─> final_video

- ``narration``: one beat's spoken clip and its sentence cues, on the same partitions as ``beats``
  (a failed TTS call fails and reruns one segment). Cached and costed like every generation. A
  silent beat gets a manifest without a clip. ``beats`` takes it as an input, so a narration that
  does not fit its beat fails the segment before its storyboard and chunks are paid for.
- ``soundtrack``: the final video's audio (music ducked under the narration, loudness-normalized
  once; or the music's finished track as it is; or silence) and the subtitle cues on the video's
  clock. In the ``assemble_video`` job, before ``final_video``, which muxes it by stream copy.
"""


import dagster as dg

from pipeline import costs, voiceover
from pipeline.narration import NarrationTooLong
from pipeline.defs import run_log
from pipeline.defs.assets import PROVIDER_RETRY, SPEC_IN, _real_beat, _require, permanent_errors
from pipeline.defs.partitions import BY_VIDEO, per_segment, videos
from pipeline.defs.resources import PipelineResource
from pipeline.manifests import MusicManifest, NarrationManifest, SoundtrackManifest, VideoPlan
from pipeline.progress import run_cost


@dg.asset(partitions_def=per_segment, ins={"video_spec": SPEC_IN}, output_required=False, group_name="segments",
          kinds={"wav"}, pool="image_api", retry_policy=PROVIDER_RETRY)
def narration(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None):
    """The beat's narration spoken by the video's voice (``pipeline.voiceover.render_narration``):
    a clip, its sentences' cues and its cost; no clip for a silent beat. A narration longer than
    the beat's explicit duration (plus the pause) fails the segment, naming the beat."""
    beat = _real_beat(context, video_spec)
    if beat is None:
        return
    provider = pipeline.provider(video_spec.provider, video_spec.models)
    with permanent_errors(), run_log.provider_logs(context):
        try:
            manifest = voiceover.render_narration(video_spec, beat, provider, pipeline.generator,
                                                  progress=run_log.progress_logger(context))
        except NarrationTooLong as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
    clip = manifest.clip
    yield dg.Output(manifest, metadata={
        "narrated": clip is not None,
        "text": manifest.text or "",
        "voice": video_spec.narration.voice if video_spec.narration else "",
        "clip_s": clip.duration_s if clip else 0.0,
        "beat_s": manifest.duration_s,
        "cues": len(manifest.cues),
        "timing": manifest.timing or "",
        "cache_hit": clip.cache_hit if clip else False,
        "cost_usd": clip.cost_usd if clip else 0.0,
        **({"path": dg.MetadataValue.path(str(pipeline.generator.local_path(clip)))} if clip else {}),
        **run_log.tag_run_cost(context, *run_cost([clip])),
    })


@dg.asset(partitions_def=videos, group_name="video", kinds={"m4a"},
          ins={"narration": dg.AssetIn(partition_mapping=BY_VIDEO,
                                       metadata={"fan_in": True, "allow_missing_partitions": True})})
def soundtrack(context: dg.AssetExecutionContext, pipeline: PipelineResource, video_spec: VideoPlan | None,
               music: MusicManifest | None, narration: dict[str, NarrationManifest]) -> dg.Output[SoundtrackManifest]:
    """The final video's audio and subtitle cues (``pipeline.voiceover.make_soundtrack``): with
    narration, the clips on the timeline over the music ducked by sidechain compression, loudness-
    normalized once (EBU R128, two-pass) to AAC 48 kHz; without, the music's finished track (or
    silence). A missing or outdated segment narration is an error naming the segments."""
    plan = _require(video_spec, "video_spec", context)
    with permanent_errors():
        try:
            manifest = voiceover.make_soundtrack(plan, music, narration, pipeline.generator)
        except voiceover.NarrationFanInError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
    track = manifest.track
    paid, reused = costs.totals(manifest.costs)
    return dg.Output(manifest, metadata={
        "method": manifest.method,
        "duration_s": track.duration_s if track else 0.0,
        "cues": len(manifest.cues),
        "captions": manifest.captions,
        "narration_paid_usd": paid, "narration_reused_usd": reused,
        "loudness_in_lufs": float(track.extra.get("loudness", {}).get("input_i", "nan")) if track else float("nan"),
        "cache_hit": track.cache_hit if track else False,
        **({"path": dg.MetadataValue.path(str(pipeline.generator.local_path(track)))} if track else {}),
    })


narration_assets = [narration, soundtrack]
