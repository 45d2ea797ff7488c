"""Where the pipeline keeps things: the workspace layout, the content-addressed media store, small
text objects (cache index, manifests), the generation cache, and atomic file writes.

Two small interfaces, each with a local variant and an S3 variant in ``pipeline.s3_store``:
``MediaStore`` (put / local_path / has, here) and ``TextObjects`` (read / write / location / listing /
compare-and-swap, in ``pipeline.text_objects``, re-exported here). Which variant is used is
configuration (``PipelineResource``); nothing else knows.

Everything is written atomically (temp file in the same directory, then ``os.replace``; one PUT on
S3) so a crash never leaves a half-written file where a reader would find it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Literal, Protocol

from pipeline.housekeeping import owned_mkstemp_prefix, owned_name, owned_temp_path
from pipeline.manifests import MediaManifest
from pipeline.procs import file_lock
from pipeline.text_objects import LocalTextObjects, TextObjects, text_objects  # noqa: F401 (re-exported)

log = logging.getLogger("pipeline.store")

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=owned_mkstemp_prefix(path), suffix=".tmp")
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
        """A fresh work directory ``tmp/<label>@<owner>@<random>`` (same filesystem as the store),
        removed afterwards; if this process is killed, ``pipeline.housekeeping.sweep_temp`` removes it."""
        path = self.tmp / owned_name(label.replace("@", "_").replace("/", "_"))
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


Integrity = Literal["ok", "missing", "corrupt"]
"""What ``MediaStore.check`` found: the exact bytes, nothing, or other bytes than the address says."""


class MediaStore(Protocol):
    """Content-addressed media: ``LocalMediaStore`` or ``pipeline.s3_store.S3MediaStore``."""

    scheme: str

    def put(self, src: str | Path, ext: str | None = None) -> tuple[str, str, int]:
        """Store the file ``src`` (consumed) under its sha256. Returns (uri, sha256, bytes)."""
        ...

    def local_path(self, uri: str) -> Path:
        """A readable local file with the bytes at ``uri``. FileNotFoundError if gone."""
        ...

    def check(self, uri: str, sha256: str, size: int) -> Integrity:
        """Whether ``uri`` holds exactly ``size`` bytes hashing to ``sha256`` ("ok"), nothing
        ("missing"), or anything else ("corrupt")."""
        ...

    def quarantine(self, uri: str, sha256: str, size: int) -> str | None:
        """Move a corrupt ``uri`` aside (never deleted). Returns where it went, or None if it was
        not corrupt (any more) when looked at again under the store's lock."""
        ...

    def has(self, uri: str, sha256: str, size: int) -> bool:
        """True if ``check`` says "ok"."""
        ...


def check_file(path: str | Path, sha256: str, size: int) -> Integrity:
    """"ok" if ``path`` holds ``size`` bytes hashing to ``sha256`` (hashes the whole file unless
    the size already differs), "corrupt" if it holds anything else, "missing" if it does not exist."""
    try:
        if Path(path).stat().st_size != size:
            return "corrupt"
        return "ok" if sha256_file(path) == sha256 else "corrupt"
    except FileNotFoundError:
        return "missing"


def utc_stamp() -> str:
    """The current UTC time as ``20250101T120000.123456Z`` (safe in file names and object keys)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


class LocalMediaStore:
    """Content-addressed media files under ``root``: ``<sha[:2]>/<sha><ext>``, URI ``file://...``.

    ``put`` moves a verified file in atomically (read-only, mode 0444); putting the same bytes
    twice is a no-op. ``check`` re-hashes the file (sha256: about 13 ms for the 25 files, 17 MB,
    of a 40 s video on this 2-core machine, warm page cache), so a file edited in place is never
    reused; ``quarantine`` moves such a file to ``<root>/quarantine/`` with a JSON note beside it.
    """

    scheme = "file"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def quarantine_dir(self) -> Path:
        """Where corrupt entries are moved: ``<root>/quarantine/``."""
        return self.root / "quarantine"

    def path_for(self, sha256: str, ext: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def put(self, src: str | Path, ext: str | None = None) -> tuple[str, str, int]:
        """Move ``src`` into the store. Returns (uri, sha256, bytes). ``src`` is consumed.

        An entry already at the address is kept if its bytes are intact, else quarantined and
        replaced. The temp file beside the entry is removed on any error."""
        src = Path(src)
        ext = ext if ext is not None else src.suffix
        digest = sha256_file(src)
        size = src.stat().st_size
        dest = self.path_for(digest, ext)
        if dest.exists() and check_file(dest, digest, size) == "ok":
            src.unlink(missing_ok=True)
            return dest.as_uri(), digest, size
        if dest.exists():
            self.quarantine(dest.as_uri(), digest, size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = owned_temp_path(dest)
        try:
            shutil.move(str(src), tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest.as_uri(), digest, size

    def local_path(self, uri: str) -> Path:
        """A readable local path for ``uri``. Raises FileNotFoundError if the file is gone,
        ValueError for a URI that is not ``file://``."""
        if not uri.startswith("file://"):
            raise ValueError(f"not a local media URI: {uri}")
        path = Path(uri[len("file://"):])
        if not path.exists():
            raise FileNotFoundError(f"media file missing from the store: {path}")
        return path

    def check(self, uri: str, sha256: str, size: int) -> Integrity:
        """"ok" if ``uri`` holds ``size`` bytes hashing to ``sha256`` (read and hashed in full),
        "missing" if there is no such file (or ``uri`` is not this store's address of
        ``sha256``), "corrupt" if it holds other bytes."""
        try:
            path = self.local_path(uri)
        except (FileNotFoundError, ValueError):
            return "missing"
        if not path.name.startswith(sha256):
            return "missing"
        return check_file(path, sha256, size)

    def quarantine(self, uri: str, sha256: str, size: int) -> str | None:
        """Move ``uri`` to ``quarantine/<name>.<utc>`` if it is corrupt (checked again under a
        lock, so an entry repaired by another process meanwhile stays), with a ``.json`` note
        (expected and found sha256 and size). Returns the quarantined path, or None."""
        path = Path(uri[len("file://"):]) if uri.startswith("file://") else None
        if path is None:
            return None
        with file_lock(self.quarantine_dir / ".lock"):
            if check_file(path, sha256, size) != "corrupt":
                return None
            found = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
            target = self.quarantine_dir / f"{path.name}.{utc_stamp()}"
            try:
                os.replace(path, target)
            except FileNotFoundError:
                return None
            atomic_write_text(target.with_name(target.name + ".json"), json.dumps(
                {"uri": uri, "expected": {"bytes": size, "sha256": sha256}, "found": found,
                 "quarantined_at": utc_stamp()}, indent=2))
        return str(target)

    def has(self, uri: str, sha256: str, size: int) -> bool:
        """True if ``uri`` holds exactly these bytes (``check`` is "ok"; reads the whole file)."""
        return self.check(uri, sha256, size) == "ok"


PAID_FREE_PROVIDERS = ("local", "ffmpeg")
"""Providers whose outputs cost nothing to make again."""


def _corruption_warning(manifest: MediaManifest, where: str, moved_to: str) -> str:
    paid = max(manifest.cost_usd, getattr(manifest, "price_usd", 0.0) or 0.0)
    message = (f"media store entry {where} is corrupted (its bytes no longer hash to sha256 "
               f"{manifest.sha256[:16]}…, {manifest.bytes} bytes): moved it to {moved_to} and "
               f"regenerating it ({manifest.provider} {manifest.model}, {manifest.media_type}).")
    if paid > 0 or manifest.provider not in PAID_FREE_PROVIDERS:
        message += (f" It was a paid output (${paid:.4f}, prediction {manifest.prediction_id or 'unknown'}): "
                    "regenerating may pay again (the replicate provider first tries to re-download a "
                    "succeeded prediction for free).")
    return message


class GenerationCache:
    """Cache key -> manifest of the stored output: JSON text objects ``<key[:2]>/<key>.json``
    under ``root`` (a local directory, or any ``TextObjects`` such as an S3 prefix).

    A hit needs the entry and its media, verified (``MediaStore.check``); anything else is a
    miss. A corrupt medium is quarantined and a WARNING logged (logger ``pipeline.store``).
    """

    def __init__(self, root: "str | Path | TextObjects", store: MediaStore):
        self.objects = text_objects(root)
        self.store = store

    @staticmethod
    def _key(key: str) -> str:
        return f"{key[:2]}/{key}.json"

    def get(self, key: str) -> MediaManifest | None:
        """The cached manifest for ``key`` if its entry and its intact media are both stored,
        else None (the caller regenerates)."""
        text = self.objects.read(self._key(key))
        if text is None:
            return None
        try:
            manifest = MediaManifest.model_validate_json(text)
        except ValueError:
            return None
        state = self.store.check(manifest.uri, manifest.sha256, manifest.bytes)
        if state == "ok":
            return manifest
        if state == "corrupt":
            moved_to = self.store.quarantine(manifest.uri, manifest.sha256, manifest.bytes)
            if moved_to is None:  # repaired by another process meanwhile
                return manifest if self.store.has(manifest.uri, manifest.sha256, manifest.bytes) else None
            log.warning(_corruption_warning(manifest, manifest.uri, moved_to))
        return None

    def put(self, key: str, manifest: MediaManifest) -> None:
        """Record ``manifest`` as the output of ``key`` (atomically replacing any entry)."""
        self.objects.write(self._key(key), manifest.model_dump_json(indent=2))
