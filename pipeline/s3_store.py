"""The S3 variants of the store's interfaces: media store and text objects in one bucket.

Layout under ``s3://<bucket>/<prefix>/``:

- ``media/<sha[:2]>/<sha><ext>``: content-addressed media (``S3MediaStore``), URI ``s3://...``;
- ``cache/<key[:2]>/<key>.json``: the generation cache index (``S3TextObjects``);
- ``manifests/<asset>/<video>[/<segment>].json``: the IO manager's manifests (``S3TextObjects``,
  ``pipeline.s3_text``);
- ``specs/<video_id>.json``: the spec registry (``pipeline.submissions``, ``S3TextObjects``);
- ``videos/<video_id>.mp4``: published final videos (``S3MediaStore.publish``);
- ``inbox/``: spec files for the inbox sensor (``pipeline.inbox_s3``).

Every object is written with a single PUT, which S3 makes visible atomically (readers see the
whole old object or the whole new one, never a part). Reads of media go through a local
read-through cache directory (``<data>/s3cache`` by default), so stages get an ordinary local
file from ``local_path``.

boto3 clients are not fork-safe, and the render command forks worker processes that reuse the
parent's objects: everything here takes an ``S3ClientProvider``, which creates one client per
process, lazily. No Dagster import: the Dagster layer passes ``S3Resource.get_client``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from botocore.exceptions import ClientError

from pipeline.housekeeping import owned_mkstemp_prefix, owned_temp_path
from pipeline.s3_text import S3TextObjects, is_missing
from pipeline.store import CHUNK, Integrity, check_file, sha256_file, utc_stamp

log = logging.getLogger("pipeline.store")


class S3ClientProvider:
    """One boto3 S3 client per process, created on first use by ``factory()`` (zero arguments).

    Calling the provider returns this process's client: a forked child never uses its parent's
    client (boto3 clients hold connection pools and are not fork-safe). ``factory`` is typically
    dagster-aws ``S3Resource.get_client``.
    """

    def __init__(self, factory: Callable[[], Any] | None):
        self._factory = factory
        self._state: tuple[int, Any] | None = None
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    @classmethod
    def of(cls, client_or_factory: Any) -> "S3ClientProvider":
        """A provider from a provider (returned as is), a zero-argument factory, or a boto3 client
        (usable in this process only: calling the provider in another one raises RuntimeError)."""
        if isinstance(client_or_factory, S3ClientProvider):
            return client_or_factory
        if callable(client_or_factory) and not hasattr(client_or_factory, "head_object"):
            return cls(client_or_factory)
        provider = cls(None)
        provider._state = (os.getpid(), client_or_factory)
        return provider

    def __call__(self) -> Any:
        """This process's client (made now if this process has none yet)."""
        pid = os.getpid()
        state = self._state
        if state is not None and state[0] == pid:
            return state[1]
        if self._lock_pid != pid:  # a lock copied by fork may be held by a thread that no longer exists
            self._lock, self._lock_pid = threading.Lock(), pid
        with self._lock:
            state = self._state
            if state is None or state[0] != pid:
                if self._factory is None:
                    raise RuntimeError("this boto3 client belongs to another process; pass a client factory")
                self._state = state = (pid, self._factory())
            return state[1]


_SHARED: dict[str, S3ClientProvider] = {}


def shared_client_provider(key: str, factory: Callable[[], Any]) -> S3ClientProvider:
    """The process-wide provider for ``key`` (a string naming the client configuration), made
    from ``factory`` the first time. Every store, cache and IO manager configured alike then shares
    one client per process (making a client takes 0.3 s to seconds: boto3 loads its models anew
    for every session) however often Dagster re-creates resources."""
    provider = _SHARED.get(key)
    if provider is None:
        provider = _SHARED.setdefault(key, S3ClientProvider(factory))  # atomic: one winner
    return provider


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key). Raises ValueError for anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ValueError(f"not an S3 object URI: {uri}")
    return bucket, key


@dataclass
class S3Location:
    """A bucket and a key prefix ("" for the bucket root), and the clients to reach them.

    ``client``: an ``S3ClientProvider`` (or a boto3 client, or a zero-argument factory of one).
    """

    bucket: str
    prefix: str = ""
    client: Any = None
    _provider: S3ClientProvider = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("an S3 location needs a bucket")
        if self.client is None:
            import boto3

            self.client = lambda: boto3.session.Session().client("s3")
        self.prefix = self.prefix.strip("/")
        self._provider = S3ClientProvider.of(self.client)

    def s3(self) -> Any:
        """This process's boto3 S3 client."""
        return self._provider()

    def key(self, *parts: str) -> str:
        """The object key of ``parts`` joined with "/" under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))

    def uri(self, key: str) -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.bucket}/{key}"

    def child(self, name: str) -> "S3Location":
        """The same bucket and clients with ``name`` appended to the prefix."""
        return S3Location(self.bucket, self.key(name), self._provider)

    def text_objects(self) -> "S3TextObjects":
        """Text objects stored under this location."""
        return S3TextObjects(self)

    def head(self, key: str, bucket: str | None = None) -> dict | None:
        """HEAD of ``key`` in this (or another) bucket: a dict with ContentLength (bytes), Metadata,
        ...; None if there is no such object. Other S3 errors (access, network) propagate."""
        try:
            return self.s3().head_object(Bucket=bucket or self.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise

    def __str__(self) -> str:
        return self.uri(self.prefix) if self.prefix else f"s3://{self.bucket}"


class S3MediaStore:
    """Content-addressed media in S3: ``<prefix>/media/<sha[:2]>/<sha><ext>``, URI ``s3://...``.

    Same interface as ``pipeline.store.LocalMediaStore``. ``location`` is the pipeline's S3
    location (the ``media/`` part is added here); ``cache_dir`` is the local read-through cache
    (``<sha><ext>`` files, deletable at any time when no run is active).

    Integrity: an S3 object cannot be edited in place, only replaced; ``put`` records the sha256
    in the object's metadata, so ``check`` (one HEAD) treats an object of another size or without
    that sha256 as corrupt, and a download is hashed in full against its name. The local
    read-through copy *can* be edited in place: ``check`` hashes it, and a copy that does not
    match is moved to ``<cache_dir>/quarantine/`` (downloaded again when needed). A corrupt
    object is moved (copied, then deleted) to ``<prefix>/quarantine/``.
    """

    scheme = "s3"

    def __init__(self, location: S3Location, cache_dir: str | Path):
        self.location = location
        self.cache_dir = Path(cache_dir)

    def key_for(self, sha256: str, ext: str) -> str:
        """Object key of the medium with this content hash and extension (".mp4", ".png", ...)."""
        return self.location.key("media", sha256[:2], f"{sha256}{ext}")

    def put(self, src: str | Path, ext: str | None = None) -> tuple[str, str, int]:
        """Upload ``src`` (one PUT) unless an object of the same size is already at its content
        address. Returns (uri, sha256, bytes). ``src`` is consumed: it becomes the local cached
        copy, so reading it back right away costs no download."""
        src = Path(src)
        ext = ext if ext is not None else src.suffix
        digest = sha256_file(src)
        size = src.stat().st_size
        key = self.key_for(digest, ext)
        head = self.location.head(key)
        if head is not None and not self._head_matches(head, digest, size):
            self.quarantine(self.location.uri(key), digest, size)
        if head is None or not self._head_matches(head, digest, size):
            with open(src, "rb") as body:
                self.location.s3().put_object(Bucket=self.location.bucket, Key=key, Body=body,
                                              ContentLength=size, Metadata={"sha256": digest})
        self._adopt(src, self._cached(key), size)
        return self.location.uri(key), digest, size

    def local_path(self, uri: str) -> Path:
        """A readable local copy of ``uri``: the cached file, or a fresh download verified against
        the object's size and the sha256 in its name (then moved into the cache atomically).
        Raises ValueError for a non-S3 URI, FileNotFoundError if the object is gone, OSError if
        the download does not match."""
        bucket, key = parse_s3_uri(uri)
        path = self._cached(key)
        if path.exists():
            return path
        try:
            obj = self.location.s3().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                raise FileNotFoundError(f"media object missing from the store: {uri}") from exc
            raise
        name_sha = Path(key).name.split(".")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=owned_mkstemp_prefix(path), suffix=".tmp")
        try:
            h, n = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as f, obj["Body"] as body:
                while block := body.read(CHUNK):
                    h.update(block)
                    n += len(block)
                    f.write(block)
            content_addressed = len(name_sha) == 64 and all(c in "0123456789abcdef" for c in name_sha)
            if n != obj.get("ContentLength", n) or (content_addressed and h.hexdigest() != name_sha):
                moved = self._move_object(bucket, key) if content_addressed and h.hexdigest() != name_sha else None
                raise OSError(f"download of {uri} is corrupt: {n} bytes, sha256 {h.hexdigest()}"
                              + (f"; moved the object to {moved}, the next run regenerates it" if moved else ""))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def _head_matches(head: dict, sha256: str, size: int) -> bool:
        recorded = (head.get("Metadata") or {}).get("sha256")
        return head.get("ContentLength") == size and recorded in (None, sha256)

    def check(self, uri: str, sha256: str, size: int) -> Integrity:
        """One HEAD: "missing" if there is no object (or ``uri`` is not ``sha256``'s address),
        "corrupt" if it has another size or another recorded sha256, else "ok". A local
        read-through copy that no longer hashes to ``sha256`` is moved to the local quarantine
        (a WARNING) and downloaded again when needed; the object itself is still "ok"."""
        try:
            bucket, key = parse_s3_uri(uri)
        except ValueError:
            return "missing"
        if not Path(key).name.startswith(sha256):
            return "missing"
        head = self.location.head(key, bucket)
        if head is None:
            return "missing"
        if not self._head_matches(head, sha256, size):
            return "corrupt"
        cached = self._cached(key)
        if cached.exists() and check_file(cached, sha256, size) == "corrupt":
            target = self.cache_dir / "quarantine" / f"{cached.name}.{utc_stamp()}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(cached, target)
                log.warning(f"local copy {cached} of {uri} is corrupted (edited in place?): moved it to {target}; "
                            "it is downloaded again from S3 when needed")
            except FileNotFoundError:
                pass
        return "ok"

    def _move_object(self, bucket: str, key: str) -> str | None:
        """Copy ``key`` to ``<prefix>/quarantine/<name>.<utc>`` and delete it. Returns the new URI."""
        target = self.location.key("quarantine", f"{Path(key).name}.{utc_stamp()}")
        try:
            self.location.s3().copy_object(Bucket=self.location.bucket, Key=target,
                                           CopySource={"Bucket": bucket, "Key": key})
            self.location.s3().delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return self.location.uri(target)

    def quarantine(self, uri: str, sha256: str, size: int) -> str | None:
        """If ``uri`` is still corrupt (one HEAD), move the object to ``<prefix>/quarantine/``
        (copy, then delete: never just deleted) and drop its local copy. Returns the quarantine
        URI, or None if it was not corrupt (any more)."""
        if self.check(uri, sha256, size) != "corrupt":
            return None
        bucket, key = parse_s3_uri(uri)
        moved = self._move_object(bucket, key)
        self._cached(key).unlink(missing_ok=True)
        return moved

    def has(self, uri: str, sha256: str, size: int) -> bool:
        """True if ``check`` says "ok": an object of ``size`` bytes at ``sha256``'s address (one HEAD)."""
        return self.check(uri, sha256, size) == "ok"

    def publish(self, uri: str, sha256: str, size: int, name: str) -> str:
        """Publish the stored medium ``uri`` as ``<prefix>/videos/<name>`` (e.g. ``<video_id>.mp4``)
        by a server-side copy (no bytes through this machine; one CopyObject, atomic, up to 5 GiB,
        a multipart copy beyond), with its sha256 in the object's metadata. Nothing is copied when
        that object already holds these bytes (one HEAD). A separate object, not a reference: a
        quarantine or clean-up of the media store never removes a published video, and a new
        version replacing it never touches the store. Returns the ``s3://`` URI of the published
        object; raises FileNotFoundError if ``uri`` is gone, other S3 errors as they come."""
        from boto3.s3.transfer import TransferConfig

        bucket, key = parse_s3_uri(uri)
        dest = self.location.key("videos", name)
        if self.published(self.location.uri(dest), sha256, size):
            return self.location.uri(dest)
        try:
            self.location.s3().copy(
                {"Bucket": bucket, "Key": key}, self.location.bucket, dest,
                ExtraArgs={"Metadata": {"sha256": sha256}, "MetadataDirective": "REPLACE",
                           "ContentType": "video/mp4" if name.endswith(".mp4") else "application/octet-stream"},
                Config=TransferConfig(multipart_threshold=5 * 1024 ** 3, use_threads=False))
        except ClientError as exc:
            if is_missing(exc):
                raise FileNotFoundError(f"cannot publish {uri}: the media object is gone") from exc
            raise
        return self.location.uri(dest)

    def published(self, uri: str, sha256: str, size: int) -> bool:
        """Whether the published object ``uri`` exists with exactly ``size`` bytes and ``sha256`` in
        its metadata (one HEAD)."""
        bucket, key = parse_s3_uri(uri)
        head = self.location.head(key, bucket)
        return (head is not None and head.get("ContentLength") == size
                and (head.get("Metadata") or {}).get("sha256") == sha256)

    def _cached(self, key: str) -> Path:
        return self.cache_dir / Path(key).name

    def _adopt(self, src: Path, dest: Path, size: int) -> None:
        """Move ``src`` (verified bytes) to ``dest`` atomically, replacing any copy there (which may
        have been edited in place); the temp file is removed on any error."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = owned_temp_path(dest)
        try:
            shutil.move(str(src), tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
