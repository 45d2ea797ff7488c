"""Small UTF-8 text objects (JSON) by relative "/"-separated key: the ``TextObjects`` interface and
its local variant (files under a directory). The S3 variant is ``pipeline.s3_store.S3TextObjects``.

Users: the generation cache index, the IO manager's manifests, and the spec registry
(``pipeline.submissions``), which also lists a folder (``listing``) and replaces an entry only if
nobody replaced it since it was read (``read_versioned`` / ``write_if``: compare-and-swap, a file
lock locally, a conditional PUT on S3), so two machines registering the same spec at once never
both think they changed it. Nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from pipeline.procs import file_lock


class TextObjects(Protocol):
    """Small UTF-8 text objects (JSON) by relative "/"-separated key: ``LocalTextObjects`` or
    ``pipeline.s3_store.S3TextObjects``."""

    def read(self, key: str) -> str | None:
        """The text at ``key``, or None if there is none."""
        ...

    def write(self, key: str, text: str) -> None:
        """Replace the text at ``key`` atomically."""
        ...

    def location(self, key: str) -> str:
        """Where ``key`` lives (a local path or an ``s3://`` URI), for metadata and messages."""
        ...

    def listing(self, folder: str = "") -> dict[str, str | None]:
        """``{name: version}`` of the objects directly in ``folder`` (not in its sub-folders; names
        starting with "." left out). ``version`` is the object's version token when the listing
        gives it for free (S3: the ETag, the same token ``read_versioned`` returns), else None."""
        ...

    def read_versioned(self, key: str) -> tuple[str, str] | None:
        """``(text, version)`` of ``key``, or None if there is none. ``version`` is an opaque token
        that changes whenever the object is replaced (``write_if`` compares it)."""
        ...

    def write_if(self, key: str, text: str, version: str | None) -> bool:
        """Write ``text`` at ``key`` only if the object is still at ``version`` (None: only if there
        is no object). True if written; False if another writer replaced (or created, or removed)
        it since it was read: read it again and decide again."""
        ...


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class LocalTextObjects:
    """Text objects as files under ``root`` (``<root>/<key>``), written with ``atomic_write_text``.
    ``write_if`` holds ``<dir>/.<name>.lock`` (flock) while it compares and writes; a version is the
    sha256 of the file's text."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def read(self, key: str) -> str | None:
        """The file's text, or None if it does not exist."""
        try:
            return (self.root / key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write(self, key: str, text: str) -> None:
        """Write the file atomically, creating directories."""
        from pipeline.store import atomic_write_text

        atomic_write_text(self.root / key, text)

    def location(self, key: str) -> str:
        """The file's path."""
        return str(self.root / key)

    def listing(self, folder: str = "") -> dict[str, str | None]:
        """``{name: None}`` of the regular files directly in ``<root>/<folder>`` (hidden names
        left out: locks and temp files); {} if the folder does not exist."""
        try:
            entries = list(os.scandir(self.root / folder))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return {e.name: None for e in sorted(entries, key=lambda e: e.name)
                if not e.name.startswith(".") and e.is_file(follow_symlinks=False)}

    def read_versioned(self, key: str) -> tuple[str, str] | None:
        """``(text, sha256 of the text)``, or None if the file does not exist."""
        text = self.read(key)
        return None if text is None else (text, _digest(text))

    def write_if(self, key: str, text: str, version: str | None) -> bool:
        """Under the key's lock file: write if the file's text still hashes to ``version`` (or,
        for None, the file does not exist)."""
        path = self.root / key
        with file_lock(path.with_name(f".{path.name}.lock")):
            current = self.read_versioned(key)
            if (current[1] if current else None) != version:
                return False
            self.write(key, text)
        return True

    def __str__(self) -> str:
        return str(self.root)


def text_objects(where: "str | Path | TextObjects") -> "TextObjects":
    """``where`` as TextObjects: TextObjects as is; an ``s3://bucket/prefix`` string becomes
    ``S3TextObjects`` (a boto3 client configured by the environment); any other str or Path is a
    local directory (``LocalTextObjects``)."""
    if isinstance(where, str) and where.startswith("s3://"):
        from pipeline.s3_store import S3Location

        bucket, _, prefix = where[len("s3://"):].partition("/")
        return S3Location(bucket, prefix).text_objects()
    return LocalTextObjects(where) if isinstance(where, (str, os.PathLike)) else where
