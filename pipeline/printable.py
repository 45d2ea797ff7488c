"""Make user-written text safe to show: control characters become visible escapes.

Spec files, file names, prompts and error messages end up on terminals, in Dagster logs and in
``.error.txt`` files. A carriage return, an ANSI/OSC escape sequence (``\\x1b[31m``,
``\\x1b]0;title\\x07``), a bidirectional override (U+202E) or an unpaired surrogate in them must
never act on the reader's terminal or reorder what they see, so ``printable`` replaces every
such character with a Python-style escape (``\\x1b``, ``\\r``, ``\\u202e``). Rich markup is a
separate matter: the CLI prints user text as ``rich.text.Text`` with markup off (see ``pipeline.cli``).
Nothing here imports Dagster or rich.
"""

from __future__ import annotations

import unicodedata

_KEEP_FORMAT = {"\u200c", "\u200d"}
"""Format characters that are left alone: zero-width (non-)joiners, which build emoji and scripts."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    category = unicodedata.category(ch)
    # Cc: C0/C1 controls and DEL. Cs: unpaired surrogates (not encodable). Cf: bidi overrides and
    # isolates, invisible tags, BOMs. Zl/Zp: line and paragraph separators.
    return category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and ch not in _KEEP_FORMAT)


def printable(text: object, *, multiline: bool = False, limit: int | None = None) -> str:
    """``str(text)`` with every control, format, surrogate and line-separator character escaped.

    ``multiline``: keep ``\\n`` as a real line break (everything else, ``\\r`` and ``\\t``
    included, is still escaped). ``limit``: cut the result to at most ``limit`` characters
    (plus an ellipsis and the count of characters left out). Never raises for any ``str``.
    """
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:  # e.g. an int too long to convert, an object with a broken __str__
            text = f"<{type(text).__name__}>"
    if limit is not None and len(text) > limit:
        # Escapes lengthen the text; cut the input first so a huge string costs O(limit).
        text = text[:limit]
        cut = True
    else:
        cut = False
    out = "".join(ch if (ch == "\n" and multiline) or not _unsafe(ch) else _escape(ch) for ch in text)
    if limit is not None and len(out) > limit:
        out, cut = out[:limit], True
    return out + "…" if cut else out


def clip(text: object, limit: int = 80) -> str:
    """``printable(text)`` on one line, cut to ``limit`` characters: for quoting user input in messages."""
    return printable(text, limit=limit)


def quoted(text: object, limit: int = 60) -> str:
    """``text`` as a quoted, one-line, escaped and clipped value for messages: ``'ab\\x1bc'``."""
    return "'" + clip(text, limit) + "'"
