"""Where the pipeline keeps things on disk: the workspace layout, the content-addressed media
store, the generation cache, and atomic file writes.

Everything is written atomically (temp file in the same directory, then ``os.replace``) so a
crash never leaves a half-written file where a reader would find it.
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
from typing import Iterator

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
    """Cache key -> manifest of the stored output (JSON files under ``root``).

    A hit needs both the entry and its media file; anything else is a miss.
    """

    def __init__(self, root: str | Path, store: LocalMediaStore):
        self.root = Path(root)
        self.store = store

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> MediaManifest | None:
        path = self._path(key)
        try:
            manifest = MediaManifest.model_validate_json(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not self.store.has(manifest.uri, manifest.sha256, manifest.bytes):
            return None
        return manifest

    def put(self, key: str, manifest: MediaManifest) -> None:
        atomic_write_text(self._path(key), manifest.model_dump_json(indent=2))
