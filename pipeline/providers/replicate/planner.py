"""The planner: a brief split into beats by an LLM on Replicate, answered as JSON and validated.

``plan_beats`` asks once, validates with BeatSpec, and on an invalid answer asks once more with the
problem quoted (a second paid call); ``parse_beats`` reads and rescales the answer. The call itself
(``run_text``) goes through the provider's ledger protocol like every paid call.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Callable

from pipeline.providers.base import ProviderError
from pipeline.spec import MIN_BEAT_S, BeatSpec

log = logging.getLogger("pipeline.providers.replicate")

PLANNER_SYSTEM = ("You are a film editor. You split a narration brief into storyboard beats and answer with "
                  "JSON only: no prose, no code fences.")


def planner_prompt(brief: str, *, duration_s: float, style: str | None, max_beats: int,
                   problem: str | None = None) -> str:
    """The planner's prompt. The brief sits between ``<<<`` and ``>>>`` lines."""
    low = min(max_beats, max(1, math.ceil(duration_s / 15.0)))
    text = (
        f"Split the brief below into between {low} and {max_beats} beats for a {duration_s:g}-second video"
        + (f" in this style: {style}" if style else "") + ".\n"  # no style: the sentence ends at "video"
        f"Rules: keep the brief's order; every beat lasts at least {MIN_BEAT_S:g} seconds; the durations add up to "
        f"exactly {duration_s:g} seconds; each prompt says what is on screen in one or two sentences; "
        "motion is a short camera direction.\n"
        'Answer with only this JSON object: {"beats": [{"prompt": "...", "duration_s": 7.5, "motion": "slow push-in"}]}\n'
        f"BRIEF:\n<<<\n{brief.strip()}\n>>>"
    )
    if problem:
        text += f"\nYour previous answer was rejected: {problem}. Answer again with only the JSON object."
    return text


def parse_beats(text: str, *, duration_s: float, max_beats: int) -> list[BeatSpec]:
    """Beats from the planner's answer: a JSON object ``{"beats": [...]}`` or a JSON list, possibly
    inside code fences. Each item is validated with BeatSpec (prompt, duration_s, motion); durations
    are rescaled to sum to ``duration_s`` (0.5 s steps, at least MIN_BEAT_S each).
    Raises ValueError saying what is wrong."""
    s = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text.strip())
    starts = [i for i in (s.find("{"), s.find("[")) if i >= 0]
    if not starts:
        raise ValueError("the answer contains no JSON")
    start = min(starts)
    end = max(s.rfind("}"), s.rfind("]"))
    try:
        data = json.loads(s[start:end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not valid JSON ({exc.msg} at character {exc.pos})") from None
    items = data.get("beats") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ValueError('expected {"beats": [...]} with at least one beat')
    if len(items) > max_beats:
        raise ValueError(f"{len(items)} beats, but a {duration_s:g} s video holds at most {max_beats}")
    if len(items) * MIN_BEAT_S > duration_s + 1e-9:
        raise ValueError(f"{len(items)} beats of at least {MIN_BEAT_S:g} s do not fit in {duration_s:g} s")
    beats = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"beat {i} is not an object")
        try:
            beats.append(BeatSpec.model_validate({k: item[k] for k in ("prompt", "duration_s", "motion") if k in item}))
        except Exception as exc:  # pydantic ValidationError
            first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
            raise ValueError(f"beat {i}: {'.'.join(map(str, first['loc'])) or 'item'}: {first['msg']}") from None
    total = sum(b.duration_s for b in beats)
    spare = duration_s - MIN_BEAT_S * len(beats)
    extra = [max(0.0, b.duration_s - MIN_BEAT_S) for b in beats]
    weights = extra if sum(extra) > 0 else [b.duration_s / total for b in beats]
    durations = [MIN_BEAT_S + math.floor(spare * w / sum(weights) * 2) / 2 for w in weights]
    durations[-1] = round(duration_s - sum(durations[:-1]), 6)
    return [BeatSpec(prompt=b.prompt, duration_s=d, motion=b.motion) for b, d in zip(beats, durations)]


def plan_beats(run_text: Callable[[str], str], brief: str, *, duration_s: float, style: str, max_beats: int,
               model_id: str) -> list[BeatSpec]:
    """Beats for ``brief`` from the planner LLM: ``run_text(prompt)`` returns its answer. Invalid
    JSON or beats get one corrective retry (a second paid call); a second failure raises
    ProviderError (not retryable) quoting the problem and the start of the answer."""
    problem: str | None = None
    text = ""
    for _ in range(2):
        text = run_text(planner_prompt(brief, duration_s=duration_s, style=style, max_beats=max_beats,
                                       problem=problem))
        try:
            return parse_beats(text, duration_s=duration_s, max_beats=max_beats)
        except ValueError as exc:
            problem = str(exc)
            log.warning("planner %s returned unusable beats: %s", model_id, problem)
    raise ProviderError(f"planner {model_id} returned invalid beats twice: {problem}. "
                        f"Last answer began: {text[:200]!r}", retryable=False)
