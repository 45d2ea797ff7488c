"""Subtitle files from narration cues: WebVTT and SubRip (SRT), safe for any user text.

Narration is user text, so nothing in it may change a file's structure: control characters are
dropped and every run of whitespace (newlines included: a blank line ends a cue) becomes one space;
in WebVTT ``&``, ``<`` and ``>`` are written ``&amp;``, ``&lt;`` and ``&gt;`` (so ``-->`` and tags
stay text); SRT has no escapes, so ``-->`` becomes ``->`` and ``<``/``>`` become the look-alikes
``‹``/``›`` (SRT players read ``<i>`` as markup). A cue's text is wrapped at ``LINE_CHARS``; a cue
longer than ``MAX_LINES`` lines is split into consecutive cues, its time shared by their lengths
(within a sentence the split is an estimate; sentence starts and ends are measured).
"""

from __future__ import annotations

import textwrap
import unicodedata

from pipeline.manifests import Cue

LINE_CHARS = 42
"""Longest subtitle line, characters (the common broadcast limit)."""
MAX_LINES = 2


def clean_text(text: str) -> str:
    """``text`` with control and format characters removed and whitespace runs collapsed to one space."""
    kept = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    return " ".join(kept.split())


def _lines(text: str) -> list[str]:
    return textwrap.wrap(text, LINE_CHARS, break_long_words=True, break_on_hyphens=False) or [text]


def display_cues(cues: list[Cue]) -> list[Cue]:
    """``cues`` with cleaned text (``clean_text``; empty ones dropped), each at most MAX_LINES lines
    of LINE_CHARS (a longer one split into consecutive cues sharing its time by characters), times
    non-decreasing and never overlapping the next cue. Cue text has its lines joined by newlines."""
    out: list[Cue] = []
    for cue in sorted(cues, key=lambda c: c.start_s):
        text = clean_text(cue.text)
        if not text or cue.end_s <= cue.start_s:
            continue
        lines = _lines(text)
        groups = [lines[i:i + MAX_LINES] for i in range(0, len(lines), MAX_LINES)]
        total = sum(len(" ".join(g)) for g in groups) or 1
        at, span = cue.start_s, cue.end_s - cue.start_s
        for g in groups:
            end = at + span * len(" ".join(g)) / total
            out.append(Cue(start_s=round(at, 3), end_s=round(end, 3), text="\n".join(g)))
            at = end
    for i in range(len(out) - 1):
        if out[i].end_s > out[i + 1].start_s:
            out[i] = out[i].model_copy(update={"end_s": out[i + 1].start_s})
    return [c for c in out if c.end_s > c.start_s]


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def vtt_escape(text: str) -> str:
    """WebVTT cue text: ``&``, ``<``, ``>`` as character references."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def srt_text(text: str) -> str:
    """SRT cue text: no markup and no timing arrow (see module doc)."""
    return text.replace("-->", "->").replace("<", "‹").replace(">", "›")


def to_vtt(cues: list[Cue], *, title: str | None = None) -> str:
    """A WebVTT file of ``cues`` (``display_cues`` applied). ``title`` (cleaned) goes into a NOTE."""
    shown = display_cues(cues)
    head = "WEBVTT\n\n"
    if title:
        head += f"NOTE {clean_text(title).replace('-->', '->')}\n\n"
    blocks = [f"{i}\n{_clock(c.start_s, '.')} --> {_clock(c.end_s, '.')}\n{vtt_escape(c.text)}\n"
              for i, c in enumerate(shown, 1)]
    return head + "\n".join(blocks)


def to_srt(cues: list[Cue]) -> str:
    """An SRT file of ``cues`` (``display_cues`` applied), numbered from 1."""
    shown = display_cues(cues)
    return "\n".join(f"{i}\n{_clock(c.start_s, ',')} --> {_clock(c.end_s, ',')}\n{srt_text(c.text)}\n"
                     for i, c in enumerate(shown, 1))


def parse_vtt(text: str) -> list[Cue]:
    """The cues of a WebVTT file as written by ``to_vtt`` (times, text with references decoded).
    For tests and tools; not a general WebVTT parser."""
    import html

    cues, block = [], []
    for line in text.splitlines() + [""]:
        if line.strip():
            block.append(line)
            continue
        timing = next((i for i, x in enumerate(block) if "-->" in x), None)
        if timing is not None:
            a, _, b = block[timing].partition("-->")
            cues.append(Cue(start_s=_seconds(a.strip()), end_s=_seconds(b.strip().split()[0]),
                            text=html.unescape("\n".join(block[timing + 1:]))))
        block = []
    return cues


def _seconds(clock: str) -> float:
    h, m, s = clock.replace(",", ".").split(":")
    return round(int(h) * 3600 + int(m) * 60 + float(s), 3)
