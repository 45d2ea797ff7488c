"""The fake server's HTTP routes (see the package doc): predictions (``endpoints``), models, the Files
API, output files, and the ``/_fake/...`` control and counter endpoints (no auth; loopback tests only).

API errors are RFC 9457 problem details (``application/problem+json``: ``title``, ``detail``,
``status``), as Replicate answers them. Every authenticated ``/v1`` request counts against a rate
limit (creates against the create limit, the rest against the read limit) before it is routed.
"""

from __future__ import annotations

import json
import socket
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from pipeline_tests.fake_replicate import endpoints
from pipeline_tests.fake_replicate.catalog import model_json, version_json, versions
from pipeline_tests.fake_replicate.state import FAKE_MODELS, FAULT_KINDS, is_official

if TYPE_CHECKING:
    from pipeline_tests.fake_replicate.server import FakeReplicate


def multipart_fields(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None, str | None]]:
    """Fields of a multipart/form-data body: {name: (data, filename, content type)}; {} if the body
    is not multipart."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return {}
    return {part.get_param("name", header="content-disposition"):
            (part.get_payload(decode=True) or b"", part.get_filename(), part.get_content_type())
            for part in message.iter_parts()}


class Handler(BaseHTTPRequestHandler):
    """One request to the fake server ``fake`` (set on the subclass ``handler_for`` makes)."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeReplicate/1.0"
    fake: "FakeReplicate"

    def log_message(self, format: str, *args: Any) -> None:  # quiet; requests are recorded instead
        pass

    # --- plumbing -------------------------------------------------------------------------------

    def _send(self, status: int, body: Any = None, *, headers: dict[str, str] | None = None,
              raw: bytes | None = None, content_type: str = "application/json") -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        with self.fake._lock:
            self.fake.requests.append((self.command, self.path, status))

    def _problem(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        self._send(status, {"title": title, "detail": detail, "status": status, **extra}, headers=headers,
                   content_type="application/problem+json")

    def _drop(self) -> None:
        with self.fake._lock:
            self.fake.requests.append((self.command, self.path, 0))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _raw(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _admitted(self, kind: str) -> bool:
        """Authenticate (401 otherwise), then count the request against the ``kind`` rate limit
        (429 past it). True if the request may proceed."""
        fake = self.fake
        delay = fake._seconds(fake.latency)
        if delay > 0:
            time.sleep(delay)
        if self.headers.get("Authorization") != f"Bearer {fake.token}":
            with fake._lock:
                fake.auth_failures += 1
            self._problem(401, "Unauthenticated", "You did not pass a valid authentication token")
            return False
        refused = fake.throttle(kind)
        if refused is not None and kind == "create":
            with fake._lock:
                fake.create_requests += 1  # received, refused before anything was created
        if refused is not None:
            body, headers = refused
            self._send(429, body, headers=headers, content_type="application/problem+json")
            return False
        return True

    # --- routes ---------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        fake = self.fake
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] == ["files"]:
            return self._output_file(parts)
        if parts[:1] == ["_fake"]:
            return self._control("GET", parts, b"")
        if not self._admitted("read"):
            return
        if parts == ["v1", "predictions"]:
            return endpoints.list_predictions(self, fake, parse_qs(url.query))
        if len(parts) == 3 and parts[:2] == ["v1", "predictions"]:
            f = fake._fault("get", None)
            if f is not None:
                return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
            fake.sweep_deadlines()
            with fake._lock:
                pred = fake.predictions.get(parts[2])
                body = fake.prediction_json(pred) if pred else None
            return self._send(200, body) if body else self._problem(404, "Not found", "Prediction not found")
        if parts == ["v1", "files"]:
            try:
                return self._send(200, fake.list_files(parse_qs(url.query).get("cursor", [None])[0]))
            except ValueError:
                return self._problem(400, "Bad request", "invalid cursor")
        if len(parts) == 3 and parts[:2] == ["v1", "files"]:
            body = fake.file_json(parts[2])
            return self._send(200, body) if body else self._problem(404, "Not found", "File not found")
        if len(parts) >= 4 and parts[:2] == ["v1", "models"]:
            return self._model(parts)
        return self._problem(404, "Not found", f"No route for GET {url.path}")

    def do_DELETE(self) -> None:  # noqa: N802
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if not self._admitted("read"):
            return
        if len(parts) == 3 and parts[:2] == ["v1", "files"]:
            if self.fake.delete_file(parts[2]):
                self.send_response(204)  # no body, no content type
                self.send_header("Content-Length", "0")
                self.end_headers()
                with self.fake._lock:
                    self.fake.requests.append((self.command, self.path, 204))
                return None
            return self._problem(404, "Not found", "File not found")
        return self._problem(404, "Not found", f"No route for DELETE {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        fake = self.fake
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        raw = self._raw()
        if parts[:1] == ["_fake"]:
            return self._control("POST", parts, raw)
        creating = parts == ["v1", "predictions"] or (len(parts) == 5 and parts[:2] == ["v1", "models"]
                                                      and parts[4] == "predictions")
        if not self._admitted("create" if creating else "read"):
            return
        if parts == ["v1", "files"]:
            return self._upload(raw)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._problem(400, "Bad request", "the body is not JSON")
        if not isinstance(body, dict):
            return self._problem(400, "Bad request", "the body must be a JSON object")
        if len(parts) == 4 and parts[:2] == ["v1", "predictions"] and parts[3] == "cancel":
            with fake._lock:
                pred = fake.predictions.get(parts[2])
            if pred is None:
                return self._problem(404, "Not found", "Prediction not found")
            fake.cancel(pred)
            with fake._lock:
                return self._send(200, fake.prediction_json(pred))
        if len(parts) == 5 and parts[:2] == ["v1", "models"]:
            ref = f"{parts[2]}/{parts[3]}"
            if not is_official(ref):
                return self._problem(404, "Not found", f"{ref} is not an official model; create with a version")
            return endpoints.create(self, fake, ref, "hidden", body)
        if parts == ["v1", "predictions"]:
            resolved = endpoints.resolve_version(str(body.get("version", "")))
            if resolved is None:
                return self._problem(422, *endpoints.INVALID_VERSION)
            return endpoints.create(self, fake, resolved[0], resolved[1], body)
        return self._problem(404, "Not found", f"No route for POST {url.path}")

    # --- handlers -------------------------------------------------------------------------------

    def _model(self, parts: list[str]) -> None:
        ref = f"{parts[2]}/{parts[3]}"
        if ref not in FAKE_MODELS:
            return self._problem(404, "Not found", f"Model {ref} not found")
        if len(parts) == 4:
            return self._send(200, model_json(ref))
        ids = versions(ref)
        if len(parts) == 5 and parts[4] == "versions":
            return self._send(200, {"next": None, "previous": None, "results": [version_json(ref, v) for v in ids]})
        if len(parts) == 6 and parts[4] == "versions" and parts[5] in ids:
            return self._send(200, version_json(ref, parts[5]))
        return self._problem(404, "Not found", "Version not found")

    def _upload(self, raw: bytes) -> None:
        fields = multipart_fields(self.headers.get("Content-Type", ""), raw)
        if "content" not in fields:
            return self._problem(400, "Bad request", "expected multipart/form-data with a 'content' file field")
        data, filename, content_type = fields["content"]
        extra = {k: v[0].decode(errors="replace") for k, v in fields.items() if k != "content"}
        try:
            metadata = json.loads(extra["metadata"]) if extra.get("metadata") else {}
        except ValueError:
            return self._problem(400, "Bad request", "metadata must be valid JSON")
        if not isinstance(metadata, dict):
            return self._problem(400, "Bad request", "metadata must be a JSON object")
        f = self.fake._fault("upload", None)
        if f is not None and not f.options.get("after_store") and not f.options.get("drop"):
            return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
        stored = self.fake.upload(data, filename=extra.get("filename") or filename or "file",
                                  content_type=extra.get("type") or content_type or "application/octet-stream",
                                  metadata=metadata)
        if f is not None and f.options.get("drop"):
            return self._drop()
        if f is not None:
            return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
        self._send(201, stored)

    def _control(self, method: str, parts: list[str], raw: bytes) -> None:
        """``GET /_fake/stats``, ``GET|POST /_fake/config``, ``POST /_fake/inject|release|clear|clock|seed``."""
        fake = self.fake
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._problem(400, "Bad request", "the body is not JSON")
        name = "/".join(parts[1:])
        try:
            if method == "GET" and name == "stats":
                return self._send(200, fake.stats())
            if name == "config":
                return self._send(200, fake.configure(**body) if method == "POST" else fake.config())
            if method != "POST":
                return self._problem(404, "Not found", f"No control GET /_fake/{name}")
            if name == "inject":
                kind = body.pop("kind", "")
                if not any(kind in kinds for kinds in FAULT_KINDS.values()):
                    return self._problem(422, "Unknown fault", f"unknown fault {kind!r}")
                fake.inject(kind, times=body.pop("times", 1), model=body.pop("model", None), **body)
                return self._send(200, {"ok": True})
            if name == "release":
                fake.release(body.get("prediction_id"))
                return self._send(200, {"ok": True})
            if name == "clear":
                fake.clear_faults()
                return self._send(200, {"ok": True})
            if name == "clock":
                fake.advance_clock(float(body.get("advance_s", 0)))
                return self._send(200, fake.config())
            if name == "seed":
                return self._send(200, {"ids": fake.seed_predictions(int(body.pop("n", 1)), **body)})
        except (TypeError, ValueError) as exc:
            return self._problem(422, "Invalid control request", f"/_fake/{name}: {exc}")
        return self._problem(404, "Not found", f"No control /_fake/{name}")

    def _output_file(self, parts: list[str]) -> None:
        fake = self.fake
        token = parts[2] if len(parts) >= 3 else ""
        with fake._lock:
            entry = fake.files.get(token)
        if entry is None:
            return self._send(404, raw=b"Not Found", content_type="text/plain")
        f = fake._fault("download", None)
        if f is not None:
            return self._send(f.options.get("status", 503), raw=b"Service Unavailable", content_type="text/plain")
        if entry["expired"] or fake.now() > entry["expires_at"]:
            return self._send(entry["expired_status"], raw=b"Not Found", content_type="text/plain")
        self._send(200, raw=entry["data"], content_type=entry["type"])


def handler_for(server: "FakeReplicate") -> type[Handler]:
    """The request handler class bound to ``server``."""
    return type("FakeReplicateHandler", (Handler,), {"fake": server})
