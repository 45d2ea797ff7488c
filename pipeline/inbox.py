"""The spec inbox: where users (or ``pipeline submit``) drop spec files: a local folder, or with S3
configured an S3 prefix (``s3://<bucket>/<prefix>/inbox/``, ``pipeline.inbox_s3``).

``scan_inbox`` is the one scan, over a small ``InboxSource`` interface (list, read, file away,
put) that ``LocalInbox`` and ``pipeline.inbox_s3.S3Inbox`` implement. It validates every entry at
the top of the inbox whose name looks like a spec (``*.yaml``, ``*.yml``, ``*.json``, not hidden),
whatever it is: in a folder a regular file, but also a FIFO, a socket, a directory or a symbolic
link (dangling, looping, or leading out of the inbox); in S3 any object, of any size. At most
1 MB is read (``pipeline.spec_file``: the size is checked before reading), UTF-8 only, parsed by the
same code as every spec (``pipeline.spec.load_spec_bytes``; character reference images named by
path are read from a local inbox's folder, and refused in S3, which has none). A valid spec is registered
(``submissions.submit_spec``) and moved to ``processed/``; anything else is moved to ``rejected/``
with ``<name>.error.txt`` beside it saying what is wrong (control characters escaped, never a link
target's path or contents). Any error while reading, validating or registering one entry rejects
that entry only: one bad file never blocks the others, and a scan never raises because of a
file's contents. Nothing is deleted or silently skipped: a name that is already taken in
``processed/`` or ``rejected/`` gets a timestamp suffix. Nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.printable import clip, printable, quoted
from pipeline.spec import SpecError, VideoSpec, load_spec_bytes
from pipeline.spec_characters import folder_of
from pipeline.spec_file import SpecInputError, read_spec_bytes
from pipeline.store import atomic_write_text
from pipeline.submissions import ProviderDefaults, Registry, Submission, submit_spec

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
SETTLE_S = 1.0
"""A file modified less than this many seconds ago may still be being written; it waits a tick."""


@dataclass
class InboxScan:
    """What one scan did: accepted submissions (with whether they changed and where the file went),
    rejected entries (where they went and why), entries still settling, and problems with the inbox
    itself (each a line of text, control characters escaped). Where an entry went is a Path for a
    local inbox and an ``inbox_s3.S3Object`` (its ``s3://`` URI) for S3; both have ``.name``."""

    accepted: list[tuple[Submission, bool, Any]] = field(default_factory=list)
    rejected: list[tuple[Any, str]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
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


def free_name(taken, name: str) -> str:
    """The name an entry called ``name`` gets in processed/ or rejected/: ``filed_name(name)``, or,
    when ``taken(candidate)`` says that name (or its ``.error.txt``) is in use, the same with a
    timestamp suffix."""
    name = filed_name(name)
    if not taken(name) and not taken(f"{name}.error.txt"):
        return name
    stem, suffix = os.path.splitext(name)
    return f"{stem}.{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**9}{suffix}"


@dataclass(frozen=True)
class InboxEntry:
    """One spec-named entry at the top of an inbox. ``name``: its file name (last part of the key);
    ``ref``: the source's handle (a Path, an object key); ``modified``: last change, seconds since
    the epoch (orders the scan); ``size``: bytes when the listing says (S3), else None;
    ``complete``: True when the entry cannot be half-written (an S3 object appears whole), so it
    is not left to settle."""

    name: str
    ref: Any
    modified: float
    size: int | None = None
    complete: bool = False


class InboxSource(Protocol):
    """Where spec files arrive: ``LocalInbox`` (a folder) or ``pipeline.inbox_s3.S3Inbox`` (an S3
    prefix). ``str(source)`` says where it is, for messages."""

    def entries(self) -> list[InboxEntry]:
        """The spec-named, not hidden entries at the top level, oldest first ([] if the inbox does
        not exist yet). Raises OSError (or the S3 client's error) if it cannot be listed."""
        ...

    def read(self, entry: InboxEntry) -> bytes:
        """The entry's bytes, at most ``spec_file.MAX_SPEC_BYTES``, its size checked before reading.
        Raises ``spec_file.SpecInputError`` (one line, no file name) for the entry's own problems."""
        ...

    def where(self, entry: InboxEntry) -> str:
        """The entry's path or URI, for messages and as a registration's ``source``."""
        ...

    def reference_folder(self, entry: InboxEntry) -> Path | None:
        """The local folder character reference images named by path are read from (the spec's
        own, ``spec_characters``); None where there is none (S3: such a spec is rejected)."""
        ...

    def target(self, entry: InboxEntry, folder: str) -> Any:
        """A free place for ``entry`` in ``folder`` ("processed" or "rejected"; ``free_name``):
        a Path, or an ``S3Object`` URI; both have ``.name``. Nothing is moved yet."""
        ...

    def file(self, entry: InboxEntry, target: Any, note: str | None = None) -> None:
        """Move ``entry`` to ``target``; with ``note``, first write it as ``<target>.error.txt``."""
        ...

    def put(self, name: str, data: bytes) -> str:
        """Add a spec called ``name`` (``pipeline submit``), atomically: the scan never sees part
        of it. Returns where it went."""
        ...


class LocalInbox:
    """An inbox folder (``PipelineResource.inbox_dir``, default ``<data>/inbox``). Entries are
    looked at with their own lstat (a link is never followed while listing, a FIFO never opened)
    and read with ``spec_file.read_spec_bytes`` (regular files only, links only inside the folder)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def entries(self) -> list[InboxEntry]:
        """(See ``InboxSource``.) Entries sorted by their own mtime, then name."""
        if not self.folder.is_dir():
            return []
        with os.scandir(self.folder) as listed:
            entries = list(listed)
        found = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.lower().endswith(SPEC_SUFFIXES):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since the listing
            found.append(InboxEntry(entry.name, Path(entry.path), info.st_mtime))
        return sorted(found, key=lambda e: (e.modified, e.name))

    def read(self, entry: InboxEntry) -> bytes:
        return read_spec_bytes(entry.ref)

    def where(self, entry: InboxEntry) -> str:
        return str(entry.ref)

    def reference_folder(self, entry: InboxEntry) -> Path:
        return folder_of(entry.ref)

    def target(self, entry: InboxEntry, folder: str) -> Path:
        place = self.folder / folder
        place.mkdir(parents=True, exist_ok=True)
        return place / free_name(lambda name: os.path.lexists(place / name), entry.name)

    def file(self, entry: InboxEntry, target: Path, note: str | None = None) -> None:
        if note is not None:
            atomic_write_text(target.with_name(target.name + ".error.txt"), note)
        os.replace(entry.ref, target)

    def put(self, name: str, data: bytes) -> str:
        """Write ``<folder>/<name>`` through a hidden temp file (never scanned) and a rename."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / name
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(target)

    def __str__(self) -> str:
        return str(self.folder)


def inbox_source(where: "str | Path | InboxSource") -> InboxSource:
    """``where`` as an InboxSource: a source as is; an ``s3://bucket/prefix`` string (the inbox
    prefix itself) is an ``S3Inbox`` with a boto3 client from the environment; any other str or
    Path a local folder."""
    if isinstance(where, str) and where.startswith("s3://"):
        from pipeline.inbox_s3 import S3Inbox

        return S3Inbox.at(where)
    return LocalInbox(where) if isinstance(where, (str, os.PathLike)) else where


def _carried_references(spec: VideoSpec, where: str) -> None:
    """Raise SpecError if a character's reference image is still a path: an inbox without a local
    folder (S3) has nothing to read it from, and a run must never look for it later."""
    paths = [f"characters.{clip(name, 40)}.reference_image: {quoted(char.reference_image, 80)} names a file, and this "
             "inbox has no folder to read it from; submit the spec with `pipeline submit`, which carries the image "
             "in the spec" for name, char in (spec.characters or {}).items() if isinstance(char.reference_image, str)]
    if paths:
        raise SpecError(where, paths)


def _problem(exc: BaseException) -> str:
    return printable(getattr(exc, "strerror", None) or exc)


def _reject(source: InboxSource, entry: InboxEntry, reason: str, result: InboxScan) -> None:
    """Move ``entry`` (whatever it is) to ``rejected/`` with ``<name>.error.txt`` beside it."""
    reason = printable(reason, multiline=True)
    try:
        target = source.target(entry, "rejected")
        source.file(entry, target, reason + "\n")
    except Exception as exc:
        result.errors.append(f"cannot move {printable(entry.name)} to {printable(source)}/rejected: "
                             f"{_problem(exc)}; it stays in the inbox")
        return
    result.rejected.append((target, reason))


def scan_inbox(registry: Registry, inbox: "str | Path | InboxSource", *, provider: str | None = None,
               defaults: ProviderDefaults | None = None, settle_s: float = SETTLE_S) -> InboxScan:
    """Validate, register (in ``registry``: ``PipelineResource.specs``, or a ``Workspace``) and file
    away every spec-named entry at the top of ``inbox`` (a folder, an ``s3://`` inbox prefix, or an
    ``InboxSource``: ``PipelineResource.inbox``), oldest first.

    Each spec is registered with the provider and models ``submissions.resolve_provider`` picks:
    ``provider`` (an explicit choice for every entry; None: none) > the spec's ``provider`` >
    ``defaults`` (the deployment's, ``PipelineResource.provider_defaults()``) > ``local``; a model
    choice that does not fit (an unknown model, overrides for a local video) rejects the entry.
    Entries modified less than ``settle_s`` seconds ago wait for a later scan (not S3 objects:
    they appear whole). Returns what was accepted, rejected and left waiting; never raises for an
    entry's contents or type (any Exception while reading, validating or registering one entry
    rejects that entry alone), nor for an inbox it cannot list (``errors``).
    """
    defaults = defaults or ProviderDefaults()
    source = inbox_source(inbox)
    result = InboxScan()
    try:
        entries = source.entries()
    except Exception as exc:
        result.errors.append(f"cannot list the inbox {printable(source)}: {_problem(exc)}")
        return result
    now = time.time()
    for entry in entries:
        if not entry.complete and now - entry.modified < settle_s:
            result.waiting.append(source.where(entry))
            continue
        where = source.where(entry)
        try:
            try:
                data = source.read(entry)
            except SpecInputError as exc:
                raise SpecError(where, [f"the file {exc}"]) from None
            folder = source.reference_folder(entry)
            spec = load_spec_bytes(data, where, folder=folder)
            if folder is None:
                _carried_references(spec, where)
        except SpecError as exc:
            _reject(source, entry, str(exc), result)
            continue
        except Exception as exc:  # not a spec problem we know of: still this entry's problem alone
            _reject(source, entry, f"{where}: could not be read or validated: {type(exc).__name__}: {exc}", result)
            continue
        try:
            target = source.target(entry, "processed")
            submission, changed = submit_spec(registry, spec, source=str(target), provider=provider,
                                              defaults=defaults)
            source.file(entry, target)
        except SpecError as exc:  # e.g. model overrides on a video the deployment renders locally
            _reject(source, entry, str(exc).replace(str(target), where), result)
            continue
        except Exception as exc:
            _reject(source, entry, f"{where}: valid, but could not be registered: {type(exc).__name__}: {exc}", result)
            continue
        result.accepted.append((submission, changed, target))
    return result
