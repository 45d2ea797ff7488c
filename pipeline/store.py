"""Where the pipeline keeps things: the workspace layout, the content-addressed media store, small
text objects (cache index, manifests), the generation cache, and atomic file writes.

Two small interfaces, each with a local variant here and an S3 variant in ``pipeline.s3_store``:
``MediaStore`` (put / local_path / has) and ``TextObjects`` (read / write / location). Which
variant is used is configuration (``PipelineResource``); nothing else knows.

Everything is written atomically (temp file in the same directory, then ``os.replace``; one PUT on
S3) so a crash never leaves a half-written file where a reader would find it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from pipeline.manifests import MediaManifest

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Workspace:
    """The directory layout under the data directory (see data/README.md)."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "Workspace":
        return cls(Path(root).expanduser().resolve())

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def specs(self) -> Path:
        return self.root / "specs"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def s3cache(self) -> Path:
        """Local read-through cache of media downloaded from the S3 media store."""
        return self.root / "s3cache"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @contextmanager
    def scratch(self, label: str) -> Iterator[Path]:
        """A fresh work directory under ``tmp/`` (same filesystem as the store), removed afterwards."""
        path = self.tmp / f"{label}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


class MediaStore(Protocol):
    """Content-addressed media: ``LocalMediaStore`` or ``pipeline.s3_store.S3MediaStore``."""

    scheme: str

    def put(self, src: str | Path, ext: str | None = None) -> tuple[str, str, int]:
        """Store the file ``src`` (consumed) under its sha256. Returns (uri, sha256, bytes)."""
        ...

    def local_path(self, uri: str) -> Path:
        """A readable local file with the bytes at ``uri``. FileNotFoundError if gone."""
        ...

    def has(self, uri: str, sha256: str, size: int) -> bool:
        """True if ``uri`` is stored with ``size`` bytes under ``sha256``'s address."""
        ...


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


class LocalTextObjects:
    """Text objects as files under ``root`` (``<root>/<key>``), written with ``atomic_write_text``."""

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
        atomic_write_text(self.root / key, text)

    def location(self, key: str) -> str:
        """The file's path."""
        return str(self.root / key)

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


class LocalMediaStore:
    """Content-addressed media files under ``root``: ``<sha[:2]>/<sha><ext>``, URI ``file://...``.

    ``put`` moves a verified file in atomically; putting the same bytes twice is a no-op.
    """

    scheme = "file"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, sha256: str, ext: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def put(self, src: str | Path, ext: str | None = None) -> tuple[str, str, int]:
        """Move ``src`` into the store. Returns (uri, sha256, bytes). ``src`` is consumed."""
        src = Path(src)
        ext = ext if ext is not None else src.suffix
        digest = sha256_file(src)
        size = src.stat().st_size
        dest = self.path_for(digest, ext)
        if dest.exists() and dest.stat().st_size == size:
            src.unlink(missing_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            shutil.move(str(src), tmp)
            os.replace(tmp, dest)
        return dest.as_uri(), digest, size

    def local_path(self, uri: str) -> Path:
        """A readable local path for ``uri``. Raises FileNotFoundError if the file is gone."""
        if not uri.startswith("file://"):
            raise ValueError(f"not a local media URI: {uri}")
        path = Path(uri[len("file://"):])
        if not path.exists():
            raise FileNotFoundError(f"media file missing from the store: {path}")
        return path

    def has(self, uri: str, sha256: str, size: int) -> bool:
        """True if ``uri`` holds ``size`` bytes (a cheap check; content is verified on put)."""
        try:
            return self.local_path(uri).stat().st_size == size and sha256 in uri
        except (FileNotFoundError, ValueError):
            return False


class GenerationCache:
    """Cache key -> manifest of the stored output: JSON text objects ``<key[:2]>/<key>.json``
    under ``root`` (a local directory, or any ``TextObjects`` such as an S3 prefix).

    A hit needs both the entry and its media file; anything else is a miss.
    """

    def __init__(self, root: "str | Path | TextObjects", store: MediaStore):
        self.objects = text_objects(root)
        self.store = store

    @staticmethod
    def _key(key: str) -> str:
        return f"{key[:2]}/{key}.json"

    def get(self, key: str) -> MediaManifest | None:
        """The cached manifest for ``key`` if its entry and its media are both stored, else None."""
        text = self.objects.read(self._key(key))
        if text is None:
            return None
        try:
            manifest = MediaManifest.model_validate_json(text)
        except ValueError:
            return None
        if not self.store.has(manifest.uri, manifest.sha256, manifest.bytes):
            return None
        return manifest

    def put(self, key: str, manifest: MediaManifest) -> None:
        """Record ``manifest`` as the output of ``key`` (atomically replacing any entry)."""
        self.objects.write(self._key(key), manifest.model_dump_json(indent=2))
