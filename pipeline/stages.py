"""The work behind each asset, as plain functions of manifests, specs and services.

Each asset in ``pipeline.defs.assets`` is a thin wrapper over one function here, so the whole
pipeline can be run and tested without Dagster. Nothing here imports Dagster.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pipeline import costs, media, voiceover
from pipeline.characters import beat_reference_keys, plan_characters, storyboard_prompt, style_text
from pipeline.drift import beat_drift
from pipeline.generation import GenerationRequest, Generator, ProviderResult
from pipeline.ledger import Ledger
from pipeline.manifests import (
    BeatManifest,
    CharactersManifest,
    ChunkManifest,
    ChunkPlan,
    ChunkVideosManifest,
    CostLine,
    FinalManifest,
    MediaManifest,
    MusicManifest,
    PlannedBeat,
    SoundtrackManifest,
    StitchedManifest,
    StoryboardManifest,
    VideoPlan,
    segment_key,
    utc_now,
)
from pipeline.publish import publish, publish_final  # noqa: F401 (publish: re-exported, it lived here)
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

FADE_OUT_S = 2.0
"""The music fades out over the video's last 2 s (at most a quarter of the video)."""


class FanInError(RuntimeError):
    """Fan-in found real segments missing or rendered from another version of the spec."""


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


# --- stitched_video ----------------------------------------------------------------------------

def check_fan_in(plan: VideoPlan, chunk_sets: dict[str, ChunkVideosManifest],
                 expected_fingerprints: dict[str, str]) -> list[ChunkVideosManifest]:
    """The real segments' chunk sets in timeline order. Raises FanInError naming every segment that
    is missing or was rendered from a different version of its beat. Phantom segments are ignored."""
    missing = [s for s in plan.segment_keys if s not in chunk_sets]
    stale = [s for s in plan.segment_keys
             if s in chunk_sets and chunk_sets[s].fingerprint != expected_fingerprints[s]]
    problems = []
    if missing:
        problems.append(f"segments {', '.join(missing)} have no chunk_videos")
    if stale:
        problems.append(f"segments {', '.join(stale)} were rendered from another version of the spec")
    if problems:
        raise FanInError(f"{plan.video_id}: cannot stitch {len(plan.beats)} beats: " + "; ".join(problems)
                         + ". Materialize those segments (pipeline retry, or a backfill) and stitch again.")
    return [chunk_sets[s] for s in plan.segment_keys]


def _fitting_clip(cv: ChunkVideosManifest, frames: int, plan: VideoPlan) -> MediaManifest | None:
    """The segment's clip if it holds exactly the ``frames`` the plan keeps of the beat at the plan's
    size and fps, else None (no clip, or the beat moved on the timeline since: its frame count
    depends on where it starts)."""
    clip = cv.clip
    if clip is None or clip.extra.get("frames") != frames or (clip.width, clip.height) != (plan.width, plan.height):
        return None
    return clip if clip.fps is not None and abs(clip.fps - plan.fps) < 1e-6 else None


def stitch_video(plan: VideoPlan, ordered: list[ChunkVideosManifest], generator: Generator) -> StitchedManifest:
    """Concatenate the beats in timeline order, each trimmed to its exact duration.

    Beat b covers frames [round(start_b * fps), round(end_b * fps)) (``media.beat_frames``). A
    segment whose clip holds exactly those frames gives its clip; the others (manifests written
    before clips, or a clip cut for another start) give their chunks' frames in order. Clips and
    chunks that match the plan join by stream copy (``media.stitch``), so a video of clips takes
    time for copying bytes only; anything else is re-encoded as a whole (the fallback).
    ``StitchedManifest.method`` says which ran, ``clips`` how many segments gave a clip.
    Raises media.MediaError when the chunks of a beat without a clip are shorter than the beat (a gap).
    """
    pieces_spec, pieces, clips = [], [], 0
    for cv, beat in zip(ordered, plan.beats):
        need = media.beat_frames(beat.start_s, beat.duration_s, plan.fps)
        clip = _fitting_clip(cv, need, plan)
        if clip is not None:
            pieces.append((clip, need))
            pieces_spec.append({"sha256": clip.sha256, "frames": need})
            clips += 1
            continue
        have = sum(media.frame_count(c.video.duration_s or 0, plan.fps) for c in cv.chunks)
        if have < need:
            raise media.MediaError(f"{plan.video_id}: segment {segment_key(beat.index)} has {have} frames of "
                                   f"chunks for a {need}-frame beat (gap of {need - have} frames)")
        for c in cv.chunks:
            if need <= 0:
                break
            take = min(need, media.frame_count(c.video.duration_s or 0, plan.fps))
            pieces.append((c.video, take))
            pieces_spec.append({"sha256": c.video.sha256, "frames": take})
            need -= take
    model = STITCH_CLIPS_MODEL if clips else STITCH_MODEL
    request = GenerationRequest(media_type="video", provider=FFMPEG, model=model,
                                params={"width": plan.width, "height": plan.height, "fps": plan.fps,
                                        "pieces": pieces_spec},
                                inputs={f"piece{i}": m.sha256 for i, (m, _) in enumerate(pieces)},
                                labels={"video_id": plan.video_id, "stage": "stitched_video"})

    def call(scratch: Path) -> ProviderResult:
        out = scratch / "stitched.mp4"
        method = media.stitch(
            [media.StitchPiece(generator.local_path(m), frames) for m, frames in pieces], out,
            width=plan.width, height=plan.height, fps=plan.fps, workdir=scratch)
        return ProviderResult(path=out, model=model, extra={"method": method},
                              verify="stream_copy" if method == "stream_copy" else "decode")

    video = generator.generate(request, call)
    return StitchedManifest(video_id=plan.video_id, method=video.extra["method"], segments=plan.segment_keys,
                            video=video, costs=segment_costs(ordered), clips=clips)


def segment_costs(ordered: list[ChunkVideosManifest]) -> list[CostLine]:
    """Cost lines of every storyboard image and chunk video, in timeline order, attributed from the
    manifests alone (``pipeline.costs.segment_lines``: paid_usd / reused_usd in USD and the payer);
    ``final_video`` reconciles them with the ledger."""
    return [line for cv in ordered for line in costs.segment_lines(cv)]


# --- music -------------------------------------------------------------------------------------

def render_music(plan: VideoPlan, provider: Provider, generator: Generator,
                 progress: ProgressCallback | None = None) -> MusicManifest:
    """A music track of at least the video's duration (seconds) at the spec's bpm, and the final
    video's audio finished from it (``finish_track``), so the final mux is a stream copy.

    ``progress`` receives a started and a done ``Progress`` report for the track and for the
    finished track. A spec without music gets a silent track (``voiceover.silence_track``, free),
    so the video still has audio. A narrated video's track is not finished here: the soundtrack
    mixes the music under the narration and normalizes the mix once (``voiceover.make_soundtrack``).
    Raises what the provider or the store raises (ProviderError, media.MediaError)."""
    if plan.music is None:
        item = dict(stage="music", kind="silent track", index=1, count=1)
        report(progress, Progress("started", **item, seconds=plan.duration_s, detail="the spec has no music"))
        started = time.monotonic()
        silent = voiceover.silence_track(plan, generator)
        report(progress, Progress("done", **item, medium=silent, elapsed_s=time.monotonic() - started))
        return MusicManifest(video_id=plan.video_id, audio=silent, track=silent)
    request = GenerationRequest(media_type="audio", provider=provider.name, model=provider.music_model,
                                prompt=plan.music.prompt, seed=plan.seed,
                                params={"bpm": plan.music.bpm, "duration_s": math.ceil(plan.duration_s)},
                                labels={"video_id": plan.video_id, "stage": "music"},
                                max_cost_usd=plan.max_cost_usd)
    item = dict(stage="music", kind="music track", index=1, count=1)
    report(progress, Progress("started", **item, seconds=float(request.params["duration_s"]),
                              detail=f"{plan.music.bpm} bpm with {provider.music_model}"))
    started = time.monotonic()
    audio = generator.generate(request, lambda scratch: provider.render_music(request, scratch))
    report(progress, Progress("done", **item, medium=audio, elapsed_s=time.monotonic() - started))
    if plan.narration is not None:
        return MusicManifest(video_id=plan.video_id, audio=audio)
    item = dict(stage="music", kind="finished track", index=1, count=1)
    report(progress, Progress("started", **item, seconds=plan.duration_s,
                              detail=f"fade-out, loudness {media.LOUDNESS_TARGET['I']:g} LUFS, AAC"))
    started = time.monotonic()
    track = finish_track(plan, audio, generator)
    report(progress, Progress("done", **item, medium=track, elapsed_s=time.monotonic() - started))
    return MusicManifest(video_id=plan.video_id, audio=audio, track=track)


def finish_track(plan: VideoPlan, audio: MediaManifest, generator: Generator) -> MediaManifest:
    """The final video's audio made from the stored track ``audio`` (``media.finish_music``): the
    plan's duration in seconds, faded out, loudness-normalized to ``media.LOUDNESS_TARGET``, AAC at
    48 kHz in an .m4a; stored and cached by the track's sha256 and these parameters. ``extra``:
    ``duration_s``, ``fade_out_s`` and ``loudness`` (loudnorm pass 1: input_i LUFS, ...). Raises
    media.MediaError."""
    params = {"duration_s": plan.duration_s, "fade_out_s": FADE_OUT_S, "loudness": media.LOUDNESS_TARGET,
              "sample_rate": media.AUDIO_SAMPLE_RATE, "codec": media.AUDIO_CODEC_ARGS}
    request = GenerationRequest(media_type="audio", provider=FFMPEG, model=FINISH_MUSIC_MODEL, params=params,
                                inputs={"music": audio.sha256},
                                labels={"video_id": plan.video_id, "stage": "music_finish"})

    def call(scratch: Path) -> ProviderResult:
        out = scratch / "track.m4a"
        loudness = media.finish_music(generator.local_path(audio), out, duration_s=plan.duration_s,
                                      fade_out_s=FADE_OUT_S)
        return ProviderResult(path=out, model=FINISH_MUSIC_MODEL,
                              extra={"duration_s": plan.duration_s, "fade_out_s": FADE_OUT_S, "loudness": loudness})

    return generator.generate(request, call)


# --- final_video -------------------------------------------------------------------------------

def _fitting_track(plan: VideoPlan, music: MusicManifest) -> MediaManifest | None:
    """The music manifest's finished track if it was finished for this plan's duration, else None."""
    track = music.track
    if track is None or track.extra.get("duration_s") != plan.duration_s:
        return None
    return track


def mux_video(plan: VideoPlan, stitched: StitchedManifest, music: MusicManifest, generator: Generator,
              workspace: Workspace, ledger: Ledger | None = None,
              characters: CharactersManifest | None = None, soundtrack: SoundtrackManifest | None = None) -> FinalManifest:
    """Mux the stitched video with the finished music and publish the result as
    ``videos/<video_id>.mp4``: a local copy, or with the S3 store an S3 object
    (``pipeline.publish.publish_final``; ``FinalManifest.published_uri`` says where).

    With the music manifest's finished track (made for this plan's duration) both streams are
    copied as they are (``media.mux_copy``): "stream_copy". Without one (a music manifest written
    before finishing moved to ``music``) the music is faded out, loudness-normalized and encoded
    during the mux (``media.mux_final``): "reencode". ``FinalManifest.mux_method`` and the video's
    ``extra["method"]`` say which ran; ``extra["loudness"]`` is loudnorm's measurement either way.

    The manifest's cost lines (``pipeline.costs.final_costs``) are reconciled with ``ledger`` (None:
    the manifests alone): ``paid_usd`` (= ``cost_usd``) is what this video's calls paid in every
    attempt, ``reused_usd`` the price of outputs other videos paid for (USD). ``characters``: the
    video's character references (``characters`` asset), whose lines come first after the plan's.

    ``soundtrack`` (the ``soundtrack`` asset's manifest; None for callers that predate it): its
    track replaces the music's, and its narration cues become WebVTT and SRT files published beside
    the video and a ``mov_text`` track muxed by stream copy (``FinalManifest.subtitles``). Captions
    "burned" re-encode the video once with the captions drawn in ("reencode")."""
    if soundtrack is not None and soundtrack.track is not None:
        return voiceover.mux_soundtrack(plan, stitched, music, soundtrack, generator, workspace, ledger, characters)
    labels = {"video_id": plan.video_id, "stage": "final_video"}
    track = _fitting_track(plan, music)
    if track is not None:
        request = GenerationRequest(media_type="video", provider=FFMPEG, model=MUX_COPY_MODEL,
                                    inputs={"video": stitched.video.sha256, "track": track.sha256}, labels=labels)

        def call(scratch: Path) -> ProviderResult:
            out = scratch / "final.mp4"
            media.mux_copy(generator.local_path(stitched.video), generator.local_path(track), out)
            return ProviderResult(path=out, model=MUX_COPY_MODEL, verify="stream_copy",
                                  extra={"method": "stream_copy", "loudness": track.extra.get("loudness", {})})
    else:
        request = GenerationRequest(media_type="video", provider=FFMPEG, model=MUX_REENCODE_MODEL,
                                    params={"duration_s": plan.duration_s, "fade_out_s": FADE_OUT_S,
                                            "loudness": media.LOUDNESS_TARGET},
                                    inputs={"video": stitched.video.sha256, "music": music.audio.sha256},
                                    labels=labels)

        def call(scratch: Path) -> ProviderResult:
            out = scratch / "final.mp4"
            loudness = media.mux_final(generator.local_path(stitched.video), generator.local_path(music.audio), out,
                                       duration_s=plan.duration_s, fade_out_s=FADE_OUT_S)
            return ProviderResult(path=out, model=MUX_REENCODE_MODEL,
                                  extra={"method": "reencode", "loudness": loudness})

    video = generator.generate(request, call)
    method = "stream_copy" if video.model == MUX_COPY_MODEL else "reencode"
    path, uri = publish_final(video, plan.video_id, generator.store, workspace)
    lines = costs.final_costs(plan, stitched, music, ledger, characters)
    paid, reused = costs.totals(lines)
    return FinalManifest(video_id=plan.video_id, video=video, path=path, published_uri=uri, beats=len(plan.beats),
                         chunks=sum(1 for c in lines if c.stage == "chunk_videos" and c.source == "manifest"),
                         cost_usd=paid, paid_usd=paid, reused_usd=reused, costs=lines, mux_method=method)
