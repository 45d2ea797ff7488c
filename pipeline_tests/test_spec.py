"""Spec validation (pipeline.spec), beat truncation (stages.plan_video / record_truncation)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from pipeline import stages
from pipeline.providers import get_provider
from pipeline.spec import SHORTEST_BEAT_S, SpecError, VideoSpec, fit_beats, load_spec, load_spec_text, max_beats
from pipeline.store import Workspace
from pipeline.submissions import submit_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

VALID = {
    "video_id": "kite-day",
    "title": "A kite",
    "duration_s": 16,
    "aspect_ratio": "16:9",
    "style": "flat test card",
    "music": {"prompt": "simple tune", "bpm": 120},
    "beats": [
        {"prompt": "A red kite rises", "duration_s": 5},
        {"prompt": "The string snaps", "duration_s": 6, "motion": "slow lateral pan"},
        {"prompt": "A child waves goodbye", "duration_s": 5},
    ],
}


def write(tmp_path: Path, data, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def spec_error(tmp_path: Path, data) -> tuple[Path, SpecError]:
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return path, info.value


def edited(**changes) -> dict:
    data = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return data


def test_valid_spec_loads(tmp_path):
    spec = load_spec(write(tmp_path, VALID))
    assert spec.video_id == "kite-day"
    assert [b.duration_s for b in spec.beats] == [5, 6, 5]
    assert spec.resolution == (854, 480)


@pytest.mark.parametrize("name", ["too-many-beats.yaml", "tortoise-and-hare.yaml", "water-cycle.yaml"])
def test_every_example_spec_loads(name):
    spec = load_spec(EXAMPLES / name)
    assert isinstance(spec, VideoSpec)
    assert (spec.beats is None) != (spec.brief is None)


def test_example_specs_have_the_expected_shape():
    assert len(load_spec(EXAMPLES / "too-many-beats.yaml").beats) == 12
    tortoise = load_spec(EXAMPLES / "tortoise-and-hare.yaml")
    assert (tortoise.video_id, tortoise.duration_s, len(tortoise.beats)) == ("tortoise-and-hare", 40, 6)
    water = load_spec(EXAMPLES / "water-cycle.yaml")
    assert water.beats is None and water.brief.startswith("The sun heats oceans")


# --- one rule at a time; every message names the file and the field --------------------------------

def test_unknown_top_level_field_is_named(tmp_path):
    path, err = spec_error(tmp_path, edited(colour="red"))
    assert str(path) in str(err)
    assert err.problems == [err.problems[0]] and err.problems[0].startswith("colour: ")
    assert "unknown field" in err.problems[0]


def test_unknown_nested_field_is_named_with_its_path(tmp_path):
    data = edited()
    data["beats"][1]["camera"] = "push"
    data["music"]["tempo"] = 90
    path, err = spec_error(tmp_path, data)
    text = str(err)
    assert str(path) in text
    assert "beats[1].camera: unknown field" in text
    assert "music.tempo: unknown field" in text
    assert len(err.problems) == 2


@pytest.mark.parametrize("video_id", [
    "Kite-Day",            # uppercase
    "a" * 64,              # too long (63 max)
    "-kite",               # leading dash
    "kite|day",            # Dagster multi-partition separator
    "kite,day",            # Dagster partition list separator
    "kite[1]",
    "kite_day",
    "kite day",
    "kite\n",
    "",
])
def test_bad_video_id_is_rejected_with_the_rule(tmp_path, video_id):
    path, err = spec_error(tmp_path, edited(video_id=video_id))
    assert str(path) in str(err)
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.startswith("video_id: ")
    assert repr(video_id) in problem
    assert "not a valid video_id" in problem and "lowercase" in problem and "1-63" in problem


@pytest.mark.parametrize("video_id", ["a", "0", "kite-day-2", "a" * 63, "x-"])
def test_good_video_ids_pass(tmp_path, video_id):
    assert load_spec(write(tmp_path, edited(video_id=video_id))).video_id == video_id


def test_both_beats_and_brief_is_rejected(tmp_path):
    path, err = spec_error(tmp_path, edited(brief="A kite flies."))
    assert str(path) in str(err)
    assert len(err.problems) == 1
    assert "exactly one of 'beats'" in err.problems[0] and "'brief'" in err.problems[0]


def test_neither_beats_nor_brief_is_rejected(tmp_path):
    path, err = spec_error(tmp_path, edited(beats=...))
    assert str(path) in str(err)
    assert len(err.problems) == 1
    assert "exactly one of 'beats'" in err.problems[0] and "'brief'" in err.problems[0]


def test_empty_beats_list_is_rejected(tmp_path):
    path, err = spec_error(tmp_path, edited(beats=[]))
    assert str(path) in str(err) and err.problems[0].startswith("beats: ")


@pytest.mark.parametrize("ratio", ["4:3", "16:10", "16x9", "9:16 "])
def test_aspect_ratio_must_be_one_of_three(tmp_path, ratio):
    path, err = spec_error(tmp_path, edited(aspect_ratio=ratio))
    assert str(path) in str(err)
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.startswith("aspect_ratio: ")
    assert "'16:9'" in problem and "'9:16'" in problem and "'1:1'" in problem


@pytest.mark.parametrize("ratio", ["16:9", "9:16", "1:1"])
def test_each_allowed_aspect_ratio_loads(tmp_path, ratio):
    spec = load_spec(write(tmp_path, edited(aspect_ratio=ratio)))
    w, h = spec.resolution
    assert w % 2 == 0 and h % 2 == 0
    assert (w > h, w == h) == (ratio == "16:9", ratio == "1:1")


@pytest.mark.parametrize("value, shown", [(0, "the integer 0"), (-1, "the integer -1"), (-0.5, "the number -0.5"),
                                          (0.05, "the number 0.05"), (1e-300, "the number 1e-300")])
def test_video_duration_must_be_at_least_a_tenth_of_a_second(tmp_path, value, shown):
    path, err = spec_error(tmp_path, edited(duration_s=value))
    assert str(path) in str(err)
    assert err.problems == [f"duration_s: Input should be greater than or equal to {SHORTEST_BEAT_S} "
                            f"({SHORTEST_BEAT_S} s is one frame at the lowest supported frame rate), got {shown}"]


@pytest.mark.parametrize("value", [0, -1, 1e-300, 0.0999])
def test_beat_shorter_than_one_frame_is_rejected_and_names_the_beat(tmp_path, value):
    data = edited()
    data["beats"][2]["duration_s"] = value
    path, err = spec_error(tmp_path, data)
    assert str(path) in str(err)
    [problem] = err.problems
    assert problem.startswith("beats[2].duration_s: Input should be greater than or equal to 0.1 (0.1 s is one frame")


def test_a_beat_of_one_tenth_of_a_second_is_valid(tmp_path):
    data = edited()
    data["beats"][2]["duration_s"] = SHORTEST_BEAT_S
    assert load_spec(write(tmp_path, data)).beats[2].duration_s == SHORTEST_BEAT_S
    assert 1 / SHORTEST_BEAT_S <= 16  # one frame at 16 fps (Wan, the lowest supported rate) or more


@pytest.mark.parametrize("bpm, bound", [(19, "greater than or equal to 20"), (0, "greater than or equal to 20"),
                                        (301, "less than or equal to 300")])
def test_bpm_out_of_range(tmp_path, bpm, bound):
    data = edited()
    data["music"]["bpm"] = bpm
    path, err = spec_error(tmp_path, data)
    assert str(path) in str(err)
    assert err.problems == [f"music.bpm: Input should be {bound}"]


@pytest.mark.parametrize("bpm", [20, 300])
def test_bpm_bounds_are_inclusive(tmp_path, bpm):
    data = edited()
    data["music"]["bpm"] = bpm
    assert load_spec(write(tmp_path, data)).music.bpm == bpm


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_beat_prompt_is_rejected(tmp_path, prompt):
    data = edited()
    data["beats"][1]["prompt"] = prompt
    path, err = spec_error(tmp_path, data)
    assert str(path) in str(err)
    assert len(err.problems) == 1 and err.problems[0].startswith("beats[1].prompt: ")
    assert "at least 1 character" in err.problems[0]


def test_empty_music_prompt_is_rejected(tmp_path):
    data = edited()
    data["music"]["prompt"] = ""
    path, err = spec_error(tmp_path, data)
    assert str(path) in str(err)
    assert len(err.problems) == 1 and err.problems[0].startswith("music.prompt: ")


def test_every_problem_is_reported_at_once(tmp_path):
    data = edited(aspect_ratio="4:3", video_id="Bad")
    data["music"]["bpm"] = 5
    data["beats"][0]["duration_s"] = -2
    path, err = spec_error(tmp_path, data)
    fields = sorted(p.split(":")[0] for p in err.problems)
    assert fields == ["aspect_ratio", "beats[0].duration_s", "music.bpm", "video_id"]
    for problem in err.problems:
        assert problem in str(err)
    assert str(err).startswith(f"{path}: invalid spec:")


def test_yaml_syntax_error_names_the_line(tmp_path):
    text = "video_id: kite\ntitle: t\nduration_s: 10\nmusic: {prompt: x, bpm: 20\nstyle: s\n"
    path, err = spec_error(tmp_path, text)
    assert str(path) in str(err)
    assert len(err.problems) == 1
    assert "not valid YAML/JSON at line 5" in err.problems[0]


def test_yaml_indentation_error_names_its_line(tmp_path):
    text = "video_id: kite\ntitle: t\nduration_s: 10\n  aspect_ratio: '16:9'\n"
    path, err = spec_error(tmp_path, text)
    assert str(path) in str(err) and "at line 4" in err.problems[0]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_rejected(tmp_path, text):
    path, err = spec_error(tmp_path, text)
    assert str(path) in str(err)
    assert err.problems == ["the file is empty"]


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "a list of 2"), ("just words\n", "text"),
                                        ("42\n", "the integer 42")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    path, err = spec_error(tmp_path, text)
    assert str(path) in str(err)
    assert err.problems == [f"expected a mapping of spec fields at the top level, got {kind}"]
    assert "just words" not in str(err)  # a whole file's text is never echoed


def test_json_spec_loads_too(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(VALID))
    assert load_spec(path).video_id == "kite-day"


def test_load_spec_text_uses_the_given_source():
    with pytest.raises(SpecError) as info:
        load_spec_text("video_id: x\n", "inbox/x.yaml")
    assert str(info.value).startswith("inbox/x.yaml: invalid spec:")
    assert info.value.source == "inbox/x.yaml"


# --- beat count and truncation -----------------------------------------------------------------

@pytest.mark.parametrize("duration, expected", [
    (30, 6), (32, 7), (35, 7), (35.01, 8), (5, 1), (4, 1), (0.5, 1), (5.01, 2), (10, 2), (40, 8), (3600, 720),
])
def test_max_beats_is_ceil_of_duration_over_5(duration, expected):
    assert max_beats(duration) == expected


def test_spec_max_beats_property(tmp_path):
    assert load_spec(EXAMPLES / "too-many-beats.yaml").max_beats == 6
    assert load_spec(write(tmp_path, edited(duration_s=32))).max_beats == 7


def test_fit_beats_keeps_the_first_beats_and_records_the_rest():
    spec = load_spec(EXAMPLES / "too-many-beats.yaml")
    kept, truncation = fit_beats(spec.beats, spec.duration_s)
    assert kept == spec.beats[:6]
    assert (truncation.original_count, truncation.truncated_count) == (12, 6)
    assert truncation.dropped_prompts == [b.prompt for b in spec.beats[6:]]
    same, none = fit_beats(spec.beats[:6], 30)
    assert same == spec.beats[:6] and none is None


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.at(tmp_path / "data")


def test_plan_video_truncates_too_many_beats_to_six(workspace):
    submission, changed = submit_file(workspace, EXAMPLES / "too-many-beats.yaml")
    assert changed
    plan = stages.plan_video(submission, get_provider("local"))
    assert len(plan.beats) == 6
    assert [b.index for b in plan.beats] == list(range(6))
    assert [b.start_s for b in plan.beats] == [0, 5, 10, 15, 20, 25]
    assert plan.beats[0].prompt == "Dawn breaks over a quiet skyline"
    assert plan.beats[-1].prompt == "A street market bustles at noon"
    assert plan.truncation is not None
    assert (plan.truncation.original_count, plan.truncation.truncated_count) == (12, 6)
    assert plan.duration_s == 30 and plan.target_duration_s == 30
    assert plan.segment_keys == ["000", "001", "002", "003", "004", "005"]
    assert plan.planned_by == "spec"
    assert (plan.width, plan.height) == (480, 854)  # 9:16
    assert "12 beats" in stages.truncation_message(plan, plan.truncation)


def test_plan_video_start_times_follow_mixed_durations(workspace):
    submission, _ = submit_file(workspace, EXAMPLES / "tortoise-and-hare.yaml")
    plan = stages.plan_video(submission, get_provider("local"))
    assert [b.start_s for b in plan.beats] == [0, 5, 10, 20, 25, 35]
    assert plan.duration_s == 40 and plan.truncation is None


def _log_lines(workspace: Workspace) -> list[dict]:
    path = workspace.logs / "beat_truncation.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_record_truncation_appends_one_json_line_per_call(workspace):
    submission, _ = submit_file(workspace, EXAMPLES / "too-many-beats.yaml")
    plan = stages.plan_video(submission, get_provider("local"))
    path = stages.record_truncation(workspace, plan)
    assert path == workspace.logs / "beat_truncation.log"
    lines = _log_lines(workspace)
    assert len(lines) == 1
    assert set(lines[0]) == {"timestamp", "video_id", "original_count", "truncated_count"}
    assert lines[0]["video_id"] == "city-timelapse"
    assert (lines[0]["original_count"], lines[0]["truncated_count"]) == (12, 6)
    assert lines[0]["timestamp"].endswith("+00:00")

    stages.record_truncation(workspace, plan)
    assert len(_log_lines(workspace)) == 2
    assert len(path.read_text().splitlines()) == 2


def test_record_truncation_writes_nothing_without_truncation(workspace):
    submission, _ = submit_file(workspace, EXAMPLES / "tortoise-and-hare.yaml")
    plan = stages.plan_video(submission, get_provider("local"))
    assert stages.record_truncation(workspace, plan) is None
    assert not (workspace.logs / "beat_truncation.log").exists()
