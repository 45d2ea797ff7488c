"""Reading spec files safely (pipeline.spec_file), the bounded YAML loader (pipeline.spec_yaml),
strict field rules, escaping of user text (pipeline.printable, pipeline.cli_output) and
``pipeline submit``, one rule at a time with exact messages."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from rich.table import Table

from pipeline import cli_output
from pipeline.cli import main
from pipeline.printable import printable
from pipeline.spec import SpecError, load_spec, load_spec_text
from pipeline.spec_file import MAX_SPEC_BYTES, SpecInputError, decode_spec_text, read_spec_bytes
from pipeline.spec_yaml import MAX_DEPTH, MAX_NODES, load_yaml
from pipeline_tests.hostile_emit import base

VALID_YAML = yaml.safe_dump(base(), sort_keys=False)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "spec.yaml")
    return info.value.problems


# --- printable -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("\x1b[31mred", "\\x1b[31mred"), ("\x1b]0;t\x07", "\\x1b]0;t\\x07"), ("a\rb", "a\\rb"), ("a\tb\nc", "a\\tb\\nc"),
    ("\u202eevil", "\\u202eevil"), ("\ud800", "\\ud800"), ("\x9b31m", "\\x9b31m"), ("\u2028", "\\u2028"),
    ("[bold]x[/]", "[bold]x[/]"), ("caf\u00e9 \U0001f600 \U0001f468\u200d\U0001f469", "caf\u00e9 \U0001f600 \U0001f468\u200d\U0001f469"),
])
def test_printable_escapes_exactly_the_characters_that_act_on_a_terminal(raw, shown):
    assert printable(raw) == shown


def test_printable_options_and_odd_inputs():
    assert printable("a\nb\rc", multiline=True) == "a\nb\\rc"
    assert printable("x" * 1000, limit=10) == "x" * 10 + "…"
    assert printable("\x1b" * 100, limit=8) == "\\x1b\\x1b…"
    assert printable(10 ** 5000).startswith("<int")  # too long to convert: described, not raised


# --- reading files -------------------------------------------------------------------------------

def test_a_fifo_is_refused_at_once_without_a_writer(tmp_path):
    os.mkfifo(tmp_path / "spec.yaml")
    started = time.monotonic()
    with pytest.raises(SpecInputError, match=r"is a FIFO \(named pipe\), not a regular file"):
        read_spec_bytes(tmp_path / "spec.yaml")
    assert time.monotonic() - started < 5


def test_a_fifo_with_a_writer_is_refused_too(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: open(fifo, "w").write(VALID_YAML), daemon=True)
    writer.start()
    with pytest.raises(SpecInputError, match="FIFO"):
        read_spec_bytes(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # let the writer finish
    try:
        writer.join(10)
        assert not writer.is_alive()
    finally:
        os.close(fd)


@pytest.mark.parametrize("target, message", [
    ("/dev/zero", "outside its folder"), ("/etc/passwd", "outside its folder"), ("../outside.yaml", "outside its folder"),
    ("missing.yaml", "does not exist"), ("spec.yaml", "loops"), (".", "symbolic link to a directory"),
])
def test_symbolic_links_are_followed_only_inside_their_folder(tmp_path, target, message):
    (tmp_path / "outside.yaml").write_text(VALID_YAML)
    folder = tmp_path / "specs"
    folder.mkdir()
    os.symlink(target, folder / "spec.yaml")
    with pytest.raises(SpecInputError) as info:
        read_spec_bytes(folder / "spec.yaml")
    assert message in str(info.value)
    assert target not in str(info.value).replace("spec.yaml", "")  # the target is never named


def test_a_link_inside_the_folder_is_followed(tmp_path):
    (tmp_path / "real.yaml").write_text(VALID_YAML)
    os.symlink("real.yaml", tmp_path / "spec.yaml")
    assert load_spec(tmp_path / "spec.yaml").video_id == "hostile"


def test_size_cap_reads_at_most_cap_plus_one_bytes(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(VALID_YAML + "#" * (MAX_SPEC_BYTES - len(VALID_YAML) - 1) + "\n")
    assert len(read_spec_bytes(path)) == MAX_SPEC_BYTES
    with open(path, "a") as f:
        f.write("#")
    with pytest.raises(SpecInputError, match="1,000,001 bytes, larger than the 1,000,000-byte limit"):
        read_spec_bytes(path)
    with open(tmp_path / "huge.yaml", "wb") as f:
        f.truncate(50 * 2**30)
    with pytest.raises(SpecInputError, match="larger than"):
        read_spec_bytes(tmp_path / "huge.yaml")


@pytest.mark.parametrize("data, message", [
    (b"\xff\xfev\x00", "is UTF-16 text (it starts with a UTF-16 byte order mark)"),
    (b"\xfe\xff\x00v", "is UTF-16 text"), (b"\xff\xfe\x00\x00v\x00\x00\x00", "is UTF-32 text"),
    (b"v\x00i\x00", "has a NUL byte at byte offset 1 (line 1)"),
    (b"title: caf\xe9\n", "is not UTF-8: byte 0xe9 at byte offset 10 (line 1): invalid continuation byte"),
    (b"a: 1\nb: \xed\xa0\x80\n", "byte 0xed at byte offset 8 (line 2)"),
    (b"\xef\xbb\xbfa: \xc3", "byte 0xc3 at byte offset 6 (line 1): unexpected end of data"),
])
def test_only_utf8_is_read(data, message):
    with pytest.raises(SpecInputError) as info:
        decode_spec_text(data)
    assert message in str(info.value)


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID_YAML.encode())
    assert load_spec(path).title == "A kite"


# --- the YAML loader -----------------------------------------------------------------------------

def test_yaml_and_json_mean_the_same_scalars():
    data = load_yaml("a: 16:9\nb: 1e-3\nc: 010\nd: yes\ne: 2024-01-01\nf: 0x10\ng: .inf\nh: ~\ni: 1_000\nj: True\n")
    assert data == {"a": "16:9", "b": 0.001, "c": 10, "d": "yes", "e": "2024-01-01", "f": 16, "g": float("inf"),
                    "h": None, "i": "1_000", "j": True}
    assert load_yaml(json.dumps({"p": "\U0001f600"})) == {"p": "\U0001f600"}  # JSON surrogate pair joined


def test_nesting_is_limited_while_composing():
    assert load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(SpecInputError, match=f"nested more than {MAX_DEPTH} levels deep"):
        load_yaml("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(SpecInputError, match=r"^a\.a\.a.*nested more than 64 levels deep .*line 64"):
        load_yaml("".join(" " * i + "a:\n" for i in range(100_000 // 100)))


def test_alias_expansion_is_limited():
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9))
    with pytest.raises(SpecInputError, match=f"more than {MAX_NODES:,} values once its aliases are expanded"):
        load_yaml(laughs)
    assert load_yaml("a: &m slow\nb: *m\n") == {"a": "slow", "b": "slow"}
    with pytest.raises(SpecInputError, match=r"^x\[0\]: alias \*x refers to a value that contains it"):
        load_yaml("x: &x [*x]\n")


def test_duplicate_and_non_text_keys_name_the_field_and_line():
    assert problems(VALID_YAML.replace("  bpm: 120\n", "  bpm: 120\n  bpm: 90\n")) == [
        "music.bpm: duplicate key 'bpm' (first given at line 8) (line 9, column 3)"]
    assert problems("title: a\ntitle: b\n") == ["title: duplicate key 'title' (first given at line 1) (line 2, column 1)"]
    assert problems("music: {1: x}\n") == ["music: a mapping key must be text, found the integer 1 (line 1, column 9)"]


def test_unsafe_tags_name_the_field():
    assert problems(VALID_YAML.replace("title: A kite", "title: !!python/object/apply:os.system [id]")) == [
        "title: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system' "
        "(line 2, column 8)"]


# --- strict fields -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, problem", [
    ("true", "duration_s: should be a number, got the boolean true"),
    (".nan", "duration_s: should be a finite number, got the number nan"),
    ("-.inf", "duration_s: should be a finite number, got the number -inf"),
    ('"16"', "duration_s: should be a number, got the text '16'"),
    ("1" + "0" * 400, "duration_s: should be a number, got an integer of about 401 digits"),
    ("1e-300", "duration_s: Input should be greater than or equal to 0.1 (0.1 s is one frame at the lowest "
               "supported frame rate), got the number 1e-300"),
])
def test_numbers_are_strict(value, problem):
    assert problems(VALID_YAML.replace("duration_s: 16", f"duration_s: {value}", 1)) == [problem]


def test_bpm_is_a_whole_number_and_seed_an_integer():
    assert problems(VALID_YAML.replace("bpm: 120", "bpm: 120.0")) == ["music.bpm: should be a whole number, got the number 120.0"]
    assert problems(VALID_YAML + "seed: 1.5\n") == ["seed: should be a whole number, got the number 1.5"]


@pytest.mark.parametrize("field, cap", [("title", 200), ("style", 500)])
def test_text_fields_have_length_caps(field, cap):
    spec = base()
    spec[field] = "x" * cap
    assert load_spec_text(json.dumps(spec)).model_dump()[field] == "x" * cap
    spec[field] = "x" * (cap + 1)
    with pytest.raises(SpecError) as info:
        load_spec_text(json.dumps(spec))
    assert info.value.problems == [f"{field}: String should have at most {cap} characters (got {cap + 1})"]


def test_beat_count_is_capped_in_the_file():
    spec = {**base(), "beats": [{"prompt": "p", "duration_s": 1}] * 1001}
    with pytest.raises(SpecError) as info:
        load_spec_text(json.dumps(spec))
    assert info.value.problems[0].startswith("beats: a spec may list at most 1,000 beats, this one has 1,001")


def test_messages_escape_user_text_and_never_echo_a_whole_file():
    spec = {**base(), "\x1b[31mcolour": "red"}
    with pytest.raises(SpecError) as info:
        load_spec_text(json.dumps(spec), "in\x1bbox/x.yaml")
    assert "\x1b" not in str(info.value)
    assert str(info.value) == "in\\x1bbox/x.yaml: invalid spec:\n  - \\x1b[31mcolour: unknown field (not part of the spec format; check the spelling)"
    assert "secret words" not in str(problems("secret words\nmore secret words\n"))


# --- output --------------------------------------------------------------------------------------

def test_cli_output_prints_markup_and_escapes_literally():
    out = io.StringIO()
    console = Console(file=out, width=200, markup=False, emoji=False, highlight=False)
    cli_output.say(("error", "red"), ": ", "[/oops] [bold]x :smile: \x1b[31m", stream=console)
    table = Table(title=cli_output.cell("[bold]T[/]"))
    table.add_column("prompt")
    table.add_row(cli_output.cell("[/oops]\r\x1b]0;t\x07"))
    console.print(table)
    text = out.getvalue()
    assert "error: [/oops] [bold]x :smile: \\x1b[31m" in text and "[bold]T[/]" in text and "[/oops]\\r\\x1b]0;t\\x07" in text
    assert "\x1b" not in text and "\r" not in text


def test_submit_copies_exactly_the_validated_bytes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PIPELINE_INBOX_DIR", raising=False)
    source = tmp_path / "my spec.txt"
    source.write_bytes(b"\xef\xbb\xbf" + VALID_YAML.encode())
    assert main(["submit", str(source)]) == 0
    inbox = tmp_path / "data" / "inbox"
    assert (inbox / "hostile.yaml").read_bytes() == source.read_bytes()  # a .txt name still lands as .yaml
    assert sorted(p.name for p in inbox.iterdir()) == ["hostile.yaml"]
    os.mkfifo(tmp_path / "fifo.yaml")
    assert main(["submit", str(tmp_path / "fifo.yaml")]) == 2
    assert "is a FIFO" in capsys.readouterr().err
