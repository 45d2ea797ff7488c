"""The spec inbox as an S3 prefix (``s3://<bucket>/<prefix>/inbox/``): the ``InboxSource`` that
``pipeline.inbox.scan_inbox`` scans when S3 is configured, and where ``pipeline submit`` uploads.

Objects directly under the prefix with a spec name (``*.yaml``, ``*.yml``, ``*.json``, not hidden)
are entries; objects in "sub-folders" (``processed/``, ``rejected/``, anything else) are not. An
object appears whole when its PUT completes, so entries are not left to settle. Reading refuses an
object over ``spec_file.MAX_SPEC_BYTES`` by its listed size before a byte is read, and reads at most
that many bytes plus one even if the object was replaced by a bigger one since the listing. Filing
an entry away is a server-side copy (one CopyObject up to 5 GiB, multipart beyond, so even a huge
hostile object can be moved) and then a delete; a crash in between leaves the entry in the inbox
too, and the next scan files it again (an identical spec registers nothing new). No Dagster import.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from pipeline.inbox import SPEC_SUFFIXES, InboxEntry, free_name
from pipeline.s3_store import S3Location
from pipeline.s3_text import is_missing
from pipeline.spec_file import MAX_SPEC_BYTES, SpecInputError, check_spec_size

COPY_THRESHOLD = 5 * 1024 ** 3
"""Objects up to this size (bytes) are moved with one CopyObject; bigger ones by a multipart copy."""


class S3Object(str):
    """An object's ``s3://bucket/key`` URI (a str), with ``name`` (the key's last part) and ``key``,
    so code that reads ``target.name`` works for local paths and objects alike."""

    @property
    def key(self) -> str:
        return self[len("s3://"):].partition("/")[2]

    @property
    def name(self) -> str:
        return self.rsplit("/", 1)[-1]


class S3Inbox:
    """The inbox under ``location`` (its prefix is the inbox itself, e.g. ``<prefix>/inbox``)."""

    def __init__(self, location: S3Location):
        self.location = location

    @classmethod
    def at(cls, uri: str, client=None) -> "S3Inbox":
        """The inbox at ``s3://bucket/prefix`` (the inbox prefix itself); ``client``: a boto3 client,
        a factory or an ``S3ClientProvider`` (None: boto3's default, configured by the environment)."""
        if not uri.startswith("s3://") or not uri[len("s3://"):].partition("/")[0]:
            raise ValueError(f"not an S3 location: {uri!r} (expected s3://bucket/prefix)")
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        return cls(S3Location(bucket, prefix, client))

    def _object(self, *parts: str) -> S3Object:
        return S3Object(self.location.uri(self.location.key(*parts)))

    def entries(self) -> list[InboxEntry]:
        """(See ``pipeline.inbox.InboxSource``.) One paginated LIST; oldest first (LastModified, name)."""
        base = self.location.key()
        pages = self.location.s3().get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=f"{base}/" if base else "", Delimiter="/")
        found = []
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                if not name or name.startswith(".") or not name.lower().endswith(SPEC_SUFFIXES):
                    continue
                found.append(InboxEntry(name, obj["Key"], obj["LastModified"].timestamp(), obj["Size"], complete=True))
        return sorted(found, key=lambda e: (e.modified, e.name))

    def read(self, entry: InboxEntry) -> bytes:
        """The object's bytes (one GET), refused over 1 MB by its listed size, then by the size the
        GET answers, and never more than 1 MB + 1 byte read. Raises SpecInputError."""
        if entry.size is not None:
            check_spec_size(entry.size)
        try:
            obj = self.location.s3().get_object(Bucket=self.location.bucket, Key=entry.ref)
        except ClientError as exc:
            if is_missing(exc):
                raise SpecInputError("no such file (the object was removed since the inbox was listed)") from None
            raise
        with obj["Body"] as body:
            check_spec_size(obj.get("ContentLength") or 0)
            data = body.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            raise SpecInputError(f"is larger than the {MAX_SPEC_BYTES:,}-byte limit for a spec")
        return data

    def where(self, entry: InboxEntry) -> str:
        return self.location.uri(entry.ref)

    def reference_folder(self, entry: InboxEntry) -> None:
        """None: no local folder; a spec naming a character reference image by path is rejected
        (``pipeline submit`` carries the image in the spec)."""
        return None

    def target(self, entry: InboxEntry, folder: str) -> S3Object:
        """A free name in ``<inbox>/<folder>/`` (a HEAD per candidate name)."""
        name = free_name(lambda n: self.location.head(self.location.key(folder, n)) is not None, entry.name)
        return self._object(folder, name)

    def file(self, entry: InboxEntry, target: S3Object, note: str | None = None) -> None:
        """Write ``note`` as ``<target>.error.txt`` (one PUT), copy the entry to ``target``
        server-side (one CopyObject; a multipart copy over 5 GiB), then delete the entry."""
        from boto3.s3.transfer import TransferConfig

        s3 = self.location.s3()
        if note is not None:
            s3.put_object(Bucket=self.location.bucket, Key=f"{target.key}.error.txt", Body=note.encode("utf-8"),
                          ContentType="text/plain; charset=utf-8")
        source = {"Bucket": self.location.bucket, "Key": entry.ref}
        if entry.size is not None and entry.size <= COPY_THRESHOLD:
            s3.copy_object(CopySource=source, Bucket=self.location.bucket, Key=target.key)
        else:
            s3.copy(source, self.location.bucket, target.key,
                    Config=TransferConfig(multipart_threshold=COPY_THRESHOLD, use_threads=False))
        s3.delete_object(Bucket=self.location.bucket, Key=entry.ref)

    def put(self, name: str, data: bytes) -> str:
        """Upload ``<inbox>/<name>`` with one PUT (it appears whole). Returns its ``s3://`` URI."""
        target = self._object(name)
        self.location.s3().put_object(Bucket=self.location.bucket, Key=target.key, Body=data,
                                      ContentType="application/json" if name.endswith(".json") else "application/yaml")
        return str(target)

    def __str__(self) -> str:
        return str(self.location)
