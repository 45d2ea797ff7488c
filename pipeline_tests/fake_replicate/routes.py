"""The fake server's HTTP routes (see the package doc): predictions, models, the Files API, output
files, and the ``/_fake/...`` control and counter endpoints (no auth; loopback tests only)."""

from __future__ import annotations

import json
import re
import socket
import time
from datetime import datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from pipeline_tests.fake_replicate.render import model_json, version_json
from pipeline_tests.fake_replicate.state import FAKE_MODELS, FAULT_KINDS

if TYPE_CHECKING:
    from pipeline_tests.fake_replicate.server import FakeReplicate

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds of a ``Cancel-After`` value: a Go-style duration ("30m", "1h30m", "45s", "500ms")
    or a bare number of seconds. Raises ValueError for anything else."""
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"invalid duration {value!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def multipart_field(content_type: str, body: bytes, name: str) -> tuple[bytes, str | None, str | None] | None:
    """(data, filename, content type) of form field ``name`` in a multipart/form-data body, or None."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            return part.get_payload(decode=True) or b"", part.get_filename(), part.get_content_type()
    return None


def handler_for(server: "FakeReplicate") -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to ``server``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeReplicate/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet; requests are recorded instead
            pass

        # --- plumbing ---------------------------------------------------------------------------

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
            with server._lock:
                server.requests.append((self.command, self.path, status))

        def _problem(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"title": title, "detail": detail, "status": status}, headers=headers)

        def _drop(self) -> None:
            with server._lock:
                server.requests.append((self.command, self.path, 0))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _raw(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {server.token}":
                return True
            with server._lock:
                server.auth_failures += 1
            self._problem(401, "Unauthenticated", "You did not pass a valid authentication token")
            return False

        def _api_latency(self) -> None:
            delay = server._seconds(server.latency)
            if delay > 0:
                time.sleep(delay)

        # --- routes -----------------------------------------------------------------------------

        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            if parts[:1] == ["files"]:
                return self._file(parts)
            if parts == ["_fake", "stats"]:
                return self._send(200, server.stats())
            self._api_latency()
            if not self._authorized():
                return
            if parts == ["v1", "predictions"]:
                return self._list(parse_qs(url.query))
            if len(parts) == 3 and parts[:2] == ["v1", "predictions"]:
                f = server._fault("get", None)
                if f is not None:
                    return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
                with server._lock:
                    pred = server.predictions.get(parts[2])
                    body = pred.to_json(server.base_url) if pred else None
                return self._send(200, body) if body else self._problem(404, "Not found", "Prediction not found")
            if len(parts) == 3 and parts[:2] == ["v1", "files"]:
                body = server.file_json(parts[2])
                return self._send(200, body) if body else self._problem(404, "Not found", "File not found")
            if len(parts) >= 4 and parts[:2] == ["v1", "models"]:
                return self._model(parts)
            return self._problem(404, "Not found", f"No route for GET {url.path}")

        def do_DELETE(self) -> None:  # noqa: N802
            parts = [p for p in urlsplit(self.path).path.split("/") if p]
            self._api_latency()
            if not self._authorized():
                return
            if len(parts) == 3 and parts[:2] == ["v1", "files"]:
                if server.delete_file(parts[2]):
                    return self._send(204, raw=b"", content_type="text/plain")
                return self._problem(404, "Not found", "File not found")
            return self._problem(404, "Not found", f"No route for DELETE {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            raw = self._raw()
            if parts[:1] == ["_fake"]:
                return self._control(parts, raw)
            self._api_latency()
            if not self._authorized():
                return
            if parts == ["v1", "files"]:
                return self._upload(raw)
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return self._problem(400, "Bad request", "the body is not JSON")
            if len(parts) == 4 and parts[:2] == ["v1", "predictions"] and parts[3] == "cancel":
                with server._lock:
                    pred = server.predictions.get(parts[2])
                if pred is None:
                    return self._problem(404, "Not found", "Prediction not found")
                server.cancel(pred)
                with server._lock:
                    return self._send(200, pred.to_json(server.base_url))
            if len(parts) == 5 and parts[:2] == ["v1", "models"] and parts[4] == "predictions":
                ref = f"{parts[2]}/{parts[3]}"
                if ref not in FAKE_MODELS or FAKE_MODELS[ref].get("versions"):
                    return self._problem(404, "Not found", f"{ref} is not an official model; create with a version")
                return self._create(ref, "hidden", body)
            if parts == ["v1", "predictions"]:
                version = str(body.get("version", ""))
                ref = next((r for r, s in FAKE_MODELS.items() if version in (s.get("versions") or [])), None)
                if ref is None:
                    return self._problem(422, "Invalid version", f"version {version!r} does not exist")
                return self._create(ref, version, body)
            return self._problem(404, "Not found", f"No route for POST {url.path}")

        # --- handlers ---------------------------------------------------------------------------

        def _model(self, parts: list[str]) -> None:
            ref = f"{parts[2]}/{parts[3]}"
            if ref not in FAKE_MODELS:
                return self._problem(404, "Not found", f"Model {ref} not found")
            if len(parts) == 4:
                return self._send(200, model_json(ref))
            versions = FAKE_MODELS[ref].get("versions") or []
            if len(parts) == 5 and parts[4] == "versions":
                return self._send(200, {"next": None, "previous": None, "results": [version_json(v) for v in versions]})
            if len(parts) == 6 and parts[4] == "versions" and parts[5] in versions:
                return self._send(200, version_json(parts[5]))
            return self._problem(404, "Not found", "Version not found")

        def _upload(self, raw: bytes) -> None:
            field = multipart_field(self.headers.get("Content-Type", ""), raw, "content")
            if field is None:
                return self._problem(400, "Bad request", "expected multipart/form-data with a 'content' file field")
            data, filename, content_type = field
            self._send(201, server.upload(data, filename=filename or "file", content_type=content_type or
                                          "application/octet-stream"))

        def _control(self, parts: list[str], raw: bytes) -> None:
            body = json.loads(raw) if raw else {}
            if parts == ["_fake", "inject"]:
                kind = body.pop("kind", "")
                if not any(kind in kinds for kinds in FAULT_KINDS.values()):
                    return self._problem(422, "Unknown fault", f"unknown fault {kind!r}")
                server.inject(kind, times=body.pop("times", 1), model=body.pop("model", None), **body)
                return self._send(200, {"ok": True})
            if parts == ["_fake", "release"]:
                server.release(body.get("prediction_id"))
                return self._send(200, {"ok": True})
            if parts == ["_fake", "clear"]:
                server.clear_faults()
                return self._send(200, {"ok": True})
            return self._problem(404, "Not found", f"No control {'/'.join(parts)}")

        def _create(self, ref: str, version: str, body: dict[str, Any]) -> None:
            with server._lock:
                server.create_requests += 1
            inp = body.get("input")
            extra = server._fault_for(ref, inp) if isinstance(inp, dict) else None
            f = extra if extra is not None and extra.kind in FAULT_KINDS["create"] else server._fault("create", ref)
            if f is not None and f.kind == "rate_limit":
                ra = f.options.get("retry_after", 1)
                return self._problem(429, "Too Many Requests", f"Request was throttled. Expected available in {ra} second.",
                                     headers={"Retry-After": str(ra)})
            if f is not None and f.kind == "invalid_input":
                return self._problem(f.options.get("status", 422), "Input validation failed",
                                     f.options.get("detail", "- input.prompt: Does not match the content policy"))
            if f is not None and f.kind == "server_error" and not f.options.get("after_create"):
                return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
            if not isinstance(inp, dict):
                return self._problem(422, "Input validation failed", "input is required")
            missing = [k for k in FAKE_MODELS[ref]["required"] if k not in inp]
            if missing:
                return self._problem(422, "Input validation failed",
                                     "; ".join(f"- input: {k} is required" for k in missing))
            unknown = server.unknown_file_inputs(inp)
            if unknown:
                return self._problem(422, "Input validation failed",
                                     "; ".join(f"- input.{k}: file not found (not uploaded, deleted or expired)"
                                               for k in unknown))
            cancel_after = None
            if self.headers.get("Cancel-After"):
                try:
                    cancel_after = parse_duration(self.headers["Cancel-After"])
                except ValueError as exc:
                    return self._problem(422, "Invalid Cancel-After header", str(exc))
            delay = server._seconds(server.create_latency)
            if delay > 0:  # the provider takes its time; meanwhile the prediction does not exist
                time.sleep(delay)
            pred = server.create(ref, version, inp, extra, cancel_after_s=cancel_after)
            if f is not None and f.kind == "server_error":
                return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
            if f is not None and f.kind == "drop_connection":
                return self._drop()
            if f is not None and f.kind == "hang_after_create":
                server._stop.wait(f.options.get("seconds", 3600.0))
                return self._drop()
            with server._lock:
                body_out = pred.to_json(server.base_url)
            self._send(201, body_out)

        def _list(self, query: dict[str, list[str]]) -> None:
            f = server._fault("list", None)
            if f is not None:
                return self._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
            after = query.get("created_after", [None])[0]
            floor = datetime.fromisoformat(after.replace("Z", "+00:00")).timestamp() if after else None
            cursor = int(query.get("cursor", ["0"])[0])
            with server._lock:
                preds = sorted(server.predictions.values(), key=lambda p: p.created_at, reverse=True)
                if floor is not None:
                    preds = [p for p in preds if p.created_at >= floor]
                page = [p.to_json(server.base_url) for p in preds[cursor:cursor + server.page_size]]
            more = cursor + server.page_size < len(preds)
            nxt = None
            if more:
                nxt = f"{server.base_url}/v1/predictions?cursor={cursor + server.page_size}"
                if after:
                    nxt += f"&created_after={after}"
            self._send(200, {"next": nxt, "previous": None, "results": page})

        def _file(self, parts: list[str]) -> None:
            token = parts[2] if len(parts) >= 3 else ""
            with server._lock:
                entry = server.files.get(token)
            if entry is None:
                return self._send(404, raw=b"Not Found", content_type="text/plain")
            f = server._fault("download", None)
            if f is not None:
                return self._send(f.options.get("status", 503), raw=b"Service Unavailable", content_type="text/plain")
            if entry["expired"] or time.time() > entry["expires_at"]:
                return self._send(entry["expired_status"], raw=b"Not Found", content_type="text/plain")
            self._send(200, raw=entry["data"], content_type=entry["type"])

    return Handler
