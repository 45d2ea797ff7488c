"""Terminal output for the ``pipeline`` CLI: nothing user-written is ever interpreted.

Spec files, prompts, titles, file names, video ids typed on the command line and error messages
all reach the terminal. The rules, enforced here for every command:

- The consoles have rich markup, emoji codes and highlighting **off**: a prompt ``[/oops]`` or
  ``[bold]`` or ``:smile:`` prints as written (it used to crash the printer or restyle the output).
- Every piece of text goes through ``pipeline.printable.printable`` on its way into a
  ``rich.text.Text``: ANSI/OSC escape sequences, carriage returns, bidi overrides and other control
  characters print as visible escapes (``\\x1b[31m``) and never act on the terminal.
- Styles come from code only: ``line(("error", "red"), ": ", message)``; a str part is plain text.

Use ``say``/``shout`` for lines, ``cell`` for table cells and titles, ``TextColumn(..., markup=False)``
in progress bars. Nothing here imports Dagster.
"""

from __future__ import annotations

import sys
from typing import Union

from rich.console import Console
from rich.text import Text

from pipeline.printable import printable

console = Console(highlight=False, markup=False, emoji=False)
err_console = Console(stderr=True, highlight=False, markup=False, emoji=False)

Part = Union[str, Text, tuple]
"""A piece of a line: text (escaped, unstyled), a ``(text, style)`` pair, or a ready Text."""


def cell(value: object, style: str = "", *, multiline: bool = False) -> Text:
    """``value`` as a Text with control characters escaped and no markup: for table cells and titles."""
    return Text(printable(value, multiline=multiline), style=style)


def line(*parts: Part, multiline: bool = False) -> Text:
    """One output line from parts (see ``Part``); every text part is escaped with ``printable``.
    ``multiline`` keeps ``\\n`` in the parts as line breaks (for multi-line error messages)."""
    out = Text()
    for part in parts:
        if isinstance(part, Text):
            out.append_text(part)
        elif isinstance(part, tuple):
            out.append(printable(part[0], multiline=multiline), style=part[1])
        else:
            out.append(printable(part, multiline=multiline))
    return out


def say(*parts: Part, multiline: bool = False, stream: Console | None = None) -> None:
    """Print one line to stdout (or ``stream``), never wrapped in the middle of a path or message."""
    (stream or console).print(line(*parts, multiline=multiline), soft_wrap=True)


def shout(*parts: Part, multiline: bool = False) -> None:
    """``say`` on stderr: errors and warnings."""
    say(*parts, multiline=multiline, stream=err_console)


def error(message: object, *, label: str = "error") -> None:
    """``error: <message>`` on stderr; the message may span lines (each escaped)."""
    shout((label, "red"), ": ", str(message), multiline=True)


def safe_streams() -> None:
    """Let stdout/stderr write any text: characters the terminal's encoding cannot represent are
    written as backslash escapes instead of raising UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
