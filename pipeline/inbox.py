"""The spec inbox: a folder users (or ``pipeline submit``) drop spec files into.

``scan_inbox`` validates every spec file at the top of the inbox. A valid one is registered
(``submissions.submit_spec``) and moved to ``processed/``; an invalid one is moved to
``rejected/`` with ``<name>.error.txt`` beside it saying what is wrong. Nothing is deleted or
silently skipped: a name that is already taken in ``processed/`` or ``rejected/`` gets a
timestamp suffix. Nothing here imports Dagster.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.spec import SpecError, load_spec
from pipeline.store import Workspace, atomic_write_text
from pipeline.submissions import Submission, submit_spec

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
SETTLE_S = 1.0
"""A file modified less than this many seconds ago may still be being written; it waits a tick."""


@dataclass
class InboxScan:
    """What one scan did: accepted submissions (with whether they changed), rejected files."""

    accepted: list[tuple[Submission, bool, Path]] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    waiting: list[Path] = field(default_factory=list)


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    if not target.exists():
        return target
    stem, suffix = os.path.splitext(name)
    return folder / f"{stem}.{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6}{suffix}"


def scan_inbox(workspace: Workspace, inbox: Path, *, provider: str = "local", settle_s: float = SETTLE_S) -> InboxScan:
    """Validate, register and file away every spec file at the top of ``inbox`` (oldest first)."""
    result = InboxScan()
    if not inbox.is_dir():
        return result
    processed, rejected = inbox / "processed", inbox / "rejected"
    now = time.time()
    files = sorted((p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() in SPEC_SUFFIXES
                    and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for path in files:
        if now - path.stat().st_mtime < settle_s:
            result.waiting.append(path)
            continue
        try:
            spec = load_spec(path)
        except (SpecError, UnicodeDecodeError) as exc:
            rejected.mkdir(parents=True, exist_ok=True)
            target = _free_name(rejected, path.name)
            atomic_write_text(target.with_name(target.name + ".error.txt"), f"{exc}\n")
            os.replace(path, target)
            result.rejected.append((target, str(exc)))
            continue
        processed.mkdir(parents=True, exist_ok=True)
        target = _free_name(processed, path.name)
        submission, changed = submit_spec(workspace, spec, source=str(target), provider=provider)
        os.replace(path, target)
        result.accepted.append((submission, changed, target))
    return result
