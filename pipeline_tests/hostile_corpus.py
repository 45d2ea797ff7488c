"""A corpus of hostile spec files, for ``pipeline validate``/``render``, the inbox and its sensor.

``build_corpus(folder, outside)`` writes several hundred entries into ``folder`` and returns one
``Case`` per entry saying whether a correct loader accepts it and what its error must name:

- file-level: binary garbage, NUL bytes, invalid UTF-8, UTF-16/32 with and without a byte order
  mark, a UTF-8 BOM (valid), 10,000-level nesting, billion laughs, recursive aliases, unsafe YAML
  tags, a directory, a FIFO, a socket, symbolic link loops, dangling links, links to /dev/zero and
  to a secret file outside the folder, 2 MB and sparse 10 GB files, hostile file names;
- field mutations of a valid spec, in JSON and block YAML: every numeric field with booleans, NaN,
  infinities, strings, huge, negative, sub-frame and 1e-300 values; every text field empty,
  overlong, with rich markup (``[/oops]``), ANSI/OSC escapes, carriage returns, RTL overrides,
  NUL, lone surrogates; duplicate keys at every level; missing, unknown and wrongly typed fields.

``SECRET_MARKER`` is in the secret file (outside the folder): it must never appear in any output.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import yaml

from pipeline_tests.hostile_emit import SECRET_MARKER, Case, Pairs, Raw, base, emit_block, emit_flow, with_value, write
from pipeline_tests.hostile_files import file_cases

__all__ = ["SECRET_MARKER", "Case", "base", "build_corpus"]

VIDEO_ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
CAPS = {"title": 200, "style": 500, "music.prompt": 1000, "beats[0].prompt": 2000, "beats[1].motion": 500,
        "brief": 20_000}
NAN, INF = float("nan"), float("inf")
BAD = object()
"""Meaning of a token the YAML loader itself must refuse (with the field named)."""


# --- what a correct loader accepts -------------------------------------------------------------

def _number(v) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int too large for a float is not a usable number either
        return False


NUMBER_RULES = {
    "duration_s": lambda v: _number(v) and 0.1 <= v <= 3600,
    "beats[0].duration_s": lambda v: _number(v) and 0.1 <= v <= 600,
    "beats[2].duration_s": lambda v: _number(v) and 0.1 <= v <= 600,
    "music.bpm": lambda v: type(v) is int and 20 <= v <= 300,
    "seed": lambda v: v is None or (type(v) is int and 0 <= v < 2**31),
    "max_cost_usd": lambda v: v is None or (_number(v) and v >= 0),
}

# (token, its meaning under YAML 1.2 core scalars, valid JSON?)
NUMBER_TOKENS = [
    ("true", True, True), ("false", False, True), ("null", None, True), (".nan", NAN, False), (".NaN", NAN, False),
    (".inf", INF, False), ("-.inf", -INF, False), ("NaN", "NaN", False), ("Infinity", "Infinity", False),
    ('"5"', "5", True), ('"five"', "five", True), ("five", "five", False), ('""', "", True), ("1e308", 1e308, True),
    ("1e999", INF, True), ("-1e999", -INF, True), ("-1", -1, True), ("-1e-300", -1e-300, True), ("0", 0, True),
    ("-0", 0, True), ("0.0", 0.0, True), ("1e-300", 1e-300, True), ("5e-324", 5e-324, True), ("0.05", 0.05, True),
    ("0.0999", 0.0999, True), ("0.1", 0.1, True), ("5", 5, True), ("5.5", 5.5, True), ("120.0", 120.0, True),
    ("1e1", 10.0, True), ("1E2", 100.0, True), ("0x10", 16, False), ("0o17", 15, False), ("010", 10, False),
    ("1_000", "1_000", False), ("1:30", "1:30", False), ("2001-12-14", "2001-12-14", False), ("5 s", "5 s", False),
    ("yes", "yes", False), ("~", None, False), (str(10**30), 10**30, True), (str(10**400), 10**400, True),
    ("9" * 5000, BAD, True), ("0x" + "f" * 4000, BAD, False), ("[]", [], True), ("{}", {}, True),
    ("[5]", [5], True), ("!!str 5", "5", False), ('!!float "5"', 5.0, False), ('!!int "100"', 100, False),
    ("!!bool true", True, False), ("!!binary aGVsbG8=", b"hello", False), ("!!timestamp 2001-13-45", BAD, False),
    ("!!python/object/apply:os.getpid []", BAD, False), ("*nope", BAD, False),
]

TEXT_VALUES = ["", "   ", "\t\n", "AT_CAP", "OVER_CAP", "x" * 100_000, "[/oops]", "[bold red]loud[/]",
               "[link=file:///etc/passwd]click[/link]", "\x1b[31mred\x1b[0m", "\x1b]0;pwned\x07", "\x1b[2J\x1b[H",
               "a\rb", "\u202eevil.exe", "a\x00b", "\ud800", "\U0001f600 emoji", ":smile: :cross_mark:",
               "line1\nline2", "\x7f\x9b", 123, True, ["x"], {"a": "b"}, None, "\u00e9" * 2001]


def _text_value(field: str, value):
    cap = CAPS.get(field, 100)
    if value == "AT_CAP":
        return ("Kite. " * (cap // 6 + 1))[:cap - 1] + "!" if field == "brief" else "T" * cap
    return "O" * (cap + 1) if value == "OVER_CAP" else value


def _text_ok(field: str, v) -> bool:
    if field == "video_id":
        return isinstance(v, str) and re.fullmatch(VIDEO_ID_PATTERN, v) is not None
    if field in ("beats[1].motion", "style") and v is None:  # optional: None is "not given"
        return True
    ok = isinstance(v, str) and not re.search("[\ud800-\udfff]", v) and 0 < len(v.strip()) <= CAPS[field]
    return ok and not _unplannable(field, v)


def _unplannable(field: str, v) -> bool:
    """A valid brief the local planner cannot split: a sentence over 2,000 characters cannot be a beat."""
    ok = field == "brief" and isinstance(v, str) and not re.search("[\ud800-\udfff]", v) and 0 < len(v.strip()) <= CAPS[field]
    return ok and max(len(s) for s in re.split(r"(?<=[.!?])\s+", " ".join(v.split()))) > 2000


def _expect(field: str) -> tuple[str, ...]:
    return (f"- {field}: " if "." not in field and "[" not in field else f"{field}: ",)


# --- writing -----------------------------------------------------------------------------------

def _field_cases(folder: Path) -> list[Case]:
    cases = []
    for field, rule in NUMBER_RULES.items():
        slug = field.replace("[", "").replace("]", "").replace(".", "-")
        for i, (token, meaning, json_ok) in enumerate(NUMBER_TOKENS):
            valid = meaning is not BAD and rule(meaning)
            doc = with_value(base(), field, Raw(token))
            for style in ("flow", "block") if json_ok else ("block",):
                name = f"num-{slug}-{i:02d}-{style}.{'json' if style == 'flow' else 'yaml'}"
                write(folder, name, emit_flow(doc) if style == "flow" else emit_block(doc))
                cases.append(Case(name, valid, () if valid else _expect(field)))
    for field in ["video_id", *CAPS]:
        slug = field.replace("[", "").replace("]", "").replace(".", "-")
        for i, raw in enumerate(TEXT_VALUES):
            value = _text_value(field, raw)
            doc = with_value(base(brief=field == "brief"), field, value)
            valid = _text_ok(field, value)
            expect = ("exactly one of 'beats'",) if field == "brief" and value is None else _expect(field)
            write(folder, f"text-{slug}-{i:02d}.json", json.dumps(doc, indent=1))
            write(folder, f"text-{slug}-{i:02d}.yaml", yaml.safe_dump(doc, sort_keys=False, width=10**9))
            cases += [Case(f"text-{slug}-{i:02d}.{ext}", valid, () if valid else expect,
                           loads=valid or _unplannable(field, value)) for ext in ("json", "yaml")]
    return cases


def _duplicate_cases(folder: Path) -> list[Case]:
    cases = []
    spec = base()
    for path in [*spec, "music.prompt", "music.bpm", "beats[0].prompt", "beats[1].duration_s", "beats[1].motion"]:
        parent, _, key = path.rpartition(".")
        doc = Pairs(spec.items())
        if parent:  # music.x or beats[i].x: rebuild that mapping with the key twice
            holder = spec["music"] if parent == "music" else spec["beats"][int(parent[6:-1])]
            dup = Pairs([*holder.items(), (key, holder[key])])
            if parent == "music":
                doc = Pairs([(k, dup if k == "music" else v) for k, v in spec.items()])
            else:
                beats = [dup if f"beats[{j}]" == parent else b for j, b in enumerate(spec["beats"])]
                doc = Pairs([(k, beats if k == "beats" else v) for k, v in spec.items()])
        else:
            doc = Pairs([*spec.items(), (path, spec[path])])
        slug = path.replace("[", "").replace("]", "").replace(".", "-")
        write(folder, f"dup-{slug}.json", emit_flow(doc))
        write(folder, f"dup-{slug}.yaml", emit_block(doc))
        expect = (f"{path}: duplicate key",) if parent else (f"- {path}: duplicate key",)
        cases += [Case(f"dup-{slug}.{ext}", False, expect, "duplicate") for ext in ("json", "yaml")]
    return cases


def _structure_cases(folder: Path) -> list[Case]:
    spec, out = base(), []

    def add(name, doc, valid, *expect, group="structure"):
        write(folder, name, doc if isinstance(doc, (str, bytes)) else emit_flow(doc))
        out.append(Case(name, valid, tuple(e.lower() for e in expect), group))

    for field in ["video_id", "title", "duration_s", "aspect_ratio", "style", "music", "music.prompt",
                  "music.bpm", "beats[0].prompt", "beats[1].duration_s"]:
        optional = field in ("aspect_ratio", "style", "music")  # defaults: 16:9, no style, no music
        add(f"missing-{field.replace('[', '').replace(']', '')}.json", with_value(spec, field, ...), optional,
            *(() if optional else (_expect(field)[0],)))
    add("missing-beats.json", with_value(spec, "beats", ...), False, "exactly one of 'beats'")
    add("both-beats-and-brief.json", {**spec, "brief": "A kite."}, False, "exactly one of 'beats'")
    for where, doc in [("top", {**spec, "colour": "red"}), ("music", with_value(spec, "music.tempo", 90)),
                       ("beat", with_value(spec, "beats[2].camera", "push"))]:
        add(f"unknown-{where}.json", doc, False, "unknown field")
    for i, key in enumerate(["[bold]x[/bold]", "\x1b[31mred", "\x1b]0;pwned\x07", "k" * 10_000, "\ud800", "",
                             "a\rb", "\u202eevil", "[/oops]", "\u00a0"]):
        expect = {3: "at line 26", 4: "not valid unicode"}.get(i, "unknown field")  # PyYAML: keys <= 1024 chars
        add(f"unknown-key-{i}.json", {**spec, key: 1}, False, expect)
    for i, (value, expect) in enumerate([({}, "beats: should be a list"), ("x", "beats: should be a list"),
                                         (5, "beats: should be a list"), ([], "beats: list should have at least 1"),
                                         ([None], "beats[0]: should be a mapping"), ([1], "beats[0]: should be"),
                                         ([[]], "beats[0]: should be"), (["text"], "beats[0]: should be")]):
        add(f"beats-shape-{i}.json", with_value(spec, "beats", value), False, expect)
    for i, value in enumerate(["x", ["a"], None, 5]):  # music: null is "no music" (valid)
        add(f"music-shape-{i}.json", with_value(spec, "music", value), value is None,
            *(() if value is None else ("- music: ",)))
    beat = {"prompt": "p", "duration_s": 1}
    add("beats-1000.json", with_value(spec, "beats", [beat] * 1000), True)
    add("beats-1001.json", with_value(spec, "beats", [beat] * 1001), False, "beats: a spec may list at most 1,000")
    add("beats-30000.yaml", "beats: [" + ", ".join(["{prompt: p, duration_s: 1}"] * 30_000) + "]\n", False,
        "more than 100,000 values")
    add("beats-60000.yaml", "beats: [" + ", ".join(["{prompt: p, duration_s: 1}"] * 60_000) + "]\n", False,
        "larger than")
    for i, ratio in enumerate(["4:3", "16x9", 169, "16:9 "]):
        add(f"aspect-{i}.json", with_value(spec, "aspect_ratio", ratio), False, "- aspect_ratio: ")
    add("aspect-unquoted.yaml", emit_block(spec).replace('"16:9"', "16:9"), True)
    for i, (text, expect) in enumerate([("- a\n- b\n", "got a list"), ("just words\n", "got text"), ("42\n", "got the integer"),
                                        ("4.5\n", "got the number"), ("true\n", "got the boolean"), ("null\n", "empty"),
                                        ("~\n", "empty"), ("", "empty"), ("\n\n  \n", "empty"), ("# comment\n", "empty"),
                                        ("---\n", "empty"), ("...\n", "at line 1"), ("[]\n", "got a list"),
                                        ("{}\n", "video_id: missing"), ("'[/oops]'\n", "got text")]):
        add(f"top-{i}.yaml", text, False, expect, group="top-level")
    return out


def _yaml_feature_cases(folder: Path) -> list[Case]:
    out, block = [], emit_block(base())

    def add(name, text, valid, *expect):
        write(folder, name, text)
        out.append(Case(name, valid, tuple(e.lower() for e in expect), "yaml"))

    laughs = "lol: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9))
    add("billion-laughs.yaml", laughs, False, "aliases")
    add("billion-laughs-in-prompt.yaml", block.replace("A red kite rises", "x") + "\n" + laughs, False, "aliases")
    add("quadratic-blowup.yaml", f"x: &s '{'y' * 100_000}'\nz: [{', '.join(['*s'] * 9_000)}]\n" + block, False,
        "unknown field")
    add("recursive-list.yaml", "a: &a [*a]\n", False, "alias *a refers to a value that contains it")
    add("recursive-map.yaml", block + "\nloop: &m {self: *m}\n", False, "loop.self: alias *m")
    add("undefined-alias.yaml", block.replace('"A red kite rises"', "*nope"), False, "beats[0].prompt", "undefined")
    add("anchors-valid.yaml", block.replace('"slow lateral pan"', '&m "slow lateral pan"').replace(
        '    prompt: "A child', '    motion: *m\n    prompt: "A child'), True)
    merge = block.replace("beats:\n", "base: &b {duration_s: 5}\nbeats:\n", 1).replace(
        "    duration_s: 5\n", "    <<: *b\n", 1)
    add("merge-key.yaml", merge, False, "base: unknown field")
    for i, tag in enumerate(["!!python/object/apply:os.system ['touch /tmp/pwned']", "!!python/name:os.system",
                             "!!python/object/new:type ['x', [], {}]", "!!python/tuple [1, 2]", "!!python/bytes aGk=",
                             "!<tag:yaml.org,2002:python/object/apply:os.system> ['id']", "!custom thing",
                             "!!set {a, b}", "!!omap [{a: 1}]", "!!timestamp 2001-12-14", "!!binary aGVsbG8="]):
        add(f"tag-{i}.yaml", block.replace('"A red kite rises"', tag).replace("A red kite rises", tag), False,
            "beats[0].prompt")
    add("tag-directive.yaml", "%TAG !p! tag:yaml.org,2002:python/object/apply:\n---\n" + block.replace(
        '"A red kite rises"', "!p!os.system ['id']"), False, "beats[0].prompt")
    add("yaml-1.1-directive.yaml", "%YAML 1.1\n---\n" + block, True)
    add("yaml-2.0-directive.yaml", "%YAML 2.0\n---\n" + block, False, "not valid yaml")
    add("two-documents.yaml", block + "\n---\n" + block, False, "single document")
    for i, text in enumerate(["video_id: [unclosed\n", "title: 'unterminated\n", 'title: "bad \\q escape"\n',
                              "a:\n\t- tab\n", "a: b: c\n", "- a\nb: c\n", "*a\n", "? ? ?\n",
                              "[" * 10_000, "{" * 10_000, "]]]]\n", "a: 'x' 'y'\n", "%%%\n"]):
        add(f"syntax-{i}.yaml", text, False, "line")
    add("nest-list-10000.yaml", "[" * 10_000 + "]" * 10_000, False, "nested more than 64")
    add("nest-map-10000.yaml", "{a: " * 10_000 + "1" + "}" * 10_000, False, "nested more than 64")
    add("nest-block-1000.yaml", "".join(" " * i + "a:\n" for i in range(1000)) + " " * 1000 + "b\n", False,
        "nested more than 64")
    add("nest-seq-2000.yaml", "- " * 2000 + "x\n", False, "nested more than 64")
    add("nest-in-prompt.yaml", block.replace('"A red kite rises"', "[" * 100 + "]" * 100).replace(
        "A red kite rises", "[" * 100 + "]" * 100), False, "beats[0].prompt", "nested more than 64")
    add("nest-63.json", json.dumps({**base(), "x": json.loads("[" * 62 + "]" * 62)}), False, "- x: unknown field")
    return out


def build_corpus(folder: Path, outside: Path) -> list[Case]:
    """Write the hostile corpus into ``folder`` (created; must not exist) and the secret files into
    ``outside`` (a folder elsewhere). Returns one Case per entry written, names unique."""
    folder.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    cases = (_field_cases(folder) + _duplicate_cases(folder) + _structure_cases(folder) + _yaml_feature_cases(folder)
             + file_cases(folder, outside))
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate corpus names"
    return cases
