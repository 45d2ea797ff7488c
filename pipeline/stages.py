"""The work behind each asset, as plain functions of manifests, specs and services.

Each asset in ``pipeline.defs.assets`` is a thin wrapper over one function here, so the whole
pipeline can be run and tested without Dagster: the video plan, the beats, the storyboard images
and the chunk videos (with their conformed pieces and segment clips) here; the assembly after them
(fan-in, stitched video, music, final mux) in ``pipeline.assembly``, re-exported here so
``stages.stitch_video`` etc. keep working. Nothing here imports Dagster.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pipeline import media, voiceover
from pipeline.assembly import (  # noqa: F401 (re-exported: they were defined here)
    FADE_OUT_S,
    FanInError,
    _fitting_clip,
    _fitting_track,
    check_fan_in,
    finish_track,
    mux_video,
    render_music,
    segment_costs,
    stitch_video,
)
from pipeline.characters import beat_reference_keys, plan_characters, storyboard_prompt, style_text
from pipeline.drift import beat_drift
from pipeline.generation import GenerationRequest, Generator, ProviderResult
from pipeline.manifests import (
    BeatManifest,
    ChunkManifest,
    ChunkPlan,
    ChunkVideosManifest,
    MediaManifest,
    PlannedBeat,
    StoryboardManifest,
    VideoPlan,
    segment_key,
    utc_now,
)
from pipeline.publish import publish, publish_final  # noqa: F401 (re-exported: they were used from here)
from pipeline.progress import Progress, ProgressCallback, report
from pipeline.providers import Provider, ProviderError
from pipeline.spec import BeatSpec, SpecError, Truncation, fit_beats, sha256_json
from pipeline.store import Workspace
from pipeline.step_models import (  # noqa: F401 (re-exported: they were defined here)
    CLIP_MODEL,
    CONFORM_MODEL,
    FFMPEG,
    FINISH_MUSIC_MODEL,
    MUX_COPY_MODEL,
    MUX_REENCODE_MODEL,
    STITCH_CLIPS_MODEL,
    STITCH_MODEL,
)
from pipeline.submissions import Submission


# --- video_spec --------------------------------------------------------------------------------

def plan_video(submission: Submission, provider: Provider, voicer: "voiceover.Voicer | None" = None) -> VideoPlan:
    """Validate a submission's spec and lay its beats on the timeline.

    A ``brief`` is split into beats by the provider's planner. Beats beyond ceil(duration_s / 5)
    are dropped from the end (``VideoPlan.truncation`` records it); start times are the running
    sum of the kept durations. Narrated beats whose length comes from their narration
    (``duration_s: auto``, ``narration: from_brief``) are voiced by ``voicer`` to measure it
    (``voiceover.time_beats``); without a voicer (``pipeline validate``) their length is estimated.
    Raises SpecError for an invalid spec or a voice the provider does not have; what ``voicer``
    raises (ProviderError, media.MediaError).
    """
    spec = submission.video_spec()
    paid_before = provider.planner_cost_usd
    if spec.beats is not None:
        beats, planned_by = list(spec.beats), "spec"
    else:
        try:
            beats = provider.plan_beats(spec.brief or "", duration_s=spec.duration_s, style=spec.style,
                                        video_id=spec.video_id, max_cost_usd=spec.max_cost_usd,
                                        max_beats=spec.max_beats)
            # Whatever planner made them, the beats meet the spec's own rules (a pydantic
            # ValidationError is a ValueError: it becomes a SpecError naming the brief).
            beats = [BeatSpec.model_validate(b.model_dump()) for b in beats]
        except ValueError as exc:
            raise SpecError(submission.source, [f"brief: cannot be planned: {exc}"]) from None
        planned_by = f"planner:{provider.planner_model}"
    kept, truncation = fit_beats(beats, spec.duration_s)
    spoken = voiceover.narration_plan(spec, provider, submission.source)
    planned, _ = voiceover.time_beats(spec, kept, spoken, provider, voicer, provider.fps)
    start = sum(b.duration_s for b in planned)
    width, height = spec.resolution
    seed = spec.seed if spec.seed is not None else int(sha256_json(spec.video_id)[:8], 16) % 2**31
    return VideoPlan(
        video_id=spec.video_id, title=spec.title, target_duration_s=spec.duration_s,
        duration_s=round(start, 6), aspect_ratio=spec.aspect_ratio, width=width, height=height,
        fps=provider.fps, style=spec.style, music=spec.music, seed=seed, max_cost_usd=spec.max_cost_usd,
        provider=provider.name, models=dict(submission.models), beats=planned, truncation=truncation, planned_by=planned_by,
        planning_cost_usd=round(provider.planner_cost_usd - paid_before, 6),
        spec_sha256=submission.spec_sha256, source=submission.source, characters=plan_characters(spec),
        narration=spoken,
    )


def record_truncation(workspace: Workspace, plan: VideoPlan) -> Path | None:
    """Append ``{timestamp, video_id, original_count, truncated_count}`` as one JSON line to
    ``logs/beat_truncation.log`` if the plan truncated beats. Returns the log path, or None."""
    if plan.truncation is None:
        return None
    path = workspace.logs / "beat_truncation.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"timestamp": utc_now(), "video_id": plan.video_id,
                       "original_count": plan.truncation.original_count,
                       "truncated_count": plan.truncation.truncated_count})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return path


def truncation_message(plan: VideoPlan, truncation: Truncation) -> str:
    return (f"{plan.video_id}: the spec has {truncation.original_count} beats but a {plan.target_duration_s:g} s "
            f"video holds at most {truncation.truncated_count} (one per 5 s); dropped the last "
            f"{truncation.original_count - truncation.truncated_count} beats")


# --- beats -------------------------------------------------------------------------------------

def chunk_plan(duration_s: float, chunk_s: float) -> list[ChunkPlan]:
    """ceil(duration_s / chunk_s) chunks: chunk 0 the reference image chunk, the rest continuous.

    Every chunk is generated ``chunk_s`` long; the last keeps only what the beat still needs.
    """
    if duration_s <= 0 or chunk_s <= 0:
        raise ValueError(f"beat and chunk lengths must be positive (got {duration_s} s, {chunk_s} s)")
    count = max(1, math.ceil(duration_s / chunk_s - 1e-9))
    return [
        ChunkPlan(index=i, chunk_type="reference_image" if i == 0 else "continuous", generate_s=chunk_s,
                  keep_s=round(min(chunk_s, duration_s - i * chunk_s), 6))
        for i in range(count)
    ]


def plan_beat(plan: VideoPlan, beat: PlannedBeat, provider: Provider) -> BeatManifest:
    """The beat record of one real beat: prompts (no style text for a spec without a style), seed
    (the beat's own, else derived from the video's seed and the index), chunk plan, the characters
    it names with their reference cache keys (``pipeline.characters``), and a fingerprint."""
    image_prompt = storyboard_prompt(beat.prompt, plan.style, beat.characters, plan.characters)
    motion_prompt = f"{beat.prompt}. Camera: {beat.motion or 'gentle, steady camera drift'}.{style_text(plan.style)}"
    seed = beat.seed if beat.seed is not None else (plan.seed + 7919 * beat.index) % 2**31
    chunks = chunk_plan(beat.duration_s, provider.chunk_seconds)
    body = dict(video_id=plan.video_id, index=beat.index, start_s=beat.start_s, duration_s=beat.duration_s,
                image_prompt=image_prompt, motion_prompt=motion_prompt, motion=beat.motion, seed=seed,
                width=plan.width, height=plan.height, fps=plan.fps, provider=provider.name,
                video_model=provider.video_model)
    cast = beat_reference_keys(plan, beat.characters, provider)
    extra = {"characters": cast, "reference_image_model": reference_model(provider)} if cast else {}
    fingerprint = sha256_json({**body, "start_s": None, "image_model": provider.image_model,
                               "chunks": [c.model_dump() for c in chunks], **extra})
    return BeatManifest(**body, chunks=chunks, fingerprint=fingerprint, max_cost_usd=plan.max_cost_usd,
                        characters=cast)


# --- storyboard_images -------------------------------------------------------------------------

def _labels(video_id: str, index: int, **more: object) -> dict[str, str]:
    return {"video_id": video_id, "segment": segment_key(index), **{k: str(v) for k, v in more.items()}}


def render_storyboard(beat: BeatManifest, provider: Provider, generator: Generator,
                      progress: ProgressCallback | None = None,
                      references: dict[str, MediaManifest] | None = None) -> StoryboardManifest:
    """Exactly one storyboard image for ``beat``, at the beat's draft resolution (pixels).

    ``references``: the reference images of the characters the beat names (``pipeline.characters.
    beat_references``), by name. With any, the image is made by the provider's reference model
    (``reference_model``) from them, and the request carries each one's sha256 as input
    ``character:<name>`` (so the cache key records which references made it). ``progress``
    receives a started and a done ``Progress`` report. Raises what the provider or the store
    raises (ProviderError, media.MediaError)."""
    references = references or {}
    missing = sorted(set(beat.characters) - set(references))
    if missing:
        raise ProviderError(f"beat {beat.segment} names {', '.join(missing)} but got no reference image for them",
                            retryable=False)
    request = storyboard_request(beat, provider, references)
    item = dict(stage="storyboard_images", kind="storyboard image", index=1, count=1, segment=segment_key(beat.index))
    with_refs = f" from {len(references)} character reference(s)" if references else ""
    report(progress, Progress("started", **item, detail=f"{beat.width}x{beat.height} with {request.model}{with_refs}"))
    started = time.monotonic()
    if references:
        paths = [(name, generator.local_path(m)) for name, m in references.items()]
        image = generator.generate(request, lambda scratch: provider.render_image_with_references(request, paths, scratch))
    else:
        image = generator.generate(request, lambda scratch: provider.render_image(request, scratch))
    report(progress, Progress("done", **item, medium=image, elapsed_s=time.monotonic() - started))
    return StoryboardManifest(video_id=beat.video_id, index=beat.index, fingerprint=beat.fingerprint, image=image,
                              references=dict(references))


def storyboard_request(beat: BeatManifest, provider: Provider,
                       references: dict[str, MediaManifest] | None = None) -> GenerationRequest:
    """The generation request of ``beat``'s storyboard image: the image model, or with
    ``references`` (character reference images by name) the reference model and one input
    ``character:<name>`` = the reference's sha256 each (so they are part of its cache key)."""
    references = references or {}
    return GenerationRequest(
        media_type="image", provider=provider.name,
        model=reference_model(provider) if references else provider.image_model, prompt=beat.image_prompt,
        seed=beat.seed,
        params={"width": beat.width, "height": beat.height,
                "caption": f"Beat {beat.index + 1} · {beat.start_s:g}-{beat.start_s + beat.duration_s:g} s"},
        inputs={f"character:{name}": m.sha256 for name, m in references.items()},
        labels=_labels(beat.video_id, beat.index, stage="storyboard_images"), max_cost_usd=beat.max_cost_usd,
    )


def reference_model(provider: Provider) -> str:
    """The model that makes storyboards from character references: the provider's
    ``reference_image_model`` (its image model when that one takes references)."""
    return getattr(provider, "reference_image_model", None) or provider.image_model


# --- chunk_videos ------------------------------------------------------------------------------

def extract_last_frame(video: MediaManifest, generator: Generator, labels: dict[str, str]) -> MediaManifest:
    """The exact last frame of a stored video, as a stored PNG (cached by the video's sha256)."""
    request = GenerationRequest(media_type="image", provider=FFMPEG, model="last-frame-v1",
                                inputs={"video": video.sha256}, labels={**labels, "stage": "last_frame"})

    def call(scratch: Path) -> ProviderResult:
        out = scratch / "last.png"
        media.extract_last_frame(generator.local_path(video), out)
        return ProviderResult(path=out, model="last-frame-v1")

    return generator.generate(request, call)


def render_chunks(beat: BeatManifest, storyboard: StoryboardManifest, provider: Provider,
                  generator: Generator, progress: ProgressCallback | None = None) -> ChunkVideosManifest:
    """Render a beat's chunk chain: the reference image chunk from the storyboard image, then each
    continuous chunk from the last frame of the chunk before it; and the segment's clip.

    As each chunk arrives, a background thread (one worker) conforms the frames the beat keeps of
    it to the plan (``conform_chunk``) while the chain goes on: the next chunk needs only the last
    frame. After the last chunk the conformed pieces are joined by stream copy into the segment's
    clip (``segment_clip``): exactly ``media.beat_frames(start_s, duration_s, fps)`` frames, the
    piece ``stitched_video`` joins by stream copy. When the chunks do not cover the beat (a model
    returned less video than asked), there is no clip and ``stitch_video`` reports the gap.

    Every finished chunk, conformed piece and clip is in the cache, so a rerun after a failure at
    chunk k resumes at chunk k. Each chunk's ``drift`` is the colour/brightness drift from the beat's
    first frame to its last frame (``pipeline.drift.beat_drift``), the manifest's ``drift`` the last
    chunk's (the beat's). ``progress`` receives "chunk k of n started" and "... done" reports
    (``Progress``: chunk type, prediction id, seconds of video, USD paid and reused, cache hit) and
    a "segment clip 1 of 1 done" report whose ``elapsed_s`` is the wait after the last chunk. Raises
    what the provider or the store raises (ProviderError, media.MediaError).
    """
    start = storyboard.image
    chunks: list[ChunkManifest] = []
    need = media.beat_frames(beat.start_s, beat.duration_s, beat.fps)
    remaining = need
    conforming: list[Future[MediaManifest] | None] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"conform-{beat.video_id}-{beat.segment}")
    try:
        for plan in beat.chunks:
            request = GenerationRequest(
                media_type="video", provider=provider.name, model=provider.video_model, prompt=beat.motion_prompt,
                seed=(beat.seed + plan.index) % 2**31,
                params={"width": beat.width, "height": beat.height, "fps": beat.fps, "duration_s": plan.generate_s,
                        "motion": beat.motion, "chunk_type": plan.chunk_type},
                inputs={"start_image": start.sha256},
                labels=_labels(beat.video_id, beat.index, stage="chunk_videos", chunk=plan.index),
                max_cost_usd=beat.max_cost_usd,
            )
            start_path = generator.local_path(start)
            item = dict(stage="chunk_videos", kind=plan.chunk_type.replace("_", " ") + " chunk", index=plan.index + 1,
                        count=len(beat.chunks), segment=segment_key(beat.index))
            source = "the storyboard image" if plan.index == 0 else f"the last frame of chunk {plan.index}"
            report(progress, Progress("started", **item, seconds=plan.generate_s,
                                      detail=f"from {source} with {provider.video_model}"))
            began = time.monotonic()
            video = generator.generate(request, lambda scratch: provider.render_chunk(request, start_path, scratch))
            report(progress, Progress("done", **item, medium=video, elapsed_s=time.monotonic() - began))
            take = max(0, min(remaining, media.frame_count(video.duration_s or 0, beat.fps)))  # frames kept
            conforming.append(pool.submit(conform_chunk, video, generator, width=beat.width, height=beat.height,
                                          fps=beat.fps, frames=take, labels=request.labels) if take else None)
            remaining -= take
            last = extract_last_frame(video, generator, request.labels)
            chunks.append(ChunkManifest(plan=plan, video=video, start_image_sha256=start.sha256, last_frame=last))
            start = last
        waiting = time.monotonic()
        conformed = [f.result() if f is not None else None for f in conforming]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # no conform outlives the step; finished ones are cached
        raise
    pool.shutdown()
    drifts = beat_drift(generator.local_path(chunks[0].video), [generator.local_path(c.last_frame) for c in chunks])
    chunks = [c.model_copy(update={"conformed": m, "drift": d}) for c, m, d in zip(chunks, conformed, drifts)]
    clip = None
    if remaining <= 0:
        pieces = [m for m in conformed if m is not None]
        clip = segment_clip(pieces, generator, width=beat.width, height=beat.height, fps=beat.fps,
                            labels=_labels(beat.video_id, beat.index))
        report(progress, Progress("done", stage="segment_clip", kind="segment clip", index=1, count=1,
                                  segment=segment_key(beat.index), medium=clip,
                                  elapsed_s=time.monotonic() - waiting))
    return ChunkVideosManifest(video_id=beat.video_id, index=beat.index, fingerprint=beat.fingerprint,
                               duration_s=beat.duration_s, storyboard=storyboard.image, chunks=chunks, clip=clip,
                               drift=drifts[-1])


def conform_chunk(video: MediaManifest, generator: Generator, *, width: int, height: int, fps: int, frames: int,
                  labels: dict[str, str]) -> MediaManifest:
    """The first ``frames`` frames of a stored chunk conformed to the plan (``media.conform``:
    ``fps``, ``width`` x ``height`` pixels, the pipeline's H.264 settings), stored and cached by the
    chunk's sha256 and these parameters. A stream copy when the chunk already matches the plan.
    ``extra``: ``frames`` and ``method`` ("stream_copy" | "reencode"). Raises media.MediaError
    when the chunk gives fewer frames (a gap) or ffmpeg fails."""
    request = GenerationRequest(media_type="video", provider=FFMPEG, model=CONFORM_MODEL,
                                params={"width": width, "height": height, "fps": fps, "frames": frames},
                                inputs={"video": video.sha256}, labels={**labels, "stage": "conform"})

    def call(scratch: Path) -> ProviderResult:
        out = scratch / "conformed.mp4"
        method = media.conform(generator.local_path(video), out, width=width, height=height, fps=fps, frames=frames)
        return ProviderResult(path=out, model=CONFORM_MODEL, extra={"frames": frames, "method": method},
                              verify="stream_copy" if method == "stream_copy" else "decode")

    return generator.generate(request, call)


def segment_clip(pieces: list[MediaManifest], generator: Generator, *, width: int, height: int, fps: int,
                 labels: dict[str, str]) -> MediaManifest:
    """One segment's conformed pieces (``conform_chunk`` outputs, in order) joined by stream copy:
    the segment's clip, stored and cached by the pieces' sha256. A single piece is the clip itself.
    ``extra``: ``frames`` (the sum of the pieces' ``frames``) and ``method``. Raises
    media.MediaError."""
    if len(pieces) == 1:
        return pieces[0]
    frames = sum(int(p.extra["frames"]) for p in pieces)
    spec = [{"sha256": p.sha256, "frames": int(p.extra["frames"])} for p in pieces]
    request = GenerationRequest(media_type="video", provider=FFMPEG, model=CLIP_MODEL,
                                params={"width": width, "height": height, "fps": fps, "pieces": spec},
                                inputs={f"piece{i}": p.sha256 for i, p in enumerate(pieces)},
                                labels={**labels, "stage": "segment_clip"})

    def call(scratch: Path) -> ProviderResult:
        out = scratch / "clip.mp4"
        method = media.stitch([media.StitchPiece(generator.local_path(p), int(p.extra["frames"])) for p in pieces],
                              out, width=width, height=height, fps=fps, workdir=scratch)
        return ProviderResult(path=out, model=CLIP_MODEL, extra={"frames": frames, "method": method},
                              verify="stream_copy" if method == "stream_copy" else "decode")

    return generator.generate(request, call)
