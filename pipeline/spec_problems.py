"""Spec problems: pydantic validation errors turned into ``SpecError`` lines, one per field,
``"<field path>: <what is wrong>, got <value>"`` (user text clipped and escaped; a value that fits
neither shape of a two-shape field such as ``duration_s`` reported once).

Used by ``pipeline.spec.parse_spec``. Nothing here imports Dagster.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.printable import clip, quoted
from pipeline.spec_characters import MAX_CHARACTERS, MAX_NAME_CHARS
from pipeline.spec_fields import MAX_SPEC_BEATS, MIN_BEAT_S, SHORTEST_BEAT_S
from pipeline.spec_yaml import describe_value

def _format_loc(loc: tuple[Any, ...]) -> str:
    """``("beats", 2, "duration_s")`` -> ``beats[2].duration_s``; user-written keys clipped and escaped."""
    out = ""
    for part in loc:
        name = clip(part, 40) if part != "" else '""'
        out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out


_EXPECTED = {
    "float_type": "should be a number", "int_type": "should be a whole number",
    "int_from_float": "should be a whole number", "string_type": "should be text", "list_type": "should be a list",
    "dict_type": "should be a mapping of fields", "model_type": "should be a mapping of fields",
    "model_attributes_type": "should be a mapping of fields", "finite_number": "should be a finite number",
}


def _problem(err: dict) -> str:
    """One ``"<field path>: <what is wrong>, got <value>"`` line for a pydantic error."""
    loc, kind, value = _format_loc(err["loc"]), err["type"], err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if not loc and kind == "value_error" and re.match(r"(characters|beats\[\d+\])[.:\[]", msg):
        return msg  # a spec-level check that names its own field (pipeline.spec_characters)
    loc = loc or (("narration" if msg.startswith("from_brief") else "beats/brief") if kind == "value_error"
                  else "(top level)")
    if kind == "union_shape":
        return f"{loc}: {msg}"
    if kind == "string_pattern_mismatch" and loc.startswith("characters.") and loc.endswith(".[key]"):
        return (f"{loc.removesuffix('.[key]')}: {quoted(value, 80)} is not a valid character name: start with a "
                f"letter, then letters, digits, spaces, '-', '_' or apostrophes (at most {MAX_NAME_CHARS})")
    if kind in ("too_long", "too_short") and loc == "characters":
        return (f"characters: a spec describes 1-{MAX_CHARACTERS} characters, got "
                f"{len(value) if isinstance(value, dict) else describe_value(value)}")
    if kind == "extra_forbidden":
        msg = "unknown field (not part of the spec format; check the spelling)"
    elif kind == "missing":
        msg = "missing (this field is required)"
    elif kind == "string_pattern_mismatch" and loc == "video_id":
        msg = (f"{quoted(value, 80)} is not a valid video_id: use 1-63 lowercase "
               "letters, digits and '-', starting with a letter or digit")
    elif kind == "string_pattern_mismatch" and loc.endswith("voice"):
        msg = (f"{quoted(value, 80)} is not a voice name: use 1-64 letters, digits, '_', '.' and '-' (a name, "
               "never a path; `pipeline validate` lists the voices)")
    elif kind == "string_unicode":
        msg = "is not valid Unicode text (it holds an unpaired surrogate, e.g. from a \\ud800 escape)"
    elif kind == "string_too_long" and isinstance(value, str):
        msg = f"{msg} (got {len(value.strip()):,})"
    elif kind == "too_long" and loc == "beats" and isinstance(value, list):
        msg = (f"a spec may list at most {MAX_SPEC_BEATS:,} beats, this one has {len(value):,} (a video keeps at "
               f"most one beat per {MIN_BEAT_S:g} s; extra beats are dropped)")
    elif kind == "greater_than_equal" and loc.endswith("duration_s"):
        msg = (f"{msg} ({SHORTEST_BEAT_S:g} s is one frame at the lowest supported frame rate), "
               f"got {describe_value(value)}")
    elif kind in _EXPECTED:
        msg = f"{_EXPECTED[kind]}, got {describe_value(value)}"
    elif kind == "literal_error":
        msg = f"{msg}, got {describe_value(value)}"
    return f"{loc}: {msg}"


_UNION_WORDS = {"duration_s": "a number of seconds or 'auto'",
                "narration": "'from_brief' or a mapping of narration fields (voice, pause_s, from_brief, captions)"}
"""What a field that takes either of two shapes should be (``_untangle``)."""


def _untangle(errors: list[dict]) -> list[dict]:
    """Pydantic reports a value that fits neither member of a union (``duration_s``: seconds or
    "auto"; ``narration``: a mapping or "from_brief") once per member, with the member's tag in the
    location. Keep one error per field: the member's own errors (tag removed) when the value has that
    member's shape (a number; a mapping), else one "should be <either>" error."""
    out: list[dict] = []
    literal_inputs = {}
    for err in errors:
        loc = err["loc"]
        for i, part in enumerate(loc):
            if isinstance(part, str) and part.startswith("literal["):
                literal_inputs[tuple(loc[:i])] = err.get("input")
    for err in errors:
        loc = err["loc"]
        tag = next((i for i, p in enumerate(loc) if isinstance(p, str) and i > 0 and loc[i - 1] in _UNION_WORDS
                    and (p.startswith("literal[") or p in ("constrained-float", "NarrationSpec"))), None)
        if tag is None:
            out.append(err)
            continue
        field_loc, value = tuple(loc[:tag]), literal_inputs.get(tuple(loc[:tag]), err.get("input"))
        fits_member = isinstance(value, dict) if loc[tag - 1] == "narration" else (
            isinstance(value, (int, float)) and not isinstance(value, bool))
        if fits_member:
            if not loc[tag].startswith("literal["):
                out.append({**err, "loc": field_loc + tuple(loc[tag + 1:])})
        elif loc[tag].startswith("literal["):
            out.append({"loc": field_loc, "type": "union_shape", "input": value,
                        "msg": f"should be {_UNION_WORDS[loc[tag - 1]]}, got {describe_value(value)}"})
    return out
