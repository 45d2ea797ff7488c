"""The fake server's Files API (``POST /v1/files``, ``GET /v1/files`` (list), ``GET``/``DELETE
/v1/files/{id}``) and its output
files (``GET /files/...``, standing in for replicate.delivery), as a mixin of ``FakeReplicate``.

Uploaded files expire ``file_ttl_s`` after upload (Replicate: 24 h), output files ``output_ttl_s``
after they are made (1 h), both on the server's clock (``FakeReplicate.now``)."""

from __future__ import annotations

import hashlib
import string
from typing import TYPE_CHECKING, Any

from pipeline_tests.fake_replicate.state import Fault, FakePrediction, iso

if TYPE_CHECKING:
    from pipeline_tests.fake_replicate.server import FakeReplicate


class UploadsMixin:
    """Uploaded and output files of a ``FakeReplicate`` (its ``uploaded``, ``files``, ``uploads``...)."""

    def upload(self: "FakeReplicate", data: bytes, *, filename: str, content_type: str,
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store an uploaded file; its JSON (like ``POST /v1/files`` answers)."""
        sha = hashlib.sha256(data).hexdigest()
        now = self.now()
        with self._lock:
            file_id = "".join(self._rng.choice(string.ascii_lowercase + "0123456789") for _ in range(26))
            self.uploaded[file_id] = {"data": data, "name": filename, "content_type": content_type, "sha256": sha,
                                      "md5": hashlib.md5(data).hexdigest(), "created_at": now,  # noqa: S324 - a checksum
                                      "expires_at": now + self.file_ttl_s, "metadata": dict(metadata or {})}
            self.uploads += 1
            self.uploads_by_sha256[sha] += 1
        return self.file_json(file_id)

    def list_files(self: "FakeReplicate", cursor: str | None = None) -> dict[str, Any]:
        """One page of ``GET /v1/files``: live uploaded files, newest first, ``page_size`` a page,
        with a ``next`` URL (cursor: the last file's position) or None. Raises ValueError for a
        malformed cursor."""
        with self._lock:
            live = sorted(((f["created_at"], file_id) for file_id, f in self.uploaded.items()
                           if self.now() <= f["expires_at"]), reverse=True)
        start = 0
        if cursor:
            created, _, after_id = cursor.partition(":")
            position = (float(created), after_id)
            start = next((i for i, k in enumerate(live) if k < position), len(live))
        page = live[start:start + self.page_size]
        nxt = None
        if page and start + len(page) < len(live):
            nxt = f"{self.base_url}/v1/files?cursor={page[-1][0]!r}:{page[-1][1]}"
        results = [j for j in (self.file_json(file_id) for _, file_id in page) if j is not None]
        return {"next": nxt, "previous": None, "results": results}

    def file_json(self: "FakeReplicate", file_id: str) -> dict[str, Any] | None:
        """The JSON of an uploaded file, or None if there is none (deleted, expired, unknown)."""
        with self._lock:
            f = self.uploaded.get(file_id)
            if f is None or self.now() > f["expires_at"]:
                return None
            return {"id": file_id, "name": f["name"], "content_type": f["content_type"], "size": len(f["data"]),
                    "etag": f'"{f["md5"]}"', "checksums": {"sha256": f["sha256"], "md5": f["md5"]},
                    "metadata": dict(f.get("metadata") or {}), "created_at": iso(f["created_at"]),
                    "expires_at": iso(f["expires_at"]), "urls": {"get": f"{self.base_url}/v1/files/{file_id}"}}

    def delete_file(self: "FakeReplicate", file_id: str) -> bool:
        """Delete an uploaded file; False if there was none."""
        with self._lock:
            return self.uploaded.pop(file_id, None) is not None

    def read_input_file(self: "FakeReplicate", value: Any) -> bytes | None:
        """The bytes of an uploaded file named by a model input (its ``urls.get``), or None if the
        value is not one of this server's live files."""
        prefix = f"{self.base_url}/v1/files/"
        if not isinstance(value, str) or not value.startswith(prefix):
            return None
        file_id = value[len(prefix):].split("/")[0]
        with self._lock:
            f = self.uploaded.get(file_id)
            return f["data"] if f is not None and self.now() <= f["expires_at"] else None

    def unknown_file_inputs(self: "FakeReplicate", inp: dict[str, Any]) -> list[str]:
        """Input fields that reference this server's Files API but no live uploaded file (a list
        field, such as reference images, if any of its items does)."""
        prefix = f"{self.base_url}/v1/files/"
        return [k for k, v in inp.items()
                if any(isinstance(x, str) and x.startswith(prefix) and self.read_input_file(x) is None
                       for x in (v if isinstance(v, list) else [v]))]

    def _add_file(self: "FakeReplicate", pred: FakePrediction, name: str, data: bytes, content_type: str) -> str:
        """Register an output file of ``pred`` (after its output faults); its URL."""
        if "corrupt_output" in pred.outcome:
            data = bytes((i * 7 + 13) % 256 for i in range(max(64, len(data) // 4)))
        if "oversize_output" in pred.outcome:
            size = int(pred.outcome["oversize_output"].options.get("bytes", 80 << 20))
            data = data + bytes(max(0, size - len(data)))
        token = "".join(self._rng.choice(string.ascii_letters + string.digits) for _ in range(24))
        expired = pred.outcome.get("expired_output")
        with self._lock:
            self.files[token] = {"data": data, "type": content_type, "expires_at": self.now() + self.output_ttl_s,
                                 "expired": expired is not None,
                                 "expired_status": (expired or Fault("x")).options.get("status", 404)}
        return f"{self.origin}/files/{pred.id[:4]}/{token}/{name}"
