"""Narration stages: voicing beats, timing narrated beats, the soundtrack and the subtitles, as
plain functions of plans, manifests and services (the ``narration`` and ``soundtrack`` assets wrap
them; ``pipeline.stages.plan_video`` times beats with them). Nothing here imports Dagster.

Where each beat is voiced: a clip is one generation (``clip_request``: provider, TTS model, text,
voice and how the voice speaks; cached and costed like every generation, paid calls through the
ledger). A beat whose length comes from its narration (``duration_s: auto``, and every beat of
``narration: from_brief``) is voiced while the video is planned, because the plan needs its length;
a failed call fails the plan, and its retry voices only the beats not in the cache yet. Every other
narrated beat is voiced by its segment's ``narration`` asset: a failed call fails that segment
alone, and a narration longer than the beat's explicit duration fails it with a message naming the
beat before its storyboard and chunks are paid for. The segment asset asks for the same clip as the
plan did, so for planned beats it is a cache hit that carries the clip, its cues and its cost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

from pipeline import audio_mix, costs, media, narration, subtitles
from pipeline.generation import GenerationRequest, Generator, ProviderResult
from pipeline.manifests import (
    Cue,
    MediaManifest,
    MusicManifest,
    NarrationManifest,
    NarrationPlan,
    PlannedBeat,
    SoundtrackManifest,
    VideoPlan,
    segment_key,
)
from pipeline.progress import Progress, ProgressCallback, report
from pipeline.providers import Provider
from pipeline.spec import BeatSpec, SpecError, VideoSpec
from pipeline.spec_characters import beat_characters
from pipeline.step_models import BURN_MODEL, FFMPEG, MIX_MODEL, SILENCE_MODEL  # noqa: F401 (re-exported)

Voicer = Callable[[GenerationRequest], MediaManifest]
"""Voices one clip request (``voice_clip`` bound to a provider and a generator)."""


class NarrationFanInError(RuntimeError):
    """The soundtrack found real segments without a ``narration`` manifest."""


# --- planning ----------------------------------------------------------------------------------

def narration_plan(spec: VideoSpec, provider: Provider, source: str) -> NarrationPlan | None:
    """How ``spec``'s beats are spoken with ``provider`` (None when nothing is spoken). Raises
    SpecError naming ``source`` when the provider has no such voice (the message lists its voices)."""
    if not spec.narrated:
        return None
    n = spec.narration_spec
    try:
        voice = provider.resolve_voice(n.voice)
    except ValueError as exc:
        raise SpecError(source, [str(exc)]) from None
    return NarrationPlan(provider=provider.name, model=provider.narration_model, voice=voice, pause_s=n.pause_s,
                         captions=n.captions, from_brief=n.from_brief)


def clip_request(video_id: str, index: int, text: str, plan: NarrationPlan, provider: Provider,
                 max_cost_usd: float | None) -> GenerationRequest:
    """The generation of beat ``index``'s narration clip: ``text`` spoken by ``plan.voice`` with
    ``plan.model`` (cache key: provider, model, text, ``provider.speech_params``)."""
    return GenerationRequest(media_type="audio", provider=provider.name, model=plan.model, prompt=text,
                             params={"task": "narration", **provider.speech_params(plan.voice)},
                             labels={"video_id": video_id, "segment": segment_key(index), "stage": "narration"},
                             max_cost_usd=max_cost_usd)


def voice_clip(request: GenerationRequest, provider: Provider, generator: Generator) -> MediaManifest:
    """The clip of ``request`` from the cache, else voiced by ``provider.render_speech`` and stored.
    Raises ProviderError / media.MediaError."""
    return generator.generate(request, lambda scratch: provider.render_speech(request, scratch))


def time_beats(spec: VideoSpec, beats: list[BeatSpec], plan: NarrationPlan | None, provider: Provider,
               voicer: Voicer | None, fps: int) -> tuple[list[PlannedBeat], list[MediaManifest]]:
    """``beats`` (fitted) laid on the timeline, with their narration and length:

    - ``duration_s: auto``: the clip plus ``plan.pause_s``, rounded up to a frame, or a whole number
      of chunks when only part of the pause spills over (``narration.auto_length``; "narration");
    - ``from_brief``: the planner's beat text is spoken, and the beat lengthened to that when it is
      shorter ("planner+narration");
    - otherwise the spec's number ("spec"); the segment checks the narration fits.

    ``voicer`` voices the clips whose length is needed; None (``pipeline validate``) estimates them
    (``narration.estimate_speech_s``) and voices nothing. Returns (beats, the clips voiced)."""
    planned, voiced, start = [], [], 0.0
    for i, beat in enumerate(beats):
        text = beat.prompt if plan is not None and plan.from_brief else beat.narration
        duration, source = beat.duration_s, "spec"
        if plan is not None and text and (beat.auto or plan.from_brief):
            if voicer is None:
                seconds = narration.estimate_speech_s(text)
            else:
                clip = voicer(clip_request(spec.video_id, i, text, plan, provider, spec.max_cost_usd))
                voiced.append(clip)
                seconds = clip.duration_s or 0.0
            need = narration.beat_length(seconds, plan.pause_s, fps)
            if beat.auto:
                duration, source = narration.auto_length(seconds, plan.pause_s, fps, provider.chunk_seconds), "narration"
            elif need > float(duration):
                duration, source = need, "planner+narration"
        planned.append(PlannedBeat(index=i, prompt=beat.prompt, motion=beat.motion, duration_s=float(duration),
                                   start_s=round(start, 6), narration=text if plan is not None else None,
                                   duration_from=source, seed=beat.seed,
                                   characters=beat_characters(beat.prompt, beat.characters, spec.characters)))
        start += float(duration)
    return planned, voiced


# --- the narration asset -------------------------------------------------------------------------

def render_narration(plan: VideoPlan, beat: PlannedBeat, provider: Provider, generator: Generator,
                     progress: ProgressCallback | None = None) -> NarrationManifest:
    """Beat ``beat``'s narration clip and its cues (``clip`` None for a silent beat). Raises
    narration.NarrationTooLong (naming the beat) when the clip and the pause do not fit the beat,
    ProviderError / media.MediaError when voicing fails."""
    base = dict(video_id=plan.video_id, index=beat.index, text=beat.narration, start_s=beat.start_s,
                duration_s=beat.duration_s)
    if plan.narration is None or not beat.narration:
        return NarrationManifest(**base)
    n = plan.narration
    request = clip_request(plan.video_id, beat.index, beat.narration, n, provider, plan.max_cost_usd)
    item = dict(stage="narration", kind="narration clip", index=1, count=1, segment=beat.segment)
    report(progress, Progress("started", **item, detail=f"voice {n.voice} with {n.model}, "
                                                          f"{len(narration.sentences(beat.narration))} sentences"))
    began = time.monotonic()
    clip = voice_clip(request, provider, generator)
    report(progress, Progress("done", **item, medium=clip, elapsed_s=time.monotonic() - began))
    narration.check_fits(beat.index, clip.duration_s or 0.0, n.pause_s, beat.duration_s, plan.fps)
    cues = [Cue.model_validate(c) for c in clip.extra.get("cues", [])]
    return NarrationManifest(**base, pause_s=n.pause_s, clip=clip, cues=cues, timing=clip.extra.get("timing"))


# --- the soundtrack asset ------------------------------------------------------------------------

def check_narration_fan_in(plan: VideoPlan, narrations: dict[str, NarrationManifest]) -> list[NarrationManifest]:
    """The real segments' narration manifests in timeline order, each for the beat as planned now.
    Raises NarrationFanInError naming the segments that have none or one made for another timing."""
    missing = [b.segment for b in plan.beats if b.segment not in narrations]
    stale = [b.segment for b in plan.beats if b.segment in narrations
             and (narrations[b.segment].text != b.narration
                  or abs(narrations[b.segment].start_s - b.start_s) > 1e-6)]
    if missing or stale:
        parts = ([f"segments {', '.join(missing)} have no narration"] if missing else []) + \
                ([f"segments {', '.join(stale)} were voiced for another version of the spec"] if stale else [])
        raise NarrationFanInError(f"{plan.video_id}: cannot make the soundtrack: " + "; ".join(parts)
                                  + ". Materialize those segments (pipeline retry) and assemble again.")
    return [narrations[b.segment] for b in plan.beats]


def narration_cues(ordered: Iterable[NarrationManifest]) -> list[Cue]:
    """Every clip's cues on the video's clock (the clip plays from its beat's start)."""
    return [Cue(start_s=round(n.start_s + c.start_s, 3), end_s=round(n.start_s + c.end_s, 3), text=c.text)
            for n in ordered for c in n.cues]


def narration_lines(video_id: str, ordered: Iterable[NarrationManifest]) -> list:
    """Cost lines of the narration clips (audio seconds), in timeline order."""
    return [costs.media_line(video_id, n.clip, stage="narration", segment=n.segment, item="narration clip",
                             units=n.clip.duration_s or 0.0, unit="audio s") for n in ordered if n.clip is not None]


def silence_track(plan: VideoPlan, generator: Generator) -> MediaManifest:
    """A silent AAC track as long as ``plan`` (cached by duration): the audio of a video with
    neither music nor narration. ``extra["duration_s"]`` is the plan's duration."""
    request = GenerationRequest(media_type="audio", provider=FFMPEG, model=SILENCE_MODEL,
                                params={"duration_s": plan.duration_s, "sample_rate": 48_000},
                                labels={"video_id": plan.video_id, "stage": "music"})

    def call(scratch: Path) -> ProviderResult:
        out = scratch / "silence.m4a"
        audio_mix.silence(out, duration_s=plan.duration_s)
        return ProviderResult(path=out, model=SILENCE_MODEL, extra={"duration_s": plan.duration_s, "loudness": {}})

    return generator.generate(request, call)


def make_soundtrack(plan: VideoPlan, music: MusicManifest | None, narrations: dict[str, NarrationManifest],
                    generator: Generator, fade_out_s: float = 2.0) -> SoundtrackManifest:
    """The final video's audio and subtitle cues. Without narration: the music manifest's finished
    track as it is ("music"; silence when the spec has no music: "silence"). With narration: the
    clips on the timeline over the music (``music.audio``, ducked) or alone, loudness-normalized
    once ("mix" / "narration"; ``audio_mix.mix_soundtrack``), cached by the clips, their starts and
    the music. Raises NarrationFanInError, media.MediaError."""
    if plan.narration is None:
        track = music.track if music is not None and music.track is not None \
            and music.track.extra.get("duration_s") == plan.duration_s else None
        return SoundtrackManifest(video_id=plan.video_id, method="music" if plan.music else "silence", track=track)
    ordered = check_narration_fan_in(plan, narrations)
    clips = [n for n in ordered if n.clip is not None]
    with_music = plan.music is not None and music is not None
    params = {"duration_s": plan.duration_s, "fade_out_s": fade_out_s, "loudness": media.LOUDNESS_TARGET,
              "music_under_voice_db": audio_mix.MUSIC_UNDER_VOICE_DB, "ducking": audio_mix.DUCKING,
              "peak_limit_dbfs": audio_mix.PEAK_LIMIT_DBFS, "voice_compression": audio_mix.VOICE_COMPRESSION,
              "codec": media.AUDIO_CODEC_ARGS,
              "clips": [{"start_s": n.start_s, "sha256": n.clip.sha256} for n in clips]}
    inputs = {f"clip{i}": n.clip.sha256 for i, n in enumerate(clips)}
    if with_music:
        inputs["music"] = music.audio.sha256
    request = GenerationRequest(media_type="audio", provider=FFMPEG, model=MIX_MODEL, params=params, inputs=inputs,
                                labels={"video_id": plan.video_id, "stage": "soundtrack"})

    def call(scratch: Path) -> ProviderResult:
        bed = scratch / "narration.wav"
        audio_mix.narration_bed([(n.start_s, generator.local_path(n.clip)) for n in clips], bed, plan.duration_s)
        out = scratch / "soundtrack.m4a"
        loudness = audio_mix.mix_soundtrack(bed, generator.local_path(music.audio) if with_music else None, out,
                                            duration_s=plan.duration_s, fade_out_s=fade_out_s)
        return ProviderResult(path=out, model=MIX_MODEL, extra={"duration_s": plan.duration_s, "loudness": loudness,
                                                                "method": "mix" if with_music else "narration"})

    track = generator.generate(request, call)
    return SoundtrackManifest(video_id=plan.video_id, method="mix" if with_music else "narration", track=track,
                              cues=narration_cues(ordered), captions=plan.narration.captions,
                              costs=narration_lines(plan.video_id, ordered))


# --- subtitles -----------------------------------------------------------------------------------

def subtitle_texts(plan: VideoPlan, soundtrack: SoundtrackManifest) -> tuple[str, str] | None:
    """(WebVTT, SRT) text of the soundtrack's cues, or None when it has none."""
    if not soundtrack.cues:
        return None
    return subtitles.to_vtt(soundtrack.cues, title=plan.title), subtitles.to_srt(soundtrack.cues)
