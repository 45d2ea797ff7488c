"""The narrated soundtrack: the narration clips laid on the video's timeline, music ducked under
them, and one loudness normalization of the result. Media operations only (ffmpeg, numpy, PyAV);
no Dagster, no manifests.

- ``narration_bed``: every clip decoded, resampled to AUDIO_SAMPLE_RATE and placed at its start
  sample (sample-exact, so subtitle cues and speech line up), silence elsewhere, as one WAV.
- ``mix_soundtrack``: the music trimmed or padded to the video, faded out, levelled under the voice
  (``music_gain_db``: its RMS MUSIC_UNDER_VOICE_DB below the narration's), ducked
  by ``sidechaincompress`` keyed on the narration, mixed with the narration, then normalized once:
  EBU R128 measured (``loudnorm`` pass 1), the linear gain to ``media.LOUDNESS_TARGET`` applied with
  a fast peak limiter (the music is not normalized first), AAC at 48 kHz, exactly the video's
  length. Without music the narration alone is normalized.
- ``silence``: a silent AAC track of a given length (a video without music or narration still has
  an audio track).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline import media, narration

MUSIC_UNDER_VOICE_DB = -12.0
"""Where the music sits in a narrated mix before ducking: its RMS this far below the narration's
RMS while it speaks (music from any model, mastered loud or soft, gets the same place). Ducking
takes it down further under the voice; between narrations (a title beat) it plays at this level."""

MUSIC_GAIN_RANGE_DB = (-40.0, 12.0)
"""The music gain (dB) ``music_gain_db`` may choose."""

DUCKING = {"threshold": 0.02, "ratio": 8, "attack": 15, "release": 350, "makeup": 1}
"""``sidechaincompress`` settings: from about -34 dBFS of narration the music is compressed 8:1
(a voice at full level pulls it down by 15-20 dB), reacting within 15 ms and recovering over 350 ms."""


def narration_bed(clips: list[tuple[float, str | Path]], out: str | Path, duration_s: float) -> None:
    """Write ``out`` (WAV, mono, AUDIO_SAMPLE_RATE Hz, round(duration_s * rate) samples): each
    ``(start_s, clip file)`` decoded and placed from its start (seconds on the video's clock; a
    clip running past the end is cut), silence elsewhere. Raises media.MediaError for a clip that
    does not decode."""
    rate = media.AUDIO_SAMPLE_RATE
    total = round(duration_s * rate)
    bed = np.zeros(total, np.float32)
    for start_s, path in clips:
        samples, _ = narration.read_mono(path, rate)
        at = round(start_s * rate)
        n = max(0, min(len(samples), total - at))
        bed[at:at + n] += samples[:n]
    narration.write_wav(out, bed, rate)


def rms_db(samples: np.ndarray) -> float:
    """RMS of ``samples`` in dBFS (-120 for silence)."""
    if len(samples) == 0:
        return -120.0
    return float(20 * np.log10(max(float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))), 1e-6)))


def music_gain_db(bed: str | Path, music: str | Path, duration_s: float) -> tuple[float, float, float]:
    """(gain dB, narration RMS dBFS, music RMS dBFS): the gain that puts the music's RMS over the
    video's first ``duration_s`` seconds MUSIC_UNDER_VOICE_DB below the narration's RMS while it
    speaks (the bed's 10 ms windows within narration.SILENCE_DB of its loudest), within
    MUSIC_GAIN_RANGE_DB. Measured at 16 kHz. Raises media.MediaError if either does not decode."""
    voice, rate = narration.read_mono(bed, 16_000)
    n = int(rate * 0.01)
    levels = narration.window_db(voice, rate)
    speaking = np.concatenate([voice[i * n:(i + 1) * n] for i in np.nonzero(levels > narration.SILENCE_DB)[0]]) \
        if len(levels) and (levels > narration.SILENCE_DB).any() else voice[:0]
    tune, _ = narration.read_mono(music, 16_000)
    voice_db, music_db = rms_db(speaking), rms_db(tune[:int(duration_s * rate)])
    gain = voice_db + MUSIC_UNDER_VOICE_DB - music_db
    return round(min(max(gain, MUSIC_GAIN_RANGE_DB[0]), MUSIC_GAIN_RANGE_DB[1]), 2), round(voice_db, 2), round(music_db, 2)


VOICE_COMPRESSION = "acompressor=threshold=0.063:ratio=3:attack=5:release=120:makeup=2"
"""A voice-over compressor on the narration (3:1 above -24 dBFS, +6 dB makeup): speech's peaks sit
far above its loudness; evening them out keeps the final peak limiter gentle."""

PEAK_LIMIT_DBFS = -2.0
"""The sample-peak ceiling of the normalized mix (true peaks then stay near LOUDNESS_TARGET's -1.5 dBTP)."""


def _loudness(args: list[str], chain: str) -> dict:
    """loudnorm's EBU R128 measurement (input_i LUFS, input_tp dBTP, ...) of ``chain``'s output."""
    import json
    import re

    target = ":".join(f"{k}={v}" for k, v in media.LOUDNESS_TARGET.items())
    log = media.run_ffmpeg([*args, "-filter_complex", f"{chain},loudnorm={target}:print_format=json[out]",
                            "-map", "[out]", "-f", "null", "-"], what="measure the soundtrack's loudness")
    match = re.search(r"\{[^{}]*\"input_i\"[^{}]*\}", log, re.S)
    if not match:
        raise media.MediaError("loudnorm printed no measurement")
    return json.loads(match.group(0))


def _lufs(m: dict) -> float:
    try:
        value = float(m["input_i"])
    except (KeyError, TypeError, ValueError):
        return -math.inf
    return value


def _normalize(args: list[str], chain: str) -> tuple[str, dict]:
    """The normalization of ``chain``'s output, found by measuring: a linear gain to
    LOUDNESS_TARGET's integrated loudness followed by a peak limiter at PEAK_LIMIT_DBFS (the
    true-peak ceiling). Pass 1 measures the mix; pass 2 measures it with that gain and the limiter
    (which takes a little loudness off the peaks) and corrects the gain once. Returns (the filters,
    pass 1's measurement with ``gain_db``). loudnorm's own second pass is not used: when a linear
    gain would break the true-peak ceiling, as speech's peaks do, it falls back to dynamic
    compression and misses the target by 1.5 LU and more."""
    measured = _loudness(args, chain)
    first = _lufs(measured)
    if not math.isfinite(first):  # all silence: nothing to normalize
        return "anull", measured
    limit = 10 ** (PEAK_LIMIT_DBFS / 20)
    stage = "volume={gain:.2f}dB,alimiter=limit=" + f"{limit:.4f}:attack=2:release=60:level=false:latency=true"
    gain = media.LOUDNESS_TARGET["I"] - first
    second = _lufs(_loudness(args, f"{chain},{stage.format(gain=gain)}"))
    if math.isfinite(second):
        gain += media.LOUDNESS_TARGET["I"] - second
    measured["gain_db"] = round(gain, 2)
    return stage.format(gain=gain), measured


def mix_soundtrack(bed: str | Path, music: str | Path | None, out: str | Path, *, duration_s: float,
                   fade_out_s: float = 2.0) -> dict:
    """Write ``out`` (.m4a): the narration ``bed`` (``narration_bed``'s WAV) over ``music`` (any
    audio file, or None for the narration alone), as module doc says: music trimmed/padded to
    ``duration_s`` seconds, faded out over the last ``min(fade_out_s, duration_s / 4)`` seconds,
    levelled under the voice (``music_gain_db``), ducked under the narration (``sidechaincompress``,
    DUCKING), mixed, then normalized once (``_normalize``: measured, a linear gain to LOUDNESS_TARGET and a
    peak limiter at PEAK_LIMIT_DBFS), AUDIO_SAMPLE_RATE Hz AAC, exactly
    round(duration_s * rate) samples. Returns loudnorm pass 1's measurement of the mix (input_i
    LUFS ...) with ``music_gain_db``, ``narration_rms_db`` and ``music_rms_db``. Raises media.MediaError."""
    rate = media.AUDIO_SAMPLE_RATE
    samples = round(duration_s * rate)
    fade = min(fade_out_s, duration_s / 4)
    levels: dict = {}
    if music is None:
        args = ["-i", str(bed)]
        chain = f"[0:a]aresample={rate},aformat=channel_layouts=mono,{VOICE_COMPRESSION}"
    else:
        gain, voice_db, music_db = music_gain_db(bed, music, duration_s)
        levels = {"music_gain_db": gain, "narration_rms_db": voice_db, "music_rms_db": music_db}
        duck = ":".join(f"{k}={v}" for k, v in DUCKING.items())
        args = ["-i", str(bed), "-i", str(music)]
        chain = (f"[1:a]aresample={rate},aformat=channel_layouts=mono,atrim=0:{duration_s:.6f},"
                 f"apad=whole_dur={duration_s:.6f},afade=t=out:st={max(0.0, duration_s - fade):.6f}:d={fade:.6f},"
                 f"volume={gain}dB[music];"
                 f"[0:a]aresample={rate},aformat=channel_layouts=mono,{VOICE_COMPRESSION},asplit=2[key][voice];"
                 f"[music][key]sidechaincompress={duck}[ducked];"
                 f"[ducked][voice]amix=inputs=2:duration=first:normalize=0")
    norm, measured = _normalize(args, chain)
    final = (f"{chain},{norm},aresample={rate},asetpts=N/SR/TB,apad=whole_len={samples},"
             f"atrim=end_sample={samples}[out]")
    media.run_ffmpeg([*args, "-filter_complex", final, "-map", "[out]", *media.AUDIO_CODEC_ARGS,
                      "-movflags", "+faststart", str(out)], what="mix the narrated soundtrack")
    return {**measured, **levels}


def silence(out: str | Path, *, duration_s: float) -> None:
    """Write ``out`` (.m4a): ``duration_s`` seconds of silence, AAC at AUDIO_SAMPLE_RATE Hz, mono."""
    rate = media.AUDIO_SAMPLE_RATE
    media.run_ffmpeg(["-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-af",
                      f"atrim=end_sample={round(duration_s * rate)}", *media.AUDIO_CODEC_ARGS,
                      "-movflags", "+faststart", str(out)], what="write a silent track")
