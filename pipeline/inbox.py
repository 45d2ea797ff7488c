"""The spec inbox: a folder users (or ``pipeline submit``) drop spec files into.

``scan_inbox`` validates every entry at the top of the inbox whose name looks like a spec
(``*.yaml``, ``*.yml``, ``*.json``, not hidden), whatever it is: a regular file, but also a FIFO,
a socket, a directory or a symbolic link (dangling, looping, or leading out of the inbox). A valid
spec is registered (``submissions.submit_spec``) and moved to ``processed/``; anything else is moved
to ``rejected/`` with ``<name>.error.txt`` beside it saying what is wrong (control characters
escaped, never a link target's path or contents). Any error while reading, validating or
registering one entry rejects that entry only: one bad file never blocks the others, and a scan
never raises because of a file's contents. Nothing is deleted or silently skipped: a name that is
already taken in ``processed/`` or ``rejected/`` gets a timestamp suffix. Nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.printable import printable
from pipeline.spec import SpecError, load_spec
from pipeline.store import Workspace, atomic_write_text
from pipeline.submissions import ProviderDefaults, Submission, submit_spec

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
SETTLE_S = 1.0
"""A file modified less than this many seconds ago may still be being written; it waits a tick."""


@dataclass
class InboxScan:
    """What one scan did: accepted submissions (with whether they changed), rejected entries (where
    they went and why), entries still settling, and problems with the inbox itself (each a line of
    text, control characters escaped)."""

    accepted: list[tuple[Submission, bool, Path]] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    waiting: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


MAX_NAME_BYTES = 200
"""Longest file name kept as is in processed/ and rejected/: room for a timestamp and ``.error.txt``
within the usual 255-byte limit. A longer name is cut and given a hash of the whole."""


def filed_name(name: str) -> str:
    """The name an inbox entry called ``name`` gets in processed/ or rejected/ (before any
    timestamp suffix): ``name`` itself, or, over MAX_NAME_BYTES, a cut name plus a hash of the whole."""
    raw = os.fsencode(name)
    if len(raw) <= MAX_NAME_BYTES:
        return name
    stem, suffix = os.path.splitext(name)
    keep = os.fsencode(stem)[:MAX_NAME_BYTES - 40].decode("utf-8", "ignore")
    return f"{keep}-{hashlib.sha256(raw).hexdigest()[:12]}{suffix[:12]}"


def _free_name(folder: Path, name: str) -> Path:
    name = filed_name(name)
    target = folder / name
    if not os.path.lexists(target) and not os.path.lexists(f"{target}.error.txt"):
        return target
    stem, suffix = os.path.splitext(name)
    return folder / f"{stem}.{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**9}{suffix}"


def _candidates(inbox: Path, result: InboxScan) -> list[tuple[float, Path]]:
    """(mtime, path) of every spec-named entry at the top of ``inbox``, oldest first. The entry's
    own lstat is used: a link is never followed here, a FIFO never opened."""
    try:
        entries = list(os.scandir(inbox))
    except OSError as exc:
        result.errors.append(f"cannot list the inbox {printable(inbox)}: {printable(exc.strerror or exc)}")
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.lower().endswith(SPEC_SUFFIXES):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # gone since the listing
        found.append((info.st_mtime, Path(entry.path)))
    return sorted(found, key=lambda item: (item[0], item[1].name))


def _reject(path: Path, rejected: Path, reason: str, result: InboxScan) -> None:
    """Move ``path`` (whatever it is) to ``rejected/`` and write ``<name>.error.txt`` beside it."""
    reason = printable(reason, multiline=True)
    try:
        rejected.mkdir(parents=True, exist_ok=True)
        target = _free_name(rejected, path.name)
        atomic_write_text(target.with_name(target.name + ".error.txt"), reason + "\n")
        os.replace(path, target)
    except OSError as exc:
        result.errors.append(f"cannot move {printable(path.name)} to {printable(rejected)}: "
                             f"{printable(exc.strerror or exc)}; it stays in the inbox")
        return
    result.rejected.append((target, reason))


def scan_inbox(workspace: Workspace, inbox: Path, *, provider: str | None = None,
               defaults: ProviderDefaults | None = None, settle_s: float = SETTLE_S) -> InboxScan:
    """Validate, register and file away every spec-named entry at the top of ``inbox``, oldest first.

    Each spec is registered with the provider and models ``submissions.resolve_provider`` picks:
    ``provider`` (an explicit choice for every entry; None: none) > the spec's ``provider`` >
    ``defaults`` (the deployment's, ``PipelineResource.provider_defaults()``) > ``local``; a model
    choice that does not fit (an unknown model, overrides for a local video) rejects the entry.
    Entries modified less than ``settle_s`` seconds ago wait for a later scan. Returns what was
    accepted, rejected and left waiting; never raises for an entry's contents or type (any
    Exception while reading, validating or registering one entry rejects that entry alone).
    """
    defaults = defaults or ProviderDefaults()
    result = InboxScan()
    if not inbox.is_dir():
        return result
    processed, rejected = inbox / "processed", inbox / "rejected"
    now = time.time()
    for mtime, path in _candidates(inbox, result):
        if now - mtime < settle_s:
            result.waiting.append(path)
            continue
        try:
            spec = load_spec(path)
        except SpecError as exc:
            _reject(path, rejected, str(exc), result)
            continue
        except Exception as exc:  # not a spec problem we know of: still this entry's problem alone
            _reject(path, rejected, f"{path}: could not be read or validated: {type(exc).__name__}: {exc}", result)
            continue
        try:
            processed.mkdir(parents=True, exist_ok=True)
            target = _free_name(processed, path.name)
            submission, changed = submit_spec(workspace, spec, source=str(target), provider=provider,
                                              defaults=defaults)
            os.replace(path, target)
        except SpecError as exc:  # e.g. model overrides on a video the deployment renders locally
            _reject(path, rejected, str(exc).replace(str(target), str(path)), result)
            continue
        except Exception as exc:
            _reject(path, rejected, f"{path}: valid, but could not be registered: {type(exc).__name__}: {exc}", result)
            continue
        result.accepted.append((submission, changed, target))
    return result

