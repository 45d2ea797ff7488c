"""Benchmark specs, generated (deterministically) into a directory.

- ``mixed-12``: the makespan spec: 12 beats of 5, 10 and 15 s (four of each, mixed order) = 120 s.
  The issue asks for "a 60 s, 12-beat spec with mixed beat lengths (5, 10 and 15 s)", which cannot
  exist: 12 beats of at least 5 s fill 60 s only if all are 5 s. We keep the 12 beats and the mix
  (what the scheduling comparison is about), so the video is 120 s; ``mixed-60`` is the 60 s one.
- ``mixed-60``: 60 s, 6 beats of 5, 10 and 15 s (two of each).
- ``local-15`` / ``local-120`` / ``local-300``: the local-render scaling specs, built from the
  tortoise-and-hare beat pattern (5, 5, 10, 5, 10, 5 s); the 40 s one is examples/tortoise-and-hare.yaml.
- ``fleet_specs``: the fleet benchmark's videos (bench_fleet.py): N specs of 2-12 beats of 5, 10
  or 15 s each (seeded), each with its own seed and shot labels so no two videos share a provider
  call.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

SCENES = [
    ("A lighthouse keeper climbs the spiral stairs at dusk", "slow tilt up"),
    ("Waves crash against black rocks below the lighthouse", "slow push-in"),
    ("The lamp flares to life and sweeps across the sea", "lateral pan"),
    ("A small fishing boat fights the swell in the dark", "tracking shot following the boat"),
    ("The keeper scans the horizon through a brass telescope", None),
    ("Lightning splits the sky over the harbour", "tilt down"),
    ("The boat's crew spots the beam and turns toward shore", "push in on the crew"),
    ("Rain streams down the lighthouse windows", None),
    ("The boat slips between the harbour walls", "pan left across the harbour"),
    ("Villagers run down the quay with lanterns", "tracking shot"),
    ("The crew climbs onto the quay, soaked and laughing", "slow push-in"),
    ("Dawn breaks; the lamp dims as the sea calms", "slow drift"),
    ("Gulls wheel over the quiet harbour", "tilt up"),
    ("The keeper writes the night into the logbook", "push in"),
    ("Children race along the beach at low tide", "tracking"),
    ("Fishing nets dry in the morning sun", None),
]

MIXED_12 = [10, 5, 15, 5, 10, 15, 5, 15, 10, 5, 10, 15]
MIXED_60 = [10, 5, 15, 5, 15, 10]
TORTOISE_PATTERN = [5, 5, 10, 5, 10, 5]


def _beats(durations: list[float], label: str | None = None) -> list[dict]:
    beats = []
    for i, d in enumerate(durations):
        prompt, motion = SCENES[i % len(SCENES)]
        shot = f"{label}, shot {i + 1}" if label else f"shot {i + 1}"
        beat = {"prompt": f"{prompt} ({shot})", "duration_s": d}
        if motion:
            beat["motion"] = motion
        beats.append(beat)
    return beats


def write_spec(path: Path, video_id: str, durations: list[float], *, aspect: str = "16:9", seed: int = 1234,
               label: str | None = None) -> Path:
    """Write a spec with one beat per entry of ``durations`` (seconds) to ``path``. ``seed``: the
    video's seed; ``label``: added to every beat prompt ("(<label>, shot N)"), so specs with
    different labels make different provider calls."""
    spec = {
        "video_id": video_id,
        "title": f"Benchmark {video_id}",
        "duration_s": sum(durations),
        "aspect_ratio": aspect,
        "style": "moody oil painting, storm light, deep blues and amber",
        "music": {"prompt": "slow building orchestral swell with low strings", "bpm": 84},
        "seed": seed,
        "beats": _beats(durations, label),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tortoise_pattern(seconds: float) -> list[float]:
    """Beats following the tortoise-and-hare pattern until ``seconds`` (the last one trimmed, >= 5 s)."""
    out: list[float] = []
    i = 0
    while sum(out) < seconds:
        d = TORTOISE_PATTERN[i % len(TORTOISE_PATTERN)]
        rest = seconds - sum(out)
        out.append(d if rest - d >= 5 or rest - d == 0 else rest)
        i += 1
    return out


def makespan_specs(directory: Path) -> dict[str, Path]:
    return {
        "mixed-12": write_spec(directory / "mixed-12.yaml", "bench-mixed-12", MIXED_12),
        "mixed-60": write_spec(directory / "mixed-60.yaml", "bench-mixed-60", MIXED_60),
    }


def local_specs(directory: Path, examples: Path) -> dict[int, Path]:
    return {
        15: write_spec(directory / "local-15.yaml", "bench-local-15", tortoise_pattern(15)),
        40: examples / "tortoise-and-hare.yaml",
        120: write_spec(directory / "local-120.yaml", "bench-local-120", tortoise_pattern(120)),
        300: write_spec(directory / "local-300.yaml", "bench-local-300", tortoise_pattern(300)),
    }


FLEET_BEAT_LENGTHS = (5, 10, 15)


def fleet_durations(videos: int, *, seed: int, min_beats: int = 2, max_beats: int = 12,
                    lengths: tuple[float, ...] = FLEET_BEAT_LENGTHS) -> list[list[float]]:
    """Beat durations (seconds) of ``videos`` videos: beat counts spread evenly over
    ``min_beats``..``max_beats`` (shuffled with ``seed``), each beat's length drawn from ``lengths``."""
    rng = random.Random(seed)
    span = max_beats - min_beats
    counts = [min_beats + (round(i * span / (videos - 1)) if videos > 1 else span) for i in range(videos)]
    rng.shuffle(counts)
    return [[rng.choice(lengths) for _ in range(n)] for n in counts]


def fleet_specs(directory: Path, videos: int = 20, *, seed: int = 11, min_beats: int = 2,
                max_beats: int = 12) -> list[Path]:
    """The fleet benchmark's specs ``bench-fleet-NN`` (``fleet_durations``), each with its own video
    seed and shot labels (no provider call is shared between two videos)."""
    return [write_spec(directory / f"fleet-{i:02d}.yaml", f"bench-fleet-{i:02d}", durations,
                       seed=100_003 * (i + 1) % 2**31, label=f"film {i + 1}")
            for i, durations in enumerate(fleet_durations(videos, seed=seed, min_beats=min_beats,
                                                          max_beats=max_beats))]
