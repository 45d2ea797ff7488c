"""Narration as plain functions: sentences, how long speech lasts, the beat timing rule, and where
the sentences of a voiced clip start and end (the subtitle cues). No Dagster, no provider.

Timing rule: a narrated beat lasts at least its clip plus the pause after it. ``duration_s: auto``
is exactly that, rounded up to a whole frame (``beat_length``; shortened to a whole number of
chunks when only part of the pause spills into one more chunk: ``auto_length``); a beat the planner made from a
brief (``narration: from_brief``) is lengthened to it when shorter; an explicit duration that is
shorter is an error naming the beat (``NarrationTooLong``), raised before the beat's images and
chunks are paid for.

Cues: a provider that voices each sentence on its own knows where each one is (``cues_from_lengths``,
"synthesis"); for one clip of several sentences (Replicate's Kokoro) the sentences are found at its
pauses (``cues_from_silences``, "silences"), and spread by their length in characters when the clip
has too few pauses ("characters"). Each cue is trimmed to where the speech is (``speech_span``).
"""

from __future__ import annotations

import math
import re
import wave
from pathlib import Path

import numpy as np

from pipeline.manifests import Cue

SPEECH_CHARS_PER_S = 15.0
"""Characters spoken per second, for estimates only (``estimate_speech_s``); measured with the joe
piper voice: 80 characters in 5.0 s."""

SILENCE_DB = -40.0
"""A 10 ms window this far below the clip's loudest window is silence (cues, pauses)."""

_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"')\]]))\s+")


class NarrationTooLong(ValueError):
    """A beat's narration (plus its pause) is longer than the beat's explicit duration."""


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (after ., !, ? or …, and closing quotes or brackets), whitespace
    (newlines included) collapsed to single spaces; [] for blank text."""
    flat = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()] if flat else []


def estimate_speech_s(text: str) -> float:
    """A guess (seconds) of how long ``text`` takes to say: SPEECH_CHARS_PER_S, plus 0.2 s a
    sentence. Only for ``pipeline validate`` and price estimates: rendering measures the real clip."""
    parts = sentences(text)
    return round(sum(len(p) for p in parts) / SPEECH_CHARS_PER_S + 0.2 * len(parts), 3)


def beat_length(narration_s: float, pause_s: float, fps: int) -> float:
    """Seconds of a beat that holds ``narration_s`` of speech and ``pause_s`` after it: their sum
    rounded up to a whole frame at ``fps`` (so every such beat is a whole number of frames)."""
    frames = math.ceil((narration_s + pause_s) * fps - 1e-6)
    return round(max(1, frames) / fps, 6)


def auto_length(narration_s: float, pause_s: float, fps: int, chunk_s: float) -> float:
    """The length of a ``duration_s: auto`` beat: ``beat_length``, except when that is just over a
    whole number of the video model's chunks (``chunk_s`` seconds) and the pause can give way: when
    the narration and at least half the pause fit in k chunks, the beat is exactly k chunks long
    (one paid chunk fewer, for a shorter pause: a 4.6 s clip with a 0.5 s pause is a 5 s beat, not
    a second chunk for 0.1 s)."""
    need = beat_length(narration_s, pause_s, fps)
    whole = math.floor(need / chunk_s + 1e-9) * chunk_s
    if 0 < whole < need and narration_s + pause_s / 2 <= whole + 1e-9:
        return round(whole, 6)
    return need


def check_fits(index: int, narration_s: float, pause_s: float, duration_s: float, fps: int) -> None:
    """Raise NarrationTooLong, naming beat ``index`` and the length it needs, when ``narration_s``
    plus ``pause_s`` do not fit in ``duration_s`` (seconds, one frame of tolerance)."""
    need = beat_length(narration_s, pause_s, fps)
    if need > duration_s + 1 / fps + 1e-6:
        raise NarrationTooLong(
            f"beats[{index}]: its narration lasts {narration_s:.2f} s, plus the {pause_s:g} s pause that is "
            f"{need:g} s, longer than its duration_s {duration_s:g}: give it duration_s: auto (or at least "
            f"{need:g}), or shorten the narration")


def window_db(samples: np.ndarray, sample_rate: int, window_s: float = 0.01) -> np.ndarray:
    """Level of each ``window_s`` window of mono ``samples`` in dB relative to the loudest window
    (0 dB; -120 for digital silence)."""
    n = max(1, int(sample_rate * window_s))
    count = len(samples) // n
    if count == 0:
        return np.zeros(0)
    rms = np.sqrt(np.mean(np.square(samples[:count * n].astype(np.float64).reshape(count, n)), axis=1))
    peak = float(rms.max()) or 1.0
    return 20 * np.log10(np.maximum(rms / peak, 1e-6))


def speech_span(samples: np.ndarray, sample_rate: int, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(first, last + 1) sample of ``samples[start:end]`` that is not silence (SILENCE_DB below the
    clip's loudest 10 ms), as indexes into ``samples``; (start, end) when it is all silence."""
    end = len(samples) if end is None else end
    levels = window_db(samples, sample_rate)
    n = max(1, int(sample_rate * 0.01))
    lo, hi = start // n, max(start // n, (end + n - 1) // n)
    loud = np.nonzero(levels[lo:hi] > SILENCE_DB)[0]
    if len(loud) == 0:
        return start, end
    return max(start, (lo + int(loud[0])) * n), min(end, (lo + int(loud[-1]) + 1) * n)


def cues_from_lengths(texts: list[str], bounds: list[tuple[int, int]], samples: np.ndarray,
                      sample_rate: int) -> list[Cue]:
    """One cue per sentence voiced on its own: sentence i took samples ``bounds[i]`` (start, end) of
    the clip ``samples``; its cue spans the speech inside (``speech_span``), seconds from the clip's start."""
    cues = []
    for text, (a, b) in zip(texts, bounds):
        s, e = speech_span(samples, sample_rate, a, b)
        cues.append(Cue(start_s=round(s / sample_rate, 3), end_s=round(e / sample_rate, 3), text=text))
    return cues


def cues_from_silences(texts: list[str], samples: np.ndarray, sample_rate: int) -> tuple[list[Cue], str]:
    """Cues for a clip that voices ``texts`` (sentences, in order) in one piece: cut at the
    ``len(texts) - 1`` longest pauses inside the speech (runs of SILENCE_DB windows at least 80 ms
    long), each sentence's cue trimmed to its speech. Returns (cues, "silences"); with fewer pauses
    than needed the speech is shared out by the sentences' lengths in characters: (cues, "characters")."""
    first, last = speech_span(samples, sample_rate)
    if len(texts) <= 1:
        return [Cue(start_s=round(first / sample_rate, 3), end_s=round(last / sample_rate, 3),
                    text=texts[0] if texts else "")], "silences"
    n = max(1, int(sample_rate * 0.01))
    quiet = window_db(samples, sample_rate) <= SILENCE_DB
    runs, i, lo, hi = [], first // n, first // n, last // n
    while i < hi:
        if quiet[i]:
            j = i
            while j < hi and quiet[j]:
                j += 1
            if j - i >= 8:
                runs.append((j - i, i, j))
            i = j
        else:
            i += 1
    if len(runs) >= len(texts) - 1:
        cuts = sorted(runs, key=lambda r: (-r[0], r[1]))[:len(texts) - 1]
        edges = [first] + [x for _, a, b in sorted(cuts, key=lambda r: r[1]) for x in (a * n, b * n)] + [last]
        bounds = [(edges[2 * k], edges[2 * k + 1]) for k in range(len(texts))]
        return cues_from_lengths(texts, bounds, samples, sample_rate), "silences"
    total = sum(len(t) for t in texts) or 1
    cues, at = [], first
    for t in texts:
        span = (last - first) * len(t) / total
        cues.append(Cue(start_s=round(at / sample_rate, 3), end_s=round((at + span) / sample_rate, 3), text=t))
        at += span
    return cues, "characters"


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float ``samples`` (-1..1) as 16-bit PCM WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def read_mono(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file to mono float32 samples (PyAV), resampled to ``sample_rate`` Hz when
    given. Returns (samples, rate). Raises media.MediaError if it does not decode."""
    import av

    from pipeline.media import MediaError

    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            rate = sample_rate or stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
    except (av.FFmpegError, OSError, IndexError, ValueError) as exc:
        raise MediaError(f"{path}: cannot decode audio: {exc}") from None
    return (np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)), rate
