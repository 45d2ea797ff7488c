"""Characters and per-beat seeds in specs (issue 13): validation with messages naming the field,
which beats name which characters, reference image files read with a spec file's safety rules and
carried in the spec, fingerprints of older specs unchanged, and ``pipeline submit`` carrying the
images into the inbox copy."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.spec import SpecError, load_spec, parse_spec
from pipeline.spec_characters import (MAX_REFERENCE_IMAGE_BYTES, ReferenceImage, beat_characters,
                                      check_reference_image)
from pipeline_tests.conftest import EXAMPLES

BASE = {"video_id": "cast", "title": "t", "duration_s": 15, "aspect_ratio": "16:9", "style": "ink",
        "music": {"prompt": "m", "bpm": 90}}
HARE = {"description": "a tall grey hare with a red scarf"}


def spec(**extra):
    return parse_spec({**BASE, "beats": [{"prompt": "The hare naps", "duration_s": 5}], **extra})


def problems(**extra) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec(**extra)
    return info.value.problems


def png(path: Path, size=(64, 48), colour=(200, 30, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def write(folder: Path, characters: dict, beats=None) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "characters": characters,
                                    "beats": beats or [{"prompt": "The hare naps", "duration_s": 5}]}))
    return path


@pytest.mark.parametrize("prompt, listed, named", [
    ("The Hare's nap", None, ["Hare"]), ("HARE and tortoise", None, ["Hare", "Tortoise"]),
    ("Two hares share a carrot", None, []), ("A share of hare-brained ideas", None, ["Hare"]),
    ("The old   owl hoots", None, ["Old Owl"]), ("An owl", None, []),
    ("The hare and the tortoise", [], []), ("A meadow", ["tortoise"], ["Tortoise"]),
])
def test_a_beat_names_a_character_by_whole_words_or_its_exact_list(prompt, listed, named):
    cast = {"Hare": 1, "Tortoise": 2, "Old Owl": 3}
    assert beat_characters(prompt, listed, cast) == named


@pytest.mark.parametrize("extra, message", [
    ({"characters": {"Hare": HARE, "hare": HARE}}, "characters: names differ only in case"),
    ({"characters": {"9lives": HARE}}, "characters.9lives: '9lives' is not a valid character name"),
    ({"characters": {}}, "characters: a spec describes 1-10 characters, got 0"),
    ({"characters": {f"C{chr(97 + i)}": HARE for i in range(11)}}, "characters: a spec describes 1-10 characters, got 11"),
    ({"characters": {"Hare": {"description": ""}}}, "characters.Hare.description: String should have at least 1"),
    ({"characters": {"Hare": {"description": "x" * 1001}}}, "characters.Hare.description: String should have at most 1000"),
    ({"characters": {"Hare": {**HARE, "colour": "red"}}}, "characters.Hare.colour: unknown field"),
    ({"characters": {"Hare": {**HARE, "reference_image": "../hare.png"}}}, "leaves the spec's folder"),
    ({"characters": {"Hare": {**HARE, "reference_image": "/etc/passwd"}}}, "is an absolute path"),
    ({"characters": {"Hare": {**HARE, "reference_image": 5}}}, "should be the path of a PNG or JPEG file"),
    ({"characters": {"Hare": {**HARE, "reference_image": {"file": "a.png", "media_type": "image/png",
                                                          "sha256": "0" * 64, "data": "AAAA"}}}},
     "does not match its sha256"),
    ({"characters": {"Hare": HARE}, "beats": [{"prompt": "x", "duration_s": 5, "characters": ["Owl"]}]},
     "beats[0].characters: 'Owl' is not a character of this spec (defined: 'Hare')"),
    ({"beats": [{"prompt": "x", "duration_s": 5, "seed": -1}]}, "beats[0].seed: Input should be greater than or equal"),
    ({"beats": [{"prompt": "x", "duration_s": 5, "seed": True}]}, "beats[0].seed: should be a whole number"),
    ({"beats": [{"prompt": "x", "duration_s": 5, "seed": 2**31}]}, "beats[0].seed: Input should be less than"),
])
def test_character_and_seed_problems_name_the_field(extra, message):
    assert any(message in p for p in problems(**extra)), problems(**extra)


def test_older_specs_keep_their_fingerprint():
    # Values computed before characters and per-beat seeds existed: unset optional fields do not count.
    assert load_spec(EXAMPLES / "tortoise-and-hare.yaml").fingerprint() == \
        "3b428f58fa19b59b433fb2090314035fa32c3b059e96994cb572d5b42a81f7d7"
    assert load_spec(EXAMPLES / "replicate" / "fox-in-snow.yaml").fingerprint() == \
        "6d5213e5eaf79e69323ae2e861c007447f8967689a0a1b3dc184044cd47fbcac"
    plain = spec()
    assert spec(beats=[{"prompt": "The hare naps", "duration_s": 5, "seed": 3}]).fingerprint() != plain.fingerprint()
    assert spec(characters={"Hare": HARE}).fingerprint() != plain.fingerprint()


def test_a_reference_image_is_read_from_the_spec_folder_and_carried_in_the_spec(tmp_path):
    (tmp_path / "refs").mkdir()
    data = png(tmp_path / "refs" / "hare.png")
    loaded = load_spec(write(tmp_path, {"Hare": {**HARE, "reference_image": "refs/hare.png"}}))
    ref = loaded.characters["Hare"].reference_image
    assert isinstance(ref, ReferenceImage) and ref.file == "refs/hare.png" and ref.media_type == "image/png"
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.image_bytes() == data
    # The registered form round-trips (a run on another machine needs only the registry entry).
    again = parse_spec(loaded.model_dump(mode="json", exclude_none=True))
    assert again == loaded and again.fingerprint() == loaded.fingerprint()
    # A changed image is a new version of the spec.
    png(tmp_path / "refs" / "hare.png", colour=(10, 200, 10))
    assert load_spec(tmp_path / "spec.yaml").fingerprint() != loaded.fingerprint()
    # JPEG is fine too.
    png(tmp_path / "hare.jpg", fmt="JPEG")
    jpeg = load_spec(write(tmp_path, {"Hare": {**HARE, "reference_image": "hare.jpg"}}))
    assert jpeg.characters["Hare"].reference_image.media_type == "image/jpeg"


def _refused(tmp_path: Path, name: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, {"Hare": {**HARE, "reference_image": name}}))
    [problem] = [p for p in info.value.problems if p.startswith("characters.Hare.reference_image")]
    return problem


def test_hostile_reference_image_files_are_refused_with_the_field_named(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    png(outside / "secret.png")
    (tmp_path / "out.png").symlink_to(outside / "secret.png")
    (tmp_path / "dir-link").symlink_to(outside, target_is_directory=True)
    (tmp_path / "dev.png").symlink_to("/dev/zero")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nothing.png")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "text.png").write_text("not an image at all")
    Image.new("RGB", (32, 32)).save(tmp_path / "anim.gif")
    Image.new("L", (5000, 20)).save(tmp_path / "wide.png")  # a side over 4096 (a bomb is refused from its header)
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_REFERENCE_IMAGE_BYTES)
    good = png(tmp_path / "good.png")
    (tmp_path / "truncated.png").write_bytes(good[:len(good) // 2])
    done = threading.Event()
    found: dict[str, str] = {}
    expected: dict[str, str] = {}

    def check():
        for name, words in {
            "missing.png": "no such file", "out.png": "outside the spec's folder",
            "dir-link/secret.png": "a symbolic link out of the spec's folder", "dev.png": "outside the spec's folder",
            "loop.png": "loops", "dangling.png": "dangling", "fifo.png": "a fifo", "folder.png": "a directory",
            "text.png": "not a readable png or jpeg", "anim.gif": "a gif image", "wide.png": "is 5000x20 pixels",
            "tiny.png": "is 8x8 pixels", "big.png": "larger than the 2,000,000-byte limit",
            "truncated.png": "not a readable png or jpeg",
        }.items():
            expected[name] = words
            found[name] = _refused(tmp_path, name)
        done.set()

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(timeout=60)  # a FIFO or /dev/zero that blocked would hang here: never wait on a file
    assert done.is_set(), f"checked only {sorted(found)} (stuck on, or failed at, the next one)"
    for name, message in found.items():
        assert expected[name] in message.lower(), (name, message)
    for message in found.values():  # messages never show where a link leads
        assert str(outside) not in message and "secret" not in message.replace("dir-link/secret.png", "")


def test_check_reference_image_reads_dimensions_before_pixels():
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # 400 megapixels, a few kB compressed
    with pytest.raises(ValueError, match="far more pixels than a reference image may .* refused before decoding"):
        check_reference_image(buf.getvalue())


def test_submit_carries_reference_images_into_the_inbox_copy(tmp_path, monkeypatch):
    data = png(tmp_path / "hare.png")
    path = write(tmp_path, {"Hare": {**HARE, "reference_image": "hare.png"}})
    inbox = tmp_path / "inbox"
    monkeypatch.setenv("PIPELINE_INBOX_DIR", str(inbox))
    assert main(["--data-dir", str(tmp_path / "data"), "submit", str(path)]) == 0
    [copy] = list(inbox.glob("cast.*"))
    assert copy.suffix == ".json"
    ref = json.loads(copy.read_text())["characters"]["Hare"]["reference_image"]
    assert base64.b64decode(ref["data"]) == data and ref["file"] == "hare.png"
    assert load_spec(copy) == load_spec(path)  # the inbox needs no image file beside the copy


def test_the_characters_example_loads_with_its_picture():
    example = load_spec(EXAMPLES / "characters" / "race.yaml")
    tortoise = example.characters["Tortoise"].reference_image
    assert isinstance(tortoise, ReferenceImage) and tortoise.file == "tortoise.png"
    assert example.characters["Hare"].reference_image is None
    assert [beat_characters(b.prompt, b.characters, example.characters) for b in example.beats] == \
        [["Hare"], ["Hare", "Tortoise"], ["Hare"], ["Tortoise"]]
    assert example.beats[3].seed == 4242
