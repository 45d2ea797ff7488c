"""The makespan benchmark's workload: deterministic per-call latencies, the calls a spec makes,
fault selection, and discrete-event simulations of the reference schedulers.

Latency model. Every provider call is identified by ``(model, prompt, seed)`` as the Replicate
input carries them (image: the beat's image prompt and seed; chunk k: the beat's motion prompt and
seed + k; music: "<prompt>, <bpm> BPM" and the video seed). Its run time is drawn from a
log-normal distribution whose RNG is seeded with sha256(seed | model | prompt | input seed), so the
fake server (which sees the input) and the simulations (which derive the same keys from the plan)
get the same number for the same call, in any order, in any process. Medians are assumptions about
real models (not measurements) and everything is multiplied by ``scale`` so a render takes seconds.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

# Assumed real-world run times (create -> succeeded) of the default models, seconds: median, sigma
# (of the underlying normal). flux-schnell: a few seconds; wan-2.2-i2v-fast 5 s 480p chunk: ~45 s;
# stable-audio-2.5 track: ~20 s.
REAL_LATENCY = {
    "image": (3.0, 0.35),
    "video": (45.0, 0.35),
    "audio": (20.0, 0.30),
}
KIND_OF = {
    "black-forest-labs/flux-schnell": "image",
    "wan-video/wan-2.2-i2v-fast": "video",
    "stability-ai/stable-audio-2.5": "audio",
}

# The replicate provider's real polling and backoff, seconds (pipeline.providers.replicate
# defaults); the benchmark scales them with the latencies.
REAL_POLL_INTERVAL_S = 1.0
REAL_MAX_POLL_INTERVAL_S = 10.0
REAL_BACKOFF_INITIAL_S = 1.0
REAL_MAX_BACKOFF_S = 60.0


def call_key(model: str, prompt: Any, seed: Any) -> str:
    return f"{model}|{prompt}|{seed}"


def key_of_input(model: str, inp: dict[str, Any]) -> str:
    """The call key of a prediction input (what the fake server sees)."""
    return call_key(model, inp.get("prompt"), inp.get("seed"))


def draw_seconds(seed: int, key: str, scale: float) -> float:
    """The deterministic (scaled) run time of call ``key``."""
    model = key.split("|", 1)[0]
    median, sigma = REAL_LATENCY[KIND_OF.get(model, "image")]
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return rng.lognormvariate(math.log(median), sigma) * scale


@dataclass
class BeatCalls:
    index: int
    duration_s: float
    image: str
    chunks: list[str]

    @property
    def keys(self) -> list[str]:
        return [self.image, *self.chunks]


@dataclass
class Workload:
    """The calls of one video (by key) and their draws (seconds)."""

    beats: list[BeatCalls]
    music: str
    draws: dict[str, float]
    failed: set[str] = field(default_factory=set)
    """Keys whose first attempt fails (transiently)."""

    @property
    def keys(self) -> list[str]:
        return [k for b in self.beats for k in b.keys] + [self.music]

    def cost(self, key: str, retry_delay_s: float = 0.0) -> float:
        """Time the call takes, a failed first attempt included (it runs its full time, then fails)."""
        d = self.draws[key]
        return d + (d + retry_delay_s if key in self.failed else 0.0)

    def chain(self, beat: BeatCalls, retry_delay_s: float = 0.0) -> float:
        return sum(self.cost(k, retry_delay_s) for k in beat.keys)


def workload_for_spec(spec_path: str, *, seed: int, scale: float, scratch: str) -> Workload:
    """The calls the replicate provider makes for ``spec_path``, derived from the pipeline's own
    plan (stages.plan_video / plan_beat) with the default models."""
    from pipeline import models, stages
    from pipeline.providers import get_provider
    from pipeline.spec import load_spec
    from pipeline.submissions import Submission

    provider = get_provider("replicate", api_token="unused", workspace_root=scratch)
    spec = load_spec(spec_path)
    sub = Submission(video_id=spec.video_id, provider="replicate", source=str(spec_path),
                     spec=spec.model_dump(mode="json", exclude_none=True), spec_sha256=spec.fingerprint(),
                     submitted_at="")
    plan = stages.plan_video(sub, provider)
    image_ref = models.get_model(provider.image_model).ref
    video_ref = models.get_model(provider.video_model).ref
    music_ref = models.get_model(provider.music_model).ref
    beats = []
    for b in plan.beats:
        bm = stages.plan_beat(plan, b, provider)
        beats.append(BeatCalls(
            index=b.index, duration_s=b.duration_s,
            image=call_key(image_ref, bm.image_prompt, bm.seed),
            chunks=[call_key(video_ref, bm.motion_prompt, (bm.seed + c.index) % 2**31) for c in bm.chunks]))
    music = call_key(music_ref, f"{plan.music.prompt}, {plan.music.bpm} BPM", plan.seed)
    keys = [k for b in beats for k in b.keys] + [music]
    if len(set(keys)) != len(keys):
        raise RuntimeError("two calls share a key; the latency model needs distinct keys")
    return Workload(beats=beats, music=music, draws={k: draw_seconds(seed, k, scale) for k in keys})


def pick_failures(workload: Workload, fraction: float, seed: int) -> set[str]:
    """round(fraction * calls) call keys, chosen with a seeded RNG."""
    keys = sorted(workload.keys)
    n = round(fraction * len(keys))
    return set(random.Random(seed).sample(keys, n))


# --- schedulers (discrete-event simulations over the draws) -----------------------------------

def critical_path(w: Workload, stitch_s: float, mux_s: float, retry_delay_s: float = 0.0) -> float:
    """Lower bound: the longest beat chain (or the music) plus stitch and mux."""
    return max(max(w.chain(b, retry_delay_s) for b in w.beats), w.cost(w.music, retry_delay_s)) + stitch_s + mux_s


def sequential(w: Workload, stitch_s: float, mux_s: float, retry_delay_s: float = 0.0) -> float:
    """One call at a time: every image, chunk and the music, then stitch and mux."""
    return sum(w.cost(k, retry_delay_s) for k in w.keys) + stitch_s + mux_s


def two_phase(w: Workload, stitch_s: float, mux_s: float, retry_delay_s: float = 0.0) -> float:
    """Phase 1: every beat's storyboard image and reference image chunk, all beats in parallel.
    Phase 2 (after the slowest of phase 1): every beat's continuous chunks, all beats in
    parallel (chained within a beat: each needs the previous chunk's last frame). Music runs
    beside both phases."""
    c = lambda k: w.cost(k, retry_delay_s)  # noqa: E731
    phase1 = max(c(b.image) + c(b.chunks[0]) for b in w.beats)
    phase2 = max((sum(c(k) for k in b.chunks[1:]) for b in w.beats), default=0.0)
    return max(phase1 + phase2, c(w.music)) + stitch_s + mux_s


def batches(w: Workload, stitch_s: float, mux_s: float, size: int = 3, retry_delay_s: float = 0.0) -> float:
    """Scenes in timeline order, ``size`` at a time: each batch runs its beats' chains in parallel
    and the next batch starts when the batch's slowest beat is done. A failed call is retried
    inside its beat (failures isolated: the rest of the batch is not redone). Music runs beside."""
    ordered = sorted(w.beats, key=lambda b: b.index)
    total = sum(max(w.chain(b, retry_delay_s) for b in ordered[i:i + size]) for i in range(0, len(ordered), size))
    return max(total, w.cost(w.music, retry_delay_s)) + stitch_s + mux_s


def pipeline_policy(w: Workload, stitch_s: float, mux_s: float, workers: int, retry_delay_s: float = 0.0) -> float:
    """This pipeline's schedule (pipeline.orchestration.render): one run per beat plus a music run on
    ``workers`` workers, longest beats first, music queued in the middle, greedy list scheduling;
    then stitch and mux. With workers >= beats + 1 it equals the critical path."""
    order = sorted(w.beats, key=lambda b: -b.duration_s)
    tasks = [w.chain(b, retry_delay_s) for b in order]
    tasks.insert(len(tasks) // 2, w.cost(w.music, retry_delay_s))
    free = [0.0] * max(1, min(workers, len(tasks)))
    end = 0.0
    for t in tasks:
        i = min(range(len(free)), key=free.__getitem__)
        free[i] += t
        end = max(end, free[i])
    return end + stitch_s + mux_s


def poll_detect_delay(d: float, first: float, cap: float, factor: float = 1.5) -> float:
    """How long after a call of ``d`` seconds finishes the provider's poll loop (first interval
    ``first``, x``factor`` per poll, capped at ``cap``) sees it, ignoring request time."""
    t, interval = 0.0, first
    while True:
        t += interval
        if t >= d:
            return t - d
        interval = min(interval * factor, cap)
