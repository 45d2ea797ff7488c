"""The assembly stages: fan-in of the segments, the stitched video, the music track and its finished
audio, and the final mux and publish, as plain functions of manifests, specs and services.

The ``stitched_video``, ``music`` and ``final_video`` assets in ``pipeline.defs.assets`` are thin
wrappers over the functions here; ``pipeline.stages`` (the stages before them) re-exports them, so
``stages.stitch_video`` etc. keep working. Times in seconds, frames at the plan's fps, costs in USD.
Raises FanInError for missing or stale segments and what the store, ffmpeg or the provider raise
(media.MediaError, ProviderError). Nothing here imports Dagster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path

from pipeline import costs, media, voiceover
from pipeline.generation import GenerationRequest, Generator, ProviderResult
from pipeline.ledger import Ledger
from pipeline.manifests import (
    CharactersManifest,
    ChunkVideosManifest,
    CostLine,
    FinalManifest,
    MediaManifest,
    MusicManifest,
    SoundtrackManifest,
    StitchedManifest,
    VideoPlan,
    segment_key,
)
from pipeline.progress import Progress, ProgressCallback, report
from pipeline.providers import Provider
from pipeline.publish import publish_final, publish_text
from pipeline.step_models import (
    BURN_MODEL,
    FFMPEG,
    FINISH_MUSIC_MODEL,
    MUX_COPY_MODEL,
    MUX_REENCODE_MODEL,
    MUX_SUBTITLED_MODEL,
    STITCH_CLIPS_MODEL,
    STITCH_MODEL,
)
from pipeline.store import Workspace

FADE_OUT_S = 2.0
"""The music fades out over the video's last 2 s (at most a quarter of the video)."""


class FanInError(RuntimeError):
    """Fan-in found real segments missing or rendered from another version of the spec."""


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
        return _mux_soundtrack(plan, stitched, music, soundtrack, generator, workspace, ledger, characters)
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
    return _final_manifest(plan, video, method, stitched, music, generator, workspace, ledger, characters)


def _final_manifest(plan: VideoPlan, video: MediaManifest, method: str, stitched: StitchedManifest,
                    music: MusicManifest, generator: Generator, workspace: Workspace, ledger: Ledger | None,
                    characters: CharactersManifest | None, *, extra: Iterable[CostLine] = (),
                    subtitles: dict | None = None) -> FinalManifest:
    """Publish the muxed final ``video`` (``publish.publish_final``) and record it: cost lines
    (``costs.final_costs``: plan, characters, segments, ``extra`` narration clips, music; reconciled
    with ``ledger``), paid and reused USD, the chunk count, ``method`` and ``subtitles``."""
    path, uri = publish_final(video, plan.video_id, generator.store, workspace)
    lines = costs.final_costs(plan, stitched, music, ledger, characters, extra=extra)
    paid, reused = costs.totals(lines)
    return FinalManifest(video_id=plan.video_id, video=video, path=path, published_uri=uri, beats=len(plan.beats),
                         chunks=sum(1 for c in lines if c.stage == "chunk_videos" and c.source == "manifest"),
                         cost_usd=paid, paid_usd=paid, reused_usd=reused, costs=lines, mux_method=method,
                         subtitles=subtitles)


def _mux_soundtrack(plan: VideoPlan, stitched: StitchedManifest, music: MusicManifest, soundtrack: SoundtrackManifest,
                   generator: Generator, workspace: Workspace, ledger: Ledger | None,
                   characters: CharactersManifest | None = None) -> FinalManifest:
    """``mux_video`` with the soundtrack's track: the stitched video (its captions burned in
    first for ``captions: burned``, one re-encode: "reencode") and the soundtrack's AAC track muxed
    by stream copy, with the narration's cues as a ``mov_text`` track unless ``captions: none``.
    The video is published as ``videos/<video_id>.mp4`` and the cues beside it as ``.vtt`` and
    ``.srt`` (local files, or S3 objects next to the published video: ``publish.publish_text``).
    Cost lines: the plan's, the characters', the segments', the narration clips', the music's,
    reconciled with ``ledger``. Raises media.MediaError, OSError, or the S3 client's errors."""
    from pipeline import subtitle_media

    labels = {"video_id": plan.video_id, "stage": "final_video"}
    texts = voiceover.subtitle_texts(plan, soundtrack)
    captions = soundtrack.captions if texts else "none"
    video = stitched.video
    if texts and captions == "burned":
        burn = GenerationRequest(media_type="video", provider=FFMPEG, model=BURN_MODEL,
                                 params={"fps": plan.fps, "style": subtitle_media.CAPTION_STYLE, "vtt": texts[0]},
                                 inputs={"video": video.sha256}, labels={**labels, "stage": "burn_captions"})

        def burn_call(scratch: Path) -> ProviderResult:
            (scratch / "in.vtt").write_text(texts[0], encoding="utf-8")
            out = scratch / "burned.mp4"
            subtitle_media.burn_captions(generator.local_path(video), scratch / "in.vtt", out, fps=plan.fps,
                                         workdir=scratch)
            return ProviderResult(path=out, model=BURN_MODEL, extra={"method": "reencode"})

        video = generator.generate(burn, burn_call)
    track = soundtrack.track
    assert track is not None  # mux_video calls this only for a soundtrack with a track
    track_sub = texts[0] if texts and captions != "none" else None
    model = MUX_SUBTITLED_MODEL if track_sub is not None or captions == "burned" else MUX_COPY_MODEL
    request = GenerationRequest(media_type="video", provider=FFMPEG, model=model,
                                params={"subtitles": track_sub} if track_sub else {},
                                inputs={"video": video.sha256, "track": track.sha256}, labels=labels)

    def call(scratch: Path) -> ProviderResult:
        out = scratch / "final.mp4"
        subs = None
        if track_sub:
            subs = scratch / "narration.vtt"
            subs.write_text(track_sub, encoding="utf-8")
        subtitle_media.mux_copy_subtitled(generator.local_path(video), generator.local_path(track), subs, out)
        return ProviderResult(path=out, model=model, verify="stream_copy",
                              extra={"method": "stream_copy", "loudness": track.extra.get("loudness", {})})

    final = generator.generate(request, call)
    subs_info = None
    if texts:
        vtt = publish_text(texts[0], f"{plan.video_id}.vtt", generator.store, workspace)
        srt = publish_text(texts[1], f"{plan.video_id}.srt", generator.store, workspace)
        subs_info = {"vtt": vtt, "srt": srt, "cues": texts[0].count(" --> "),
                     "track": "mov_text" if track_sub else None, "captions": captions}
    return _final_manifest(plan, final, "reencode" if captions == "burned" else "stream_copy", stitched, music,
                           generator, workspace, ledger, characters, extra=soundtrack.costs, subtitles=subs_info)
