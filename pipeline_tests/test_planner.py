"""The local planner (plan_brief), plan_video with a brief, and the chunk plan of a beat."""

from __future__ import annotations

import math
import random
import re
import time
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.providers import get_provider
from pipeline.providers.local import LocalProvider, plan_brief
from pipeline.spec import MAX_PROMPT_CHARS, MIN_BEAT_S, load_spec, max_beats
from pipeline.store import Workspace
from pipeline.submissions import submit_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WATER = load_spec(EXAMPLES / "water-cycle.yaml")


def words(text: str) -> list[str]:
    """The words of ``text`` in order; "and" is left out (clause splitting drops a joining "and")."""
    return [w for w in re.findall(r"[\w'-]+", text.lower()) if w != "and"]


def check_plan(beats, duration_s: float, limit: int) -> None:
    durations = [b.duration_s for b in beats]
    assert sum(durations) == pytest.approx(duration_s, abs=1e-6), durations
    assert min(durations) >= MIN_BEAT_S, durations
    assert max(durations) <= 600, durations
    assert 1 <= len(beats) <= limit
    assert len(beats) <= math.floor(duration_s / MIN_BEAT_S + 1e-9)
    assert all(b.prompt.strip() for b in beats)


@pytest.mark.parametrize("duration", [45, 30, 60, 120, 5, 7, 10, 12.3, 17.25, 600])
def test_water_cycle_brief_fits_any_length(duration):
    beats = plan_brief(WATER.brief, duration_s=duration, max_beats=max_beats(duration))
    check_plan(beats, duration, max_beats(duration))
    # Nothing of the brief is lost or reordered (pieces are sentences, clauses or merges of them).
    assert words(" ".join(b.prompt for b in beats)) == words(WATER.brief)


def test_water_cycle_at_its_own_length():
    beats = plan_brief(WATER.brief, duration_s=45, max_beats=WATER.max_beats)
    check_plan(beats, 45, 9)
    assert len(beats) == 5  # one beat per sentence: enough for 45 s at <= 15 s each
    assert beats[0].prompt.startswith("The sun heats oceans")
    assert beats[-1].prompt.endswith("before the cycle begins again.")
    assert all(b.motion for b in beats)
    # Longer sentences get longer beats.
    by_words = sorted(beats, key=lambda b: len(b.prompt.split()))
    assert by_words[0].duration_s <= by_words[-1].duration_s


def test_durations_are_in_half_second_steps_except_the_remainder():
    beats = plan_brief(WATER.brief, duration_s=47.3, max_beats=max_beats(47.3))
    for b in beats[:-1]:
        assert (b.duration_s * 2) == int(b.duration_s * 2)
    assert sum(b.duration_s for b in beats) == pytest.approx(47.3, abs=1e-6)


LONG_SENTENCE = ("The knight rides across the frozen plain, the wind howls through the pines, "
                 "wolves gather at the edge of the forest, and the castle gates open at last.")


def test_a_long_sentence_is_split_at_clauses_when_beats_are_too_few():
    beats = plan_brief(LONG_SENTENCE, duration_s=60, max_beats=12)
    check_plan(beats, 60, 12)
    assert len(beats) == 4  # 60 s needs >= 4 beats of <= 15 s; the sentence has 4 clauses
    assert beats[0].prompt == "The knight rides across the frozen plain"
    assert beats[1].prompt == "the wind howls through the pines"
    assert beats[3].prompt == "the castle gates open at last."
    assert words(" ".join(b.prompt for b in beats)) == words(LONG_SENTENCE)
    assert max(b.duration_s for b in beats) <= 17


def test_clause_splitting_stops_at_the_needed_count():
    beats = plan_brief(LONG_SENTENCE, duration_s=30, max_beats=6)
    check_plan(beats, 30, 6)
    assert len(beats) == 2  # ceil(30 / 15): two halves of two clauses each
    assert beats[0].prompt == "The knight rides across the frozen plain, the wind howls through the pines"


def test_a_short_sentence_is_not_split_even_for_a_long_video():
    beats = plan_brief("A kite rises over a green hill.", duration_s=40, max_beats=8)
    assert [(b.prompt, b.duration_s) for b in beats] == [("A kite rises over a green hill.", 40.0)]


def test_many_short_sentences_are_merged_in_order():
    sentences = [f"Scene {i} happens." for i in range(20)]
    beats = plan_brief(" ".join(sentences), duration_s=30, max_beats=6)
    check_plan(beats, 30, 6)
    assert len(beats) == 6
    assert " ".join(b.prompt for b in beats) == " ".join(sentences)
    assert all(b.duration_s == 5 for b in beats)


def test_merging_respects_the_floor_of_duration_over_5_when_max_beats_is_larger():
    # 12 s: max_beats = 3 but only floor(12 / 5) = 2 beats of >= 5 s fit.
    beats = plan_brief("One. Two. Three. Four.", duration_s=12, max_beats=max_beats(12))
    check_plan(beats, 12, 3)
    assert len(beats) == 2


def test_max_beats_argument_caps_the_count():
    beats = plan_brief(WATER.brief, duration_s=120, max_beats=3)
    check_plan(beats, 120, 3)
    assert len(beats) == 3


def test_whitespace_and_newlines_in_the_brief_are_normalised():
    beats = plan_brief("  First   thing\n happens.\n\nSecond\tthing happens.  ", duration_s=20, max_beats=4)
    assert [b.prompt for b in beats] == ["First thing happens.", "Second thing happens."]


@pytest.mark.parametrize("brief", ["", "   ", "\n\t\n"])
def test_empty_brief_raises_value_error(brief):
    with pytest.raises(ValueError, match="empty"):
        plan_brief(brief, duration_s=30, max_beats=6)


def test_video_shorter_than_one_beat_raises_value_error():
    with pytest.raises(ValueError, match="shorter than one 5 s beat"):
        plan_brief("A kite.", duration_s=4, max_beats=1)


@pytest.mark.parametrize("duration", [601, 1199.9, 1200.5, 3600])
def test_very_long_video_from_a_short_brief_keeps_beats_within_600_s(duration):
    beats = plan_brief("A quiet sunrise over the sea. Gulls wheel overhead.", duration_s=duration,
                       max_beats=max_beats(duration))
    check_plan(beats, duration, max_beats(duration))


def test_random_briefs_always_satisfy_the_invariants():
    vocabulary = ("the sun rises over hills and rivers while birds sing, then clouds gather; "
                  "some rain falls as wind blows").split()
    rng = random.Random(7)
    planned = 0
    for trial in range(300):
        sentences = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 40))) + rng.choice(".!?")
                     for _ in range(rng.randint(1, 30))]
        duration = round(rng.uniform(5, 3600 if trial % 5 == 0 else 200), rng.choice([0, 1, 2]))
        brief = " ".join(sentences)
        try:
            beats = plan_brief(brief, duration_s=duration, max_beats=max_beats(duration))
        except ValueError as exc:  # only when some beat would need a prompt over the cap
            assert "too long" in str(exc) and len(brief) > MAX_PROMPT_CHARS, (len(brief), str(exc))
            continue
        check_plan(beats, duration, max_beats(duration))
        assert all(len(b.prompt) <= MAX_PROMPT_CHARS for b in beats)
        planned += 1
    assert planned >= 250


def _naive_merge(pieces: list[str], target: int) -> list[str]:
    """The planner's merge rule, written the obvious quadratic way: while there are too many
    pieces, join the neighbouring pair with the fewest words (the first such pair on ties)."""
    pieces = list(pieces)
    while len(pieces) > target:
        i = min(range(len(pieces) - 1), key=lambda k: len(pieces[k].split()) + len(pieces[k + 1].split()))
        pieces[i:i + 2] = [pieces[i] + " " + pieces[i + 1]]
    return pieces


def test_merging_matches_the_quadratic_rule_on_random_briefs():
    rng = random.Random(11)
    for _ in range(200):
        sentences = [" ".join("w" for _ in range(rng.randint(1, 12))) + "." for _ in range(rng.randint(2, 80))]
        duration = rng.choice([10, 30, 60, 120])
        limit = min(max_beats(duration), int(duration // MIN_BEAT_S))
        beats = plan_brief(" ".join(sentences), duration_s=duration, max_beats=max_beats(duration))
        expected = _naive_merge(sentences, limit) if len(sentences) > limit else None
        if expected is not None:
            assert [b.prompt for b in beats] == expected


@pytest.mark.timeout(120)
def test_a_ten_thousand_sentence_brief_plans_in_well_under_a_second():
    brief = " ".join(f"Scene {i} shows the {('red', 'blue', 'green')[i % 3]} kite over hill {i % 7}." for i in range(10_000))
    started = time.perf_counter()
    beats = plan_brief(brief, duration_s=3600, max_beats=max_beats(3600))
    seconds = time.perf_counter() - started
    check_plan(beats, 3600, 720)
    assert words(" ".join(b.prompt for b in beats)) == words(brief)
    # Measured 0.3 s here; the quadratic merge took over 20 s. 5 s leaves room for a loaded machine.
    assert seconds < 5, seconds


def test_a_brief_too_long_for_the_video_is_refused_not_cut():
    brief = " ".join(f"Sentence number {i} goes on for a while." for i in range(400))  # ~16,000 characters
    with pytest.raises(ValueError, match=r"too long for a 10 s video: beat 0 would have a [\d,]+-character prompt"):
        plan_brief(brief, duration_s=10, max_beats=2)
    beats = plan_brief(brief, duration_s=600, max_beats=max_beats(600))  # 120 beats: about 130 characters each
    assert max(len(b.prompt) for b in beats) <= MAX_PROMPT_CHARS


def test_local_provider_plan_beats_uses_the_planner():
    provider = LocalProvider()
    beats = provider.plan_beats(WATER.brief, duration_s=45, style="flat", max_beats=9)
    assert beats == plan_brief(WATER.brief, duration_s=45, max_beats=9)


def test_plan_video_plans_a_brief(tmp_path):
    submission, _ = submit_file(Workspace.at(tmp_path), EXAMPLES / "water-cycle.yaml")
    plan = stages.plan_video(submission, get_provider("local"))
    assert plan.planned_by.startswith("planner:")
    assert plan.planned_by == "planner:local/sentence-planner-v1"
    assert plan.truncation is None
    assert plan.duration_s == pytest.approx(45)
    starts, t = [], 0.0
    for b in plan.beats:
        starts.append(t)
        t += b.duration_s
    assert [b.start_s for b in plan.beats] == pytest.approx(starts)
    assert [b.index for b in plan.beats] == list(range(len(plan.beats)))
    assert 3 <= len(plan.beats) <= 9


# --- chunk_plan ----------------------------------------------------------------------------------

@pytest.mark.parametrize("duration, chunk", [(5, 5), (10, 5), (12.5, 5), (7, 5), (0.5, 5), (15, 5), (14.99, 5),
                                             (40, 5), (9, 4), (5.0000000001, 5), (6, 2.5)])
def test_chunk_plan(duration, chunk):
    plan = stages.chunk_plan(duration, chunk)
    expected = max(1, math.ceil(round(duration / chunk, 6)))
    assert len(plan) == expected
    assert [c.index for c in plan] == list(range(expected))
    assert plan[0].chunk_type == "reference_image"
    assert all(c.chunk_type == "continuous" for c in plan[1:])
    assert all(c.generate_s == chunk for c in plan)
    assert all(c.keep_s == pytest.approx(chunk) for c in plan[:-1])
    remainder = duration - chunk * (expected - 1)
    assert plan[-1].keep_s == pytest.approx(remainder, abs=1e-6)
    assert 0 < plan[-1].keep_s <= chunk
    assert sum(c.keep_s for c in plan) == pytest.approx(duration, abs=1e-6)


def test_chunk_plan_of_a_ten_second_beat():
    plan = stages.chunk_plan(10, 5)
    assert [(c.chunk_type, c.keep_s) for c in plan] == [("reference_image", 5), ("continuous", 5)]


@pytest.mark.parametrize("duration, chunk", [(0, 5), (-1, 5), (5, 0), (5, -2)])
def test_chunk_plan_rejects_non_positive_lengths(duration, chunk):
    with pytest.raises(ValueError):
        stages.chunk_plan(duration, chunk)
