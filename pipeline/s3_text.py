"""Small text objects in S3 (``S3TextObjects``): the S3 variant of ``pipeline.text_objects``'s
``LocalTextObjects``, used for the generation cache index, the manifests and the spec registry.

Writes are one PUT each (visible atomically). ``write_if`` is a conditional PUT: ``If-Match:
<ETag>`` to replace the version that was read, ``If-None-Match: *`` to create an object that must
not exist yet; S3 answers 412 (or 409 for a concurrent conditional write) to the loser, which reads
again. Supported by AWS S3 (since 2024), MinIO and moto. No Dagster import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from pipeline.s3_store import S3Location

MISSING_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
LOST_RACE_CODES = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict", "NoSuchKey", "404"}
"""Answers to a conditional PUT that mean another writer got there first."""


def error_code(exc: ClientError) -> str:
    """The S3 error code of ``exc`` ("NoSuchKey", "412", ...)."""
    return str(exc.response.get("Error", {}).get("Code"))


def is_missing(exc: ClientError) -> bool:
    """Whether ``exc`` says the object (or bucket) does not exist."""
    return error_code(exc) in MISSING_CODES


class S3TextObjects:
    """Small UTF-8 text objects (JSON) under an S3 location (``pipeline.s3_store.S3Location``): the
    S3 variant of ``pipeline.text_objects.LocalTextObjects`` (same methods). Keys are relative,
    "/"-separated; a version is the object's ETag."""

    def __init__(self, root: "S3Location"):
        self.root = root

    def read(self, key: str) -> str | None:
        """The text at ``key``, or None if there is no such object. Other S3 errors propagate."""
        found = self.read_versioned(key)
        return None if found is None else found[0]

    def read_versioned(self, key: str) -> tuple[str, str] | None:
        """``(text, ETag)`` of ``key`` (one GET), or None if there is no such object."""
        try:
            obj = self.root.s3().get_object(Bucket=self.root.bucket, Key=self.root.key(key))
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        with obj["Body"] as body:
            return body.read().decode("utf-8"), obj["ETag"]

    def write(self, key: str, text: str) -> None:
        """Write ``text`` at ``key`` with one PUT (atomic: readers never see a partial object)."""
        self.root.s3().put_object(Bucket=self.root.bucket, Key=self.root.key(key),
                                  Body=text.encode("utf-8"), ContentType="application/json")

    def write_if(self, key: str, text: str, version: str | None) -> bool:
        """One conditional PUT: replaces the object only if its ETag is still ``version`` (None:
        creates it only if there is none). False if another writer came first; other S3 errors
        propagate."""
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self.root.s3().put_object(Bucket=self.root.bucket, Key=self.root.key(key), Body=text.encode("utf-8"),
                                      ContentType="application/json", **condition)
        except ClientError as exc:
            if error_code(exc) in LOST_RACE_CODES:
                return False
            raise
        return True

    def listing(self, folder: str = "") -> dict[str, str | None]:
        """``{name: ETag}`` of the objects directly in ``folder`` (LIST, paginated; objects in
        sub-folders and names starting with "." left out)."""
        base = self.root.key(folder)
        pages = self.root.s3().get_paginator("list_objects_v2").paginate(
            Bucket=self.root.bucket, Prefix=f"{base}/" if base else "", Delimiter="/")
        out: dict[str, str | None] = {}
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                if name and not name.startswith("."):
                    out[name] = obj.get("ETag")
        return dict(sorted(out.items()))

    def location(self, key: str) -> str:
        """``s3://`` URI of ``key`` (for metadata and messages)."""
        return self.root.uri(self.root.key(key))

    def __str__(self) -> str:
        return str(self.root)
