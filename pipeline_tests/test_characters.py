"""Consistent characters (issue 13), rendered through Dagster with the local provider and with the
replicate provider against the fake server:

- the ``characters`` asset makes one reference per character: generated from the description, or
  the user's image ingested as it is;
- every storyboard of a beat naming a character was generated from that character's reference:
  its request's ``character:<name>`` input is the reference's sha256, so its cache key says so
  (recomputed here), and the reference model got exactly those images (the fake server decodes them);
- the local provider draws each character the same way on every card (the same badge pixels);
- changing one character's description re-renders exactly the beats that name it, and a per-beat
  seed re-rolls one beat alone: counted as provider calls (the local provider's logged calls, the
  fake server's paid creates), the other beats' cache keys unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import stages
from pipeline.defs.io_manager import read_manifest
from pipeline.generation import read_call_log
from pipeline.manifests import CharactersManifest, StoryboardManifest
from pipeline.providers.local_characters import badge_box, badge_image, badge_size
from pipeline.store import Workspace
from pipeline_tests.fake_replicate.render import decode_image_input

HARE = "a tall grey hare with a red scarf"
TORTOISE = "a small green tortoise with a brown shell"
BEATS = [{"prompt": "The hare laughs at the finish line", "duration_s": 4},
         {"prompt": "A quiet meadow at dawn", "duration_s": 4, "motion": "slow pan"},
         {"prompt": "The tortoise passes the sleeping hare", "duration_s": 4}]
NAMED = {"000": ["Hare"], "001": [], "002": ["Hare", "Tortoise"]}


def write_spec(folder: Path, video_id: str, *, hare: str = HARE, beats=BEATS, **extra) -> Path:
    if not (folder / "tortoise.png").exists():
        img = Image.new("RGB", (200, 160), (250, 250, 245))
        img.paste((40, 140, 60), (60, 40, 140, 120))
        img.paste((120, 80, 40), (80, 50, 120, 80))
        img.save(folder / "tortoise.png")
    path = folder / f"{video_id}.yaml"
    path.write_text(yaml.safe_dump({
        "video_id": video_id, "title": "Race", "duration_s": 12, "aspect_ratio": "16:9", "style": "flat test card",
        "music": {"prompt": "test tune", "bpm": 100},
        "characters": {"Hare": {"description": hare},
                       "Tortoise": {"description": TORTOISE, "reference_image": "tortoise.png"}},
        "beats": beats, **extra}, sort_keys=False))
    return path


def manifests(env, video_id: str):
    base = env.data_dir / "manifests"
    cast = read_manifest(base, "characters", video_id)
    boards = {seg: read_manifest(base, "storyboard_images", f"{seg}|{video_id}") for seg in NAMED}
    assert isinstance(cast, CharactersManifest) and all(isinstance(b, StoryboardManifest) for b in boards.values())
    return cast, boards


def check_storyboards_come_from_references(env, report, cast, boards):
    """Every storyboard of a beat naming characters records their references in its request, and
    its cache key is that request's."""
    pipeline = env.defs.resources["pipeline"]
    provider = pipeline.provider(report.plan.provider, report.plan.models)
    for seg, names in NAMED.items():
        board = boards[seg]
        assert list(board.references) == names
        refs = {n: cast.references[n].image for n in names}
        assert {n: m.sha256 for n, m in board.references.items()} == {n: m.sha256 for n, m in refs.items()}
        beat = stages.plan_beat(report.plan, report.plan.beats[int(seg)], provider)
        assert beat.characters == {n: cast.references[n].image.cache_key for n in names}
        request = stages.storyboard_request(beat, provider, refs)
        assert request.inputs == {f"character:{n}": refs[n].sha256 for n in names}
        assert request.cache_key() == board.image.cache_key  # the cache key shows which references made it
        assert request.model == (stages.reference_model(provider) if names else provider.image_model)
        for n in names:  # and it changes with the reference
            other = {**refs, n: refs[n].model_copy(update={"sha256": "0" * 64})}
            assert stages.storyboard_request(beat, provider, other).cache_key() != board.image.cache_key
    return provider


def calls_since(workspace: Workspace, start: int, provider: str) -> list[tuple[str, str]]:
    """(stage, segment or character) of each provider call logged after the first ``start`` lines."""
    return sorted((c["stage"], c.get("segment") or c.get("character", "")) for c in read_call_log(workspace)[start:]
                  if c["provider"] == provider)


def test_local_characters_are_drawn_consistently_and_a_changed_one_rerenders_only_its_beats(env, tmp_path):
    report = env.render(write_spec(tmp_path, "race"), max_parallel=2)
    assert report.final is not None, [r.error for r in report.failed]
    cast, boards = manifests(env, "race")
    check_storyboards_come_from_references(env, report, cast, boards)
    pipeline = env.defs.resources["pipeline"]
    path = pipeline.generator.local_path

    # The references: Hare generated from its description, Tortoise the user's image as it is.
    assert {n: r.source for n, r in cast.references.items()} == {"Hare": "generated", "Tortoise": "user"}
    with Image.open(path(cast.references["Tortoise"].image)) as im, Image.open(tmp_path / "tortoise.png") as user:
        assert im.format == "PNG" and np.array_equal(np.asarray(im.convert("RGB")), np.asarray(user.convert("RGB")))

    # Every card of a beat naming a character shows the same badge of its reference, pixel for pixel.
    cards = {seg: np.asarray(Image.open(path(b.image)).convert("RGB")) for seg, b in boards.items()}
    width, height = report.plan.width, report.plan.height
    side, _ = badge_size(width, height)
    for name in cast.references:
        badge = np.asarray(badge_image(path(cast.references[name].image), name, side))
        holders = [seg for seg, names in NAMED.items() if name in names]
        for seg in holders:
            x0, y0, x1, y1 = badge_box(NAMED[seg].index(name), width, height)
            assert np.array_equal(cards[seg][y0:y1, x0:x1], badge), (name, seg)
    x0, y0, x1, y1 = badge_box(0, width, height)
    hare_badge = np.asarray(badge_image(path(cast.references["Hare"].image), "Hare", side))
    assert not np.array_equal(cards["001"][y0:y1, x0:x1], hare_badge)  # the meadow has no character

    # The cost table has a line per reference (free here), before the segments'.
    items = [line.item for line in report.final.costs]
    assert items[:2] == ["character reference Hare", "character reference Tortoise"]

    # Hare's new description: its reference, and the storyboards and chunks of beats 000 and 002 only.
    work = Workspace(env.data_dir)
    start = len(read_call_log(work))
    again = env.render(write_spec(tmp_path, "race", hare="a short brown hare in a blue coat"), max_parallel=2)
    assert again.final is not None, [r.error for r in again.failed]
    assert calls_since(work, start, "local") == [("characters", "Hare"), ("chunk_videos", "000"), ("chunk_videos", "002"),
                                                 ("storyboard_images", "000"), ("storyboard_images", "002")]
    cast2, boards2 = manifests(env, "race")
    assert cast2.references["Tortoise"].image.cache_key == cast.references["Tortoise"].image.cache_key
    assert cast2.references["Hare"].image.cache_key != cast.references["Hare"].image.cache_key
    assert boards2["001"].image.cache_key == boards["001"].image.cache_key
    assert all(boards2[s].image.cache_key != boards[s].image.cache_key for s in ("000", "002"))


FLUX, SEEDREAM, WAN = "black-forest-labs/flux-schnell", "bytedance/seedream-4", "wan-video/wan-2.2-i2v-fast"


def creates(server) -> dict[str, int]:
    return {m: server.create_count(model=m) for m in (FLUX, SEEDREAM, WAN)}


def test_replicate_storyboards_are_made_from_the_references_and_reroll_per_beat(replicate_env, tmp_path):
    env, server = replicate_env
    report = env.render(write_spec(tmp_path, "race-rep"), provider="replicate", max_parallel=2)
    assert report.final is not None, [r.error for r in report.failed]
    cast, boards = manifests(env, "race-rep")
    provider = check_storyboards_come_from_references(env, report, cast, boards)
    assert provider.reference_image_model == SEEDREAM and provider.image_model == FLUX
    # Paid creates: Hare's reference and the meadow's storyboard (flux), the two character beats' storyboards
    # from their references (seedream), one 5 s chunk per 4 s beat (wan); Tortoise is the user's image (free).
    assert creates(server) == {FLUX: 2, SEEDREAM: 2, WAN: 3}
    assert {n: r.source for n, r in cast.references.items()} == {"Hare": "generated", "Tortoise": "user"}

    # The reference model got exactly the references, in the beat's order (data URI or uploaded file).
    want = {tuple(cast.references[n].image.sha256 for n in names) for names in NAMED.values() if names}
    got = set()
    for inp in server.inputs(SEEDREAM):
        work = tmp_path / f"decoded-{len(got)}"
        work.mkdir()
        shas = []
        for i, item in enumerate(inp["image_input"]):
            (work / str(i)).mkdir()
            shas.append(hashlib.sha256(decode_image_input(server, item, work / str(i)).read_bytes()).hexdigest())
        got.add(tuple(shas))
    assert got == want

    # The references are paid lines of the cost table; the ledger agrees with the table.
    lines = {line.item: line for line in report.final.costs}
    assert lines["character reference Hare"].paid_usd == pytest.approx(0.003)
    assert lines["character reference Tortoise"].paid_usd == 0 and lines["character reference Tortoise"].provider == "spec"
    assert sum(1 for line in report.final.costs if line.model == SEEDREAM and line.paid_usd == pytest.approx(0.03)) == 2

    # Hare's description changes: its reference and beats 000 and 002 are bought again, nothing else.
    before = creates(server)
    again = env.render(write_spec(tmp_path, "race-rep", hare="a short brown hare in a blue coat"),
                       provider="replicate", max_parallel=2)
    assert again.final is not None, [r.error for r in again.failed]
    assert {m: creates(server)[m] - before[m] for m in before} == {FLUX: 1, SEEDREAM: 2, WAN: 2}
    cast2, boards2 = manifests(env, "race-rep")
    assert boards2["001"].image.cache_key == boards["001"].image.cache_key

    # A seed on beat 001 re-rolls that beat alone: one storyboard and its chunk; the others' keys stay.
    before = creates(server)
    beats = [dict(BEATS[0]), {**BEATS[1], "seed": 12345}, dict(BEATS[2])]
    third = env.render(write_spec(tmp_path, "race-rep", hare="a short brown hare in a blue coat", beats=beats),
                       provider="replicate", max_parallel=2)
    assert third.final is not None, [r.error for r in third.failed]
    assert {m: creates(server)[m] - before[m] for m in before} == {FLUX: 1, SEEDREAM: 0, WAN: 1}
    cast3, boards3 = manifests(env, "race-rep")
    assert boards3["001"].image.cache_key != boards2["001"].image.cache_key and boards3["001"].image.seed == 12345
    assert all(boards3[s].image.cache_key == boards2[s].image.cache_key for s in ("000", "002"))
    chunks2 = {cv.index: [c.video.cache_key for c in cv.chunks] for cv in again.chunk_sets}
    chunks3 = {cv.index: [c.video.cache_key for c in cv.chunks] for cv in third.chunk_sets}
    assert chunks3[0] == chunks2[0] and chunks3[2] == chunks2[2] and chunks3[1] != chunks2[1]


def test_a_reference_bigger_than_a_data_uri_is_uploaded_once(replicate_env, tmp_path):
    env, server = replicate_env
    rng = np.random.default_rng(5)  # noise: a PNG far over 256 KB
    Image.fromarray(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(tmp_path / "tortoise.png")
    beats = [{"prompt": "The tortoise walks", "duration_s": 5}, {"prompt": "The tortoise rests", "duration_s": 5}]
    report = env.render(write_spec(tmp_path, "noisy", beats=beats, duration_s=10), provider="replicate")
    assert report.final is not None, [r.error for r in report.failed]
    ref = read_manifest(env.data_dir / "manifests", "characters", "noisy").references["Tortoise"].image
    assert ref.bytes > 256 << 10
    assert server.stats()["uploads_by_sha256"].get(ref.sha256) == 1  # two storyboards, one upload
    for inp in server.inputs(SEEDREAM):
        [url] = inp["image_input"]
        assert url.startswith(server.base_url + "/v1/files/")
        assert hashlib.sha256(server.read_input_file(url)).hexdigest() == ref.sha256


def test_a_storyboard_run_makes_its_references_when_the_characters_asset_has_not(tmp_path):
    """The fan-out sensor may start a segment before its plan run's ``characters`` step is done:
    ``beat_references`` then makes the same cached references itself (and never uses another plan's)."""
    from pipeline import characters
    from pipeline.generation import Generator
    from pipeline.providers import get_provider
    from pipeline.spec import load_spec
    from pipeline.submissions import submit_spec

    work = Workspace(tmp_path / "data")
    sub, _ = submit_spec(work, load_spec(write_spec(tmp_path, "early")), source="test")
    provider, generator = get_provider("local"), Generator(work)
    plan = stages.plan_video(sub, provider)
    beat = stages.plan_beat(plan, plan.beats[2], provider)
    image_bytes = characters.registered_image_bytes(work, "early")
    made = characters.beat_references(plan, beat, None, provider, generator, image_bytes)  # no manifest yet
    assert {n: m.cache_key for n, m in made.items()} == beat.characters
    later = characters.render_references(plan, provider, generator, image_bytes)
    assert all(later.references[n].image.cache_hit and later.references[n].image.sha256 == m.sha256
               for n, m in made.items())  # the asset then finds them in the cache
    # A manifest of another plan (an older Hare) is not used: the beat's keys decide.
    other = later.model_copy(update={"references": {**later.references, "Hare": later.references["Hare"].model_copy(
        update={"image": later.references["Tortoise"].image})}})
    again = characters.beat_references(plan, beat, other, provider, generator, image_bytes)
    assert again["Hare"].sha256 == made["Hare"].sha256 != later.references["Tortoise"].image.sha256
