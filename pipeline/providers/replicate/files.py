"""Input images for models, always lossless PNG: small ones inline as PNG data URIs, large ones
through the Replicate Files API (``POST /v1/files``), uploaded once per content. (No JPEG: a
chained chunk's start frame must be the previous chunk's last frame exactly.)

A data URI over a few hundred KB bloats every create request (and every prediction listing the
lookup reads): 1.1 MB at 854x480, 22 MB at 4K. So a PNG over MAX_DATA_URI_PNG_BYTES is uploaded and
its file URL (``urls.get``) is the model input. Uploads are idempotent per content sha256: the
ledger database's ``uploads`` table records sha256 -> file id, URL and expiry, and a lock per
sha256 (``Ledger.named_lock``: a lock file beside a SQLite ledger, serializing this machine's
processes; a PostgreSQL advisory lock, serializing every machine's) makes a retry, a resumed job
or another process send the byte-identical URL (and the lookup-before-create still matches the
earlier prediction). A record is reused while it has at least ``min_ttl_s`` left; one written by
another process or an earlier run is checked once with ``GET /v1/files/{id}`` before use. Within a
process a record already used is remembered by sha256, so using it again reads neither the lock
nor the ledger. An upload whose answer was lost (timeout, dropped connection, 5xx) is looked up by
its checksum (``find_file``) before it is sent again.

The token goes only to the API root: uploads, file checks and lists are requests to it; the file
URL (``urls.get``) is only passed to the model as input, never fetched here.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from PIL import Image
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from pipeline.ledger import Ledger
from pipeline.providers.base import ProviderError
from pipeline.providers.replicate.client import NotFound, ReplicateApi, Transient, parse_time, wait_for_server

log = logging.getLogger("pipeline.providers.replicate")

MAX_DATA_URI_PNG_BYTES = 256 << 10
"""Input images whose PNG is at most this many bytes go inline as data URIs; larger ones are uploaded."""

UPLOADS = sa.Table(
    "uploads", sa.MetaData(),
    sa.Column("file_id", sa.Text, primary_key=True),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("gone", sa.Integer, nullable=False, server_default=sa.text("0")),
)
sa.Index("uploads_sha", UPLOADS.c.sha256, UPLOADS.c.created_at)
sa.Index("uploads_url", UPLOADS.c.url)
"""The ledger database's table of uploaded files (times in Unix seconds, ``gone`` 0/1)."""


def image_data_uri(path: str | Path) -> str:
    """A ``data:image/png;base64,...`` URI of the image at ``path``: its lossless PNG (``png_bytes``),
    whatever its size -- never a lossy re-encoding, so a chained start frame reaches the model
    exactly. Deterministic, so a rerun sends byte-identical input. (The provider sends PNGs over
    MAX_DATA_URI_PNG_BYTES as uploaded files instead: ``Uploads.image_input``.)"""
    return f"data:image/png;base64,{base64.b64encode(png_bytes(path)).decode('ascii')}"


def png_bytes(path: str | Path) -> bytes:
    """The image at ``path`` as PNG bytes: the file itself if it is a PNG, else a lossless PNG of it."""
    path = Path(path)
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def upload(api: ReplicateApi, data: bytes, *, filename: str, content_type: str, attempts: int = 4) -> dict[str, Any]:
    """Upload ``data`` with ``POST /v1/files`` (multipart field ``content``) through ``api``, retrying
    transient failures ``attempts`` times (tenacity). Idempotent: after a failure that may have
    stored the file anyway (timeout, dropped connection, 5xx, unreadable answer) the next attempt
    first looks for a file with the same sha256 (``find_file``) and returns it instead of uploading
    again. Returns the file JSON (``id``, ``urls.get``, ``expires_at``, ``size``, ``checksums``...).
    Raises ProviderError (retryable when transient failures persist)."""
    what = f"upload of {filename} ({len(data)} bytes)"
    sha = hashlib.sha256(data).hexdigest()
    state = {"ambiguous": False, "since": time.time()}

    def once() -> dict[str, Any]:
        if state["ambiguous"]:
            found = find_file(api, sha, since=state["since"])
            if found is not None:
                log.info("the earlier %s did reach Replicate as file %s; not uploading again", what, found["id"])
                return found
        try:
            response = api.send("POST", "/v1/files", files={"content": (filename, data, content_type)})
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing sent
            raise Transient(f"{what}: {type(exc).__name__}: {exc}") from None
        except httpx.TransportError as exc:
            state["ambiguous"] = True
            raise Transient(f"{what}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 300:
            state["ambiguous"] = response.status_code >= 500 or state["ambiguous"]
            raise api.refusal(response, what)
        try:
            return response.json()
        except ValueError:
            state["ambiguous"] = True
            raise Transient(f"{what}: unreadable JSON") from None

    retrying = Retrying(stop=stop_after_attempt(max(1, attempts)), retry=retry_if_exception_type(Transient),
                        wait=wait_for_server(wait_exponential_jitter(initial=api.poll_interval_s,
                                                                     max=api.max_poll_interval_s)), reraise=True)
    try:
        return retrying(once)
    except (Transient, NotFound) as exc:
        raise api.error(f"could not upload an input file to Replicate: {exc}", retryable=True) from None


def find_file(api: ReplicateApi, sha256: str, *, since: float, skew_s: float = 120.0,
              max_pages: int = 5) -> dict[str, Any] | None:
    """The newest live uploaded file whose ``checksums.sha256`` is ``sha256``, created at or after
    ``since`` (Unix seconds) minus ``skew_s`` (clock skew), from ``GET /v1/files`` (newest first, at
    most ``max_pages`` pages, ``next`` followed on the API root only). None if there is none or the
    list cannot be read (the caller uploads again: a duplicate file, no harm)."""
    floor, path = since - skew_s, "/v1/files"
    for _ in range(max(1, max_pages)):
        try:
            page = api.read_json(path, what="list files")
        except (Transient, NotFound, ProviderError) as exc:
            log.warning("could not list uploaded files (%s)", api.redact(str(exc)))
            return None
        older = False
        for f in page.get("results") or []:
            created = parse_time(f.get("created_at")) if isinstance(f, dict) else None
            if created is not None and created < floor:
                older = True
                continue
            expires = parse_time(f.get("expires_at")) if isinstance(f, dict) else None
            if (isinstance(f, dict) and (f.get("checksums") or {}).get("sha256") == sha256 and f.get("id")
                    and (f.get("urls") or {}).get("get") and (expires is None or expires > time.time())):
                return f
        path = page.get("next")
        if older or not path:
            return None
    return None


def get_file(api: ReplicateApi, file_id: str) -> dict[str, Any] | None:
    """``GET /v1/files/{id}``: the file JSON, or None if it does not exist (404). Raises Transient if
    it cannot be told, ProviderError for other refusals."""
    try:
        return api.get_json(f"/v1/files/{file_id}", what=f"file {file_id}",
                            until=time.monotonic() + 2 * api.request_timeout_s)
    except NotFound:
        return None


@dataclass(frozen=True)
class UploadRecord:
    """One uploaded file: its ``file_id``, ``url`` (the model input), content ``sha256``, ``size``
    (bytes) and ``expires_at`` (Unix seconds, None if it does not expire)."""

    file_id: str
    sha256: str
    url: str
    size: int
    expires_at: float | None
    created_at: float


class Uploads:
    """Uploads of input images for one provider (see the module doc). ``min_ttl_s``: the least
    lifetime (seconds) a recorded file must have left to be reused: longer than a prediction may
    wait before reading its input."""

    def __init__(self, api: ReplicateApi, ledger: Ledger, *, min_ttl_s: float):
        self.api, self.ledger, self.min_ttl_s = api, ledger, float(min_ttl_s)
        self._checked: set[str] = set()
        self._known: dict[str, UploadRecord] = {}  # sha256 -> a record this process used or made
        self._lock = threading.Lock()
        ledger.create_tables(UPLOADS)

    def image_input(self, path: str | Path) -> str:
        """The model input for the image at ``path``: a PNG data URI up to MAX_DATA_URI_PNG_BYTES,
        else the URL of its uploaded PNG. Raises ProviderError if an upload fails."""
        data = png_bytes(path)
        if len(data) <= MAX_DATA_URI_PNG_BYTES:
            return f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}"
        return self.url_for(data, content_type="image/png", suffix=".png")

    def url_for(self, data: bytes, *, content_type: str, suffix: str) -> str:
        """The file URL of ``data``, uploading it unless a usable upload of the same sha256 is
        recorded (in this process, or in the ledger). Raises ProviderError if the upload fails."""
        sha = hashlib.sha256(data).hexdigest()
        known = self._usable_known(sha)
        if known is not None:
            return known.url
        with self.ledger.named_lock(f"upload-{sha[:40]}"):
            record = self.record(sha)
            if record is not None and self._still_there(record):
                self._remember(record)
                return record.url
            info = upload(self.api, data, filename=f"{sha[:16]}{suffix}", content_type=content_type)
            url = (info.get("urls") or {}).get("get")
            if not info.get("id") or not url:
                raise self.api.error(f"the Files API answered an upload of {len(data)} bytes without an id or URL",
                                     retryable=True)
            now = time.time()
            expires_at = parse_time(info.get("expires_at"))
            row = {"sha256": sha, "url": url, "size": len(data), "content_type": content_type,
                   "expires_at": expires_at, "created_at": now, "gone": 0}
            with self.ledger.transaction() as db:
                db.execute(self.ledger.db.insert(UPLOADS).values(file_id=info["id"], **row)
                           .on_conflict_do_update(index_elements=[UPLOADS.c.file_id], set_=row))
            with self._lock:
                self._checked.add(info["id"])
            self._remember(UploadRecord(file_id=info["id"], sha256=sha, url=url, size=len(data),
                                        expires_at=expires_at, created_at=now))
            log.info("uploaded input %s (%d bytes) as file %s", sha[:12], len(data), info["id"])
            return url

    def _usable_known(self, sha256: str) -> UploadRecord | None:
        """The record of ``sha256`` this process used or made, if it still has ``min_ttl_s`` left."""
        with self._lock:
            record = self._known.get(sha256)
        if record is None or (record.expires_at is not None and record.expires_at <= time.time() + self.min_ttl_s):
            return None
        return record

    def _remember(self, record: UploadRecord) -> None:
        with self._lock:
            self._known[record.sha256] = record

    def record(self, sha256: str) -> UploadRecord | None:
        """The newest recorded upload of ``sha256`` with at least ``min_ttl_s`` left, or None."""
        floor = time.time() + self.min_ttl_s
        u = UPLOADS.c
        query = (sa.select(UPLOADS).where(u.sha256 == sha256, u.gone == 0,
                                          sa.or_(u.expires_at.is_(None), u.expires_at > floor))
                 .order_by(u.created_at.desc()).limit(1))
        with self.ledger.connect() as db:
            row = db.execute(query).mappings().first()
        return _record(row) if row else None

    def sha_for_url(self, url: str) -> str | None:
        """The content sha256 of an uploaded file's ``url`` (any upload ever recorded), or None."""
        with self.ledger.connect() as db:
            return db.execute(sa.select(UPLOADS.c.sha256).where(UPLOADS.c.url == url).limit(1)).scalar()

    def normalize(self, value: Any) -> Any:
        """``value`` with recorded upload URLs replaced by ``"sha256:<hex>"`` (for comparing inputs
        that refer to the same content through different uploads)."""
        if isinstance(value, str) and value.startswith(("https://", "http://")):
            sha = self.sha_for_url(value)
            return f"sha256:{sha}" if sha else value
        return value

    def _still_there(self, record: UploadRecord) -> bool:
        with self._lock:
            if record.file_id in self._checked:
                return True
        try:
            found = get_file(self.api, record.file_id)
        except Transient as exc:  # cannot tell: use it; a create with a missing file fails with 4xx
            log.warning("could not check uploaded file %s (%s); using it", record.file_id, self.api.redact(str(exc)))
            return True
        if found is None:
            log.info("uploaded file %s is gone; uploading its content again", record.file_id)
            with self.ledger.transaction() as db:
                db.execute(sa.update(UPLOADS).where(UPLOADS.c.file_id == record.file_id).values(gone=1))
            with self._lock:
                if self._known.get(record.sha256) == record:
                    del self._known[record.sha256]
            return False
        with self._lock:
            self._checked.add(record.file_id)
        return True


def _record(row) -> UploadRecord:
    return UploadRecord(file_id=row["file_id"], sha256=row["sha256"], url=row["url"], size=row["size"],
                        expires_at=row["expires_at"], created_at=row["created_at"])
