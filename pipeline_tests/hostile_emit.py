"""Building blocks of the hostile spec corpus (``hostile_corpus``): the Case record, a valid base
spec, writers for JSON-style and block-YAML text with raw tokens and duplicate keys."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SECRET_MARKER = "HOSTILE-SECRET-MARKER-5d41402abc"
"""Written in secret files outside the corpus folder: it must never appear in any output."""


@dataclass(frozen=True)
class Case:
    """One corpus entry. ``expect``: lowercase texts an invalid case's message must contain (the
    field path, or words naming the file-level problem)."""

    name: str
    valid: bool
    expect: tuple[str, ...] = ()
    group: str = "field"
    special: bool = False
    """Not a plain regular file (FIFO, socket, directory, link, device, sparse file)."""
    loads: bool | None = None
    """Whether ``load_spec`` accepts it (default: ``valid``); False-valid cases fail only when planned."""

    @property
    def registers(self) -> bool:
        """Whether the inbox registers it (it loads; planning happens later, in the video_spec asset)."""
        return self.valid if self.loads is None else self.loads


def base(brief: bool = False) -> dict:
    spec = {"video_id": "hostile", "title": "A kite", "duration_s": 16, "aspect_ratio": "16:9",
            "style": "flat test card", "music": {"prompt": "simple tune", "bpm": 120},
            "beats": [{"prompt": "A red kite rises", "duration_s": 5},
                      {"prompt": "The string snaps", "duration_s": 6, "motion": "slow lateral pan"},
                      {"prompt": "A child waves goodbye", "duration_s": 5}]}
    if brief:
        del spec["beats"]
        spec.update(duration_s=3600, brief="A kite rises. The string snaps. A child waves.")
    return spec


class Raw(str):
    """A YAML/JSON token written as is (``.nan``, ``!!str 5``, a 5,000-digit integer)."""


class Pairs(list):
    """A mapping written from (key, value) pairs, duplicates allowed."""


def _items(v):
    return list(v) if isinstance(v, Pairs) else list(v.items())


def _scalar(v) -> str:
    return str(v) if isinstance(v, Raw) else json.dumps(v)


def emit_flow(v, indent: int = 0) -> str:
    """JSON-style text (valid JSON when every Raw token is)."""
    pad = "  " * (indent + 1)
    if isinstance(v, (dict, Pairs)):
        parts = [f"{pad}{json.dumps(k)}: {emit_flow(x, indent + 1)}" for k, x in _items(v)]
        return "{\n" + ",\n".join(parts) + "\n" + "  " * indent + "}" if parts else "{}"
    if isinstance(v, list):
        parts = [pad + emit_flow(x, indent + 1) for x in v]
        return "[\n" + ",\n".join(parts) + "\n" + "  " * indent + "]" if parts else "[]"
    return _scalar(v)


def emit_block(v, indent: int = 0) -> str:
    """Block-style YAML text."""
    pad = "  " * indent
    if isinstance(v, (dict, Pairs)) and _items(v):
        lines = []
        for k, x in _items(v):
            key = k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else json.dumps(k)
            nested = isinstance(x, (dict, Pairs, list)) and not isinstance(x, Raw) and len(x) > 0
            lines.append(f"{pad}{key}:\n{emit_block(x, indent + 1)}" if nested else f"{pad}{key}: {emit_block(x)}")
        return "\n".join(lines)
    if isinstance(v, list) and v:
        return "\n".join(f"{pad}-\n{emit_block(x, indent + 1)}" if isinstance(x, (dict, Pairs, list)) and x
                         else f"{pad}- {emit_block(x)}" for x in v)
    if isinstance(v, (dict, Pairs)):
        return "{}"
    return "[]" if isinstance(v, list) else _scalar(v)


def with_value(spec: dict, path: str, value):
    """A copy of ``spec`` with the field at ``path`` (``music.bpm``, ``beats[1].motion``) set to
    ``value``; ``...`` removes it."""
    spec = json.loads(json.dumps(spec))
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    target = spec
    for part in parts[:-1]:
        target = target[int(part[1:-1])] if part.startswith("[") else target[part]
    last = parts[-1]
    key = int(last[1:-1]) if last.startswith("[") else last
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return spec


def write(folder: Path, name: str, data: str | bytes) -> None:
    (folder / name).write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
