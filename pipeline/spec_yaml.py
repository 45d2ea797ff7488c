"""A strict, bounded YAML/JSON loader for spec files (PyYAML's safe loader, hardened).

- YAML 1.2 core scalars, so YAML and JSON mean the same: ``true``/``false`` are the only
  booleans, ``1e-3`` is a number, ``16:9`` and ``2024-01-01`` are text (YAML 1.1 read them as
  base-60 and date values), ``010`` is ten.
- Nesting deeper than ``MAX_DEPTH`` levels and documents that expand (through aliases) to more
  than ``MAX_NODES`` values are refused while composing, before any recursion can run away;
  billion-laughs documents and recursive aliases are refused the same way.
- Duplicate mapping keys and keys that are not text are errors naming the key path and line.
- Only safe tags (``!!python/...`` and unknown tags are errors); every error is a
  ``SpecInputError`` naming the line and, where there is one, the field path.

Nothing here imports Dagster.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from pipeline.printable import clip, quoted
from pipeline.spec_file import SpecInputError

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted (a spec needs 4)."""

MAX_NODES = 100_000
"""Most values a document may hold once its aliases are expanded (a 1,000-beat spec has ~7,000)."""

MAX_INT_DIGITS = {10: 4300, 16: 3500, 8: 4700, 2: 14000}
"""Longest integer literal read per base: every value stays below 10**4300, Python's int/str limit."""

_MERGE = "tag:yaml.org,2002:merge"
_SURROGATE = re.compile("[\ud800-\udfff]")


class _FieldError(yaml.MarkedYAMLError):
    """A problem found by SpecLoader's own checks, at ``mark``, in the value at ``field`` (a path
    like ``beats[2].prompt``, or "" for the top level)."""

    def __init__(self, field: str, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)
        self.field = field


def _segment(index: Any) -> str:
    if isinstance(index, int):
        return f"[{index}]"
    if isinstance(index, ScalarNode):
        return "." + clip(index.value, 40)
    return ""


class SpecLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 core scalars, depth/expansion limits, duplicate-key and
    text-key checks (see module doc). Use through ``load_yaml``."""

    yaml_implicit_resolvers: dict = {}

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[Node, int] = {}
        self._paths: dict[Node, str] = {}
        self._path: list[str] = []

    # --- composing: depth and alias expansion limits --------------------------------------------

    def _count(self, n: int, mark) -> None:
        self._expanded += n
        if self._expanded > MAX_NODES:
            raise _FieldError("", f"the document holds more than {MAX_NODES:,} values once its aliases are "
                              f"expanded (too many aliases, e.g. a 'billion laughs' document, or far too much "
                              f"data for a spec)", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        key = parent is None or (isinstance(parent, MappingNode) and index is None)
        self._path.append("" if key else _segment(index))
        if self.check_event(AliasEvent):
            event = self.peek_event()
            where = "".join(self._path).lstrip(".")
            if event.anchor not in self.anchors:
                raise _FieldError(where, f"found undefined alias *{clip(event.anchor, 40)} (no anchor "
                                  f"&{clip(event.anchor, 40)} before it)", event.start_mark)
            node = super().compose_node(parent, index)
            size = self._sizes.get(node)
            if size is None:
                raise _FieldError(where, f"alias *{clip(event.anchor, 40)} refers to a value that contains it "
                                  "(a recursive structure)", event.start_mark)
            self._count(size, event.start_mark)
            self._path.pop()
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _FieldError(clip("".join(self._path).lstrip("."), 60), f"nested more than {MAX_DEPTH} levels deep "
                              "(a spec needs 4)", self.peek_event().start_mark)
        before = self._expanded
        node = super().compose_node(parent, index)
        self._count(1, node.start_mark)
        self._sizes[node] = self._expanded - before
        self._paths[node] = "".join(self._path).lstrip(".")
        self._depth -= 1
        self._path.pop()
        return node

    # --- constructing: keys, numbers, foreign errors ---------------------------------------------

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            where = self._paths.get(node, "")
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                field = f"{where}.{clip(key, 40)}".lstrip(".") if isinstance(key, str) else where
                if not isinstance(key, str):
                    raise _FieldError(where, f"a mapping key must be text, found {_describe(key)}", key_node.start_mark)
                if _SURROGATE.search(key):
                    raise _FieldError(field, "the key is not valid Unicode text (it holds an unpaired surrogate)",
                                      key_node.start_mark)
                if key in seen:
                    raise _FieldError(field, f"duplicate key {quoted(key, 40)} (first given at line {seen[key]})",
                                      key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _FieldError:
            raise
        except yaml.MarkedYAMLError as exc:  # an unknown or unsafe tag, bad base64, ...: name the field
            raise _FieldError(self._paths.get(node, ""), exc.problem or "cannot read this value",
                              exc.problem_mark or node.start_mark) from None
        except yaml.YAMLError:
            raise
        except Exception as exc:  # a constructor's own error (a bad date, ...): report it, marked
            raise _FieldError(self._paths.get(node, ""), f"cannot read this value: {clip(exc, 100)}",
                              node.start_mark) from None

    def construct_scalar(self, node: Node) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and _SURROGATE.search(value):
            try:  # JSON writes astral characters as surrogate pairs (\\ud83d\\ude00): join them
                value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError:
                pass  # an unpaired surrogate: kept, and refused by the spec's validation
        return value

    def construct_yaml_int(self, node: ScalarNode) -> int:
        text = str(self.construct_scalar(node)).strip()
        sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.removeprefix("+"))
        base = {"0x": 16, "0o": 8, "0b": 2}.get(body[:2].lower(), 10)
        digits = body[2:] if base != 10 else body
        if len(digits) > MAX_INT_DIGITS[base]:
            raise ConstructorError(None, None, f"an integer of {len(digits):,} digits is too long to read (at most "
                                   f"{MAX_INT_DIGITS[base]:,} in base {base})", node.start_mark)
        try:
            return sign * int(digits, base)
        except ValueError:
            raise ConstructorError(None, None, f"{quoted(text, 40)} is not an integer", node.start_mark) from None


SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)
for _tag, _regexp, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    (_MERGE, r"^<<$", "<"),
):
    SpecLoader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


def _describe(value: Any) -> str:
    """A short, safe description of a parsed value for messages: its kind and (clipped) value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        if abs(value) < 10**40:
            return f"the integer {value}"
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {quoted(value, 40)}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (bytes, bytearray)):
        return "binary data"
    return f"a {clip(type(value).__name__, 30)} value"


describe_value = _describe


def _mark_text(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown position"


def load_yaml(text: str) -> Any:
    """Parse one YAML or JSON document with ``SpecLoader``. Returns plain dicts, lists and scalars.

    Raises SpecInputError naming the line, column and (where known) field path of the problem.
    """
    try:
        return yaml.load(text, Loader=SpecLoader)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise SpecInputError(f"line {line}, column {column}: the character {clip(chr(exc.character))} may not appear "
                             "raw in YAML/JSON (write control characters as escapes, e.g. \"\\x1b\" inside double "
                             "quotes)") from None
    except _FieldError as exc:
        where = f"{exc.field}: " if exc.field else ""
        raise SpecInputError(f"{where}{clip(exc.problem, 300)} ({_mark_text(exc.problem_mark)})") from None
    except yaml.MarkedYAMLError as exc:
        problem = clip(exc.problem or "not valid", 200)
        if exc.context:
            at = f" (line {exc.context_mark.line + 1})" if exc.context_mark is not None else ""
            problem = f"{clip(exc.context, 80)}{at}, {problem}"
        raise SpecInputError(f"not valid YAML/JSON at {_mark_text(exc.problem_mark)}: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpecInputError(f"not valid YAML/JSON: {clip(exc, 200)}") from None
    except RecursionError:  # not reachable through the depth limit; a last line of defence
        raise SpecInputError(f"nested too deeply (more than {MAX_DEPTH} levels)") from None
