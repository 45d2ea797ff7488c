"""The fake server's prediction endpoints: create (``POST /v1/models/{owner}/{name}/predictions`` and
``POST /v1/predictions``) and list (``GET /v1/predictions``). ``routes`` dispatches to them.

Create answers 201 with the prediction; with ``Prefer: wait=n`` it holds the request up to n seconds
and answers 201 with the finished prediction, or 202 with it as it is (``starting``/``processing``) if
it did not finish, as the OpenAPI document declares. List answers 100 predictions a page, newest
first (API and web ones), with cursor ``next``/``previous`` URLs and the ``created_after`` (at or
after), ``created_before`` (strictly before) and ``source`` filters; it has no model or input filter.
"""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from pipeline_tests.fake_replicate.limits import parse_duration, parse_prefer_wait, throttled
from pipeline_tests.fake_replicate.render import reference_problems
from pipeline_tests.fake_replicate.state import FAKE_MODELS, FAULT_KINDS, is_official

if TYPE_CHECKING:
    from pipeline_tests.fake_replicate.routes import Handler
    from pipeline_tests.fake_replicate.server import FakeReplicate

INVALID_VERSION = ("Invalid version or not permitted",
                   "The specified version does not exist (or perhaps you don't have permission to use it?)")


def resolve_version(version: str) -> tuple[str, str] | None:
    """(model ref, version shown) of a ``POST /v1/predictions`` ``version``: a 64-hex version id,
    ``owner/name:id``, or ``owner/name`` of an official model (shown as ``hidden``); None if unknown."""
    ref, _, vid = version.partition(":") if ":" in version else ("", "", version)
    if not ref and "/" in vid:  # owner/name: an official model by name
        return (vid, "hidden") if is_official(vid) else None
    for r, spec in FAKE_MODELS.items():
        if vid in (spec.get("versions") or []) and (not ref or ref == r):
            return r, vid
    return None


def create(h: "Handler", server: "FakeReplicate", ref: str, version: str, body: dict[str, Any]) -> None:
    """Answer one create request for model ``ref`` (faults, validation, headers, Prefer wait)."""
    with server._lock:
        server.create_requests += 1
    inp = body.get("input")
    extra = server._fault_for(ref, inp) if isinstance(inp, dict) else None
    f = extra if extra is not None and extra.kind in FAULT_KINDS["create"] else server._fault("create", ref)
    if f is not None and f.kind == "rate_limit":
        ra = float(f.options.get("retry_after", 1))
        body429, headers = throttled(ra, retry_after=ra)
        return h._send(429, body429, headers=headers, content_type="application/problem+json")
    if f is not None and f.kind == "invalid_input":
        return h._problem(f.options.get("status", 422), "Input validation failed",
                          f.options.get("detail", "- input.prompt: Does not match the content policy"))
    if f is not None and f.kind == "server_error" and not f.options.get("after_create"):
        return h._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
    if not isinstance(inp, dict):
        return h._problem(422, "Input validation failed", "- input: input is required (a JSON object)",
                          invalid_fields=[{"type": "required", "field": "input", "description": "input is required"}])
    missing = [k for k in FAKE_MODELS[ref]["required"] if k not in inp]
    if missing:
        return h._problem(422, "Input validation failed", "\n".join(f"- input: {k} is required" for k in missing),
                          invalid_fields=[{"type": "required", "field": "input", "description": f"{k} is required"}
                                          for k in missing])
    unknown = server.unknown_file_inputs(inp)
    if unknown:
        return h._problem(422, "Input validation failed",
                          "\n".join(f"- input.{k}: file not found (not uploaded, deleted or expired)" for k in unknown))
    refused = reference_problems(server, ref, inp)
    if refused:
        return h._problem(422, "Input validation failed", "\n".join(f"- {p}" for p in refused))
    cancel_after = None
    if h.headers.get("Cancel-After") is not None:
        try:
            cancel_after = parse_duration(h.headers["Cancel-After"])
        except ValueError as exc:
            return h._problem(422, "Invalid Cancel-After header", str(exc))
        if cancel_after < max(server.min_cancel_after_s, 1e-9):
            return h._problem(422, "Invalid Cancel-After header",
                              f"Cancel-After {h.headers['Cancel-After']!r} is too short: the minimum is "
                              f"{server.min_cancel_after_s:g}s" if server.min_cancel_after_s else
                              f"Cancel-After {h.headers['Cancel-After']!r} must be a positive duration")
    try:
        wait_s = parse_prefer_wait(h.headers.get("Prefer"))
    except ValueError as exc:
        return h._problem(422, "Invalid Prefer header", str(exc))
    delay = server._seconds(server.create_latency)
    if delay > 0:  # the provider takes its time; meanwhile the prediction does not exist
        time.sleep(delay)
    pred = server.create(ref, version, inp, extra, cancel_after_s=cancel_after)
    if f is not None and f.kind == "server_error":
        return h._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
    if f is not None and f.kind == "drop_connection":
        return h._drop()
    if f is not None and f.kind == "hang_after_create":
        server._stop.wait(f.options.get("seconds", 3600.0))
        return h._drop()
    status = 201
    if wait_s is not None:
        end = time.monotonic() + wait_s
        while not pred.done.wait(max(0.0, min(0.05, end - time.monotonic()))):
            if time.monotonic() >= end or server._stop.is_set():
                break
        status = 201 if pred.done.is_set() else 202
    with server._lock:  # without Prefer: wait, Replicate answers with the prediction as created ("starting")
        body_out = server.prediction_json(pred) if wait_s is not None else pred.created_json
    h._send(status, body_out)


def _cursor(position: tuple[float, str], reverse: bool) -> str:
    """An opaque page cursor (base64 of ``p=<created_at>&i=<id>[&r=1]``, like DRF's cursor pagination)."""
    fields = {"p": repr(position[0]), "i": position[1], **({"r": "1"} if reverse else {})}
    return base64.urlsafe_b64encode(urlencode(fields).encode()).decode()


def _uncursor(text: str) -> tuple[tuple[float, str], bool]:
    fields = parse_qs(base64.urlsafe_b64decode(text.encode()).decode(), strict_parsing=True)
    return (float(fields["p"][0]), fields["i"][0]), fields.get("r", ["0"])[0] == "1"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(ts: float) -> int:
    """Unix seconds as whole microseconds, exactly as ``created_at`` is written (``iso``: the
    datetime's own rounding), so a time read back from a listing compares equal to itself. The
    filters compare at this resolution, the API's."""
    return (datetime.fromtimestamp(ts, timezone.utc) - _EPOCH) // timedelta(microseconds=1)


def _timestamp_us(text: str) -> int:
    """Whole microseconds since the epoch of an ISO 8601 time (naive means UTC), without floats."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)) - _EPOCH) // timedelta(microseconds=1)


def list_predictions(h: "Handler", server: "FakeReplicate", query: dict[str, list[str]]) -> None:
    """Answer ``GET /v1/predictions`` (see the module doc). 400 for a malformed filter or cursor."""
    f = server._fault("list", None)
    if f is not None:
        return h._problem(f.options.get("status", 500), "Internal Server Error", "Something went wrong")
    filters = {k: query[k][0] for k in ("created_after", "created_before", "source") if query.get(k)}
    try:
        after = _timestamp_us(filters["created_after"]) if "created_after" in filters else None
        before = _timestamp_us(filters["created_before"]) if "created_before" in filters else None
        cursor = _uncursor(query["cursor"][0]) if query.get("cursor") else None
    except (ValueError, KeyError) as exc:
        return h._problem(400, "Bad request", f"invalid created_after, created_before or cursor: {exc}")
    server.sweep_deadlines()
    n = server.page_size
    with server._lock:
        preds = sorted(server.predictions.values(), key=lambda p: (p.created_at, p.id), reverse=True)
        preds = [p for p in preds if (after is None or _us(p.created_at) >= after)
                 and (before is None or _us(p.created_at) < before)
                 and ("source" not in filters or p.source == filters["source"])]
        keys = [(p.created_at, p.id) for p in preds]
        if cursor is None:
            start = 0
        elif not cursor[1]:  # the page after (older than) the position
            start = next((i for i, k in enumerate(keys) if k < cursor[0]), len(keys))
        else:  # the page before (newer than) the position
            end = next((i for i, k in enumerate(keys) if k <= cursor[0]), len(keys))
            start = max(0, end - n)
        page = preds[start:start + n] if cursor is None or not cursor[1] else preds[start:end]
        results = [server.prediction_json(p) for p in page]
    base = f"{server.base_url}/v1/predictions?"
    nxt = prev = None
    if page and start + len(page) < len(preds):
        nxt = base + urlencode({**filters, "cursor": _cursor(keys[start + len(page) - 1], False)})
    if page and start > 0:
        prev = base + urlencode({**filters, "cursor": _cursor(keys[start], True)})
    h._send(200, {"next": nxt, "previous": prev, "results": results})
