"""The fake Replicate server's state and behaviour: predictions, their worker threads, faults,
uploaded files, ``Cancel-After`` deadlines and the counters tests assert on (see the package doc)."""

from __future__ import annotations

import hashlib
import random
import string
import tempfile
import threading
import time
from collections import Counter
from http.server import ThreadingHTTPServer
from typing import Any, Callable

from pipeline_tests.fake_replicate.state import (
    DEFAULT_TOKEN,
    FAULT_KINDS,
    FakePrediction,
    Fault,
    canonical,
    input_key,
    iso,
)

TERMINAL = ("succeeded", "failed", "canceled", "aborted")

Seconds = float | tuple[float, float] | Callable[[], float]


class FakeReplicate:
    """The fake API server (see the package doc). Binds 127.0.0.1 on ``port`` (0: a free port).

    ``token``: the API token it accepts (401 otherwise). ``render_scale``: output media are
    rendered at this fraction of the real models' sizes (speed). ``page_size``: predictions per
    list page. ``output_ttl_s``: output URLs answer 404 this long after completion.
    ``output_origin``: origin used in output URLs (default: this server's own).
    ``latency``: added to every API request; ``create_latency``: added to a create before the
    prediction exists (so a lookup meanwhile finds nothing); ``run_seconds``: create -> terminal.
    Each is seconds: a number, a ``(low, high)`` uniform range, or a callable.
    ``file_ttl_s``: uploaded files expire this long after upload (Replicate: 24 h).
    ``run_seconds_for``, ``fault_for``, ``render_during_run``: per-prediction run times and faults
    (see the package doc).
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, port: int = 0, latency: Seconds = 0.0,
                 run_seconds: Seconds = (0.05, 0.15), render_scale: float = 0.25, page_size: int = 100,
                 output_ttl_s: float = 3600.0, output_origin: str | None = None, seed: int = 0,
                 run_seconds_for: Callable[[str, dict[str, Any]], float | None] | None = None,
                 fault_for: Callable[[str, dict[str, Any], int], Any] | None = None,
                 render_during_run: bool = False, create_latency: Seconds = 0.0, file_ttl_s: float = 86400.0):
        from pipeline_tests.fake_replicate.routes import handler_for

        self.token = token
        self.latency = latency
        self.create_latency = create_latency
        self.run_seconds = run_seconds
        self.run_seconds_for = run_seconds_for
        self.fault_for = fault_for
        self.render_during_run = render_during_run
        self.create_requests_by_input: Counter[tuple[str, str]] = Counter()
        self.render_scale = render_scale
        self.page_size = page_size
        self.output_ttl_s = output_ttl_s
        self.file_ttl_s = file_ttl_s
        self._output_origin = output_origin
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.faults: list[Fault] = []
        self.predictions: dict[str, FakePrediction] = {}
        self.files: dict[str, dict[str, Any]] = {}
        """Output files by URL token."""
        self.uploaded: dict[str, dict[str, Any]] = {}
        """Files uploaded with ``POST /v1/files``, by file id."""
        self.uploads = 0
        self.uploads_by_sha256: Counter[str] = Counter()
        self.creates: Counter[tuple[str, str]] = Counter()
        self.create_requests = 0
        self.cancels: list[str] = []
        self.deadline_cancels: list[str] = []
        self.requests: list[tuple[str, str, int]] = []
        self.auth_failures = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-replicate-")
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """API root, e.g. http://127.0.0.1:54321 (give it to the provider as ``base_url``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """Origin of output URLs (allow-list it in the provider's ``allowed_hosts``)."""
        return self._output_origin or self.base_url

    def start(self) -> "FakeReplicate":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-replicate", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for p in self.predictions.values():
                p.cancel.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._tmp.cleanup()

    def __enter__(self) -> "FakeReplicate":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- control -------------------------------------------------------------------------------

    def inject(self, kind: str, *, times: int | None = 1, model: str | None = None, **options: Any) -> Fault:
        """Add a fault (kinds in the package doc). ``times=None`` applies it to every matching request."""
        if not any(kind in kinds for kinds in FAULT_KINDS.values()):
            raise ValueError(f"unknown fault {kind!r}")
        fault = Fault(kind, times, model, options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def release(self, prediction_id: str | None = None) -> None:
        """Let ``hold`` predictions (one, or all) finish."""
        with self._lock:
            for p in self.predictions.values():
                if prediction_id is None or p.id == prediction_id:
                    p.release.set()

    def create_count(self, model: str | None = None, input: dict[str, Any] | None = None) -> int:
        """Predictions created (paid attempts), for one model and/or one exact input."""
        with self._lock:
            return sum(n for (m, i), n in self.creates.items()
                       if (model is None or m == model) and (input is None or i == canonical(input)))

    def inputs(self, model: str | None = None) -> list[dict[str, Any]]:
        """The inputs of every prediction created (of ``model``), oldest first."""
        with self._lock:
            preds = sorted(self.predictions.values(), key=lambda p: p.created_at)
            return [p.input for p in preds if model is None or p.model == model]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` every 10 ms for up to ``timeout`` seconds; True once it holds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    def stats(self) -> dict[str, Any]:
        """The counters as JSON (also ``GET /_fake/stats``): ``creates`` (predictions created per
        ``"model:sha256(input)"`` key), ``create_requests`` (every create POST) and per key, ``uploads``
        (and per content sha256), ``cancels``, ``deadline_cancels``, and every prediction's summary."""
        with self._lock:
            creates = Counter({f"{m}:{hashlib.sha256(i.encode()).hexdigest()}": n for (m, i), n in self.creates.items()})
            requests = Counter({f"{m}:{hashlib.sha256(i.encode()).hexdigest()}": n
                                for (m, i), n in self.create_requests_by_input.items()})
            return {"creates": dict(creates), "create_requests": self.create_requests,
                    "create_requests_by_key": dict(requests), "uploads": self.uploads,
                    "uploads_by_sha256": dict(self.uploads_by_sha256), "cancels": list(self.cancels),
                    "deadline_cancels": list(self.deadline_cancels), "auth_failures": self.auth_failures,
                    "predictions": [{"id": p.id, "model": p.model, "key": input_key(p.model, p.input),
                                     "status": p.status, "created_at": p.created_at, "completed_at": p.completed_at,
                                     "deadline_at": p.deadline_at, "run_s": p.run_s}
                                    for p in sorted(self.predictions.values(), key=lambda p: p.created_at)]}

    # --- uploaded files ------------------------------------------------------------------------

    def upload(self, data: bytes, *, filename: str, content_type: str) -> dict[str, Any]:
        """Store an uploaded file; its JSON (like ``POST /v1/files`` answers)."""
        sha = hashlib.sha256(data).hexdigest()
        now = time.time()
        with self._lock:
            file_id = "".join(self._rng.choice(string.ascii_lowercase + "0123456789") for _ in range(26))
            self.uploaded[file_id] = {"data": data, "name": filename, "content_type": content_type, "sha256": sha,
                                      "md5": hashlib.md5(data).hexdigest(), "created_at": now,  # noqa: S324 - a checksum
                                      "expires_at": now + self.file_ttl_s}
            self.uploads += 1
            self.uploads_by_sha256[sha] += 1
        return self.file_json(file_id)

    def file_json(self, file_id: str) -> dict[str, Any] | None:
        """The JSON of an uploaded file, or None if there is none (deleted, expired, unknown)."""
        with self._lock:
            f = self.uploaded.get(file_id)
            if f is None or time.time() > f["expires_at"]:
                return None
            return {"id": file_id, "name": f["name"], "content_type": f["content_type"], "size": len(f["data"]),
                    "etag": f'"{f["md5"]}"', "checksums": {"sha256": f["sha256"], "md5": f["md5"]}, "metadata": {},
                    "created_at": iso(f["created_at"]), "expires_at": iso(f["expires_at"]),
                    "urls": {"get": f"{self.base_url}/v1/files/{file_id}"}}

    def delete_file(self, file_id: str) -> bool:
        """Delete an uploaded file; False if there was none."""
        with self._lock:
            return self.uploaded.pop(file_id, None) is not None

    def read_input_file(self, value: Any) -> bytes | None:
        """The bytes of an uploaded file named by a model input (its ``urls.get``), or None if the
        value is not one of this server's live files."""
        prefix = f"{self.base_url}/v1/files/"
        if not isinstance(value, str) or not value.startswith(prefix):
            return None
        file_id = value[len(prefix):].split("/")[0]
        with self._lock:
            f = self.uploaded.get(file_id)
            return f["data"] if f is not None and time.time() <= f["expires_at"] else None

    def unknown_file_inputs(self, inp: dict[str, Any]) -> list[str]:
        """Input fields that reference this server's Files API but no live uploaded file."""
        prefix = f"{self.base_url}/v1/files/"
        return [k for k, v in inp.items()
                if isinstance(v, str) and v.startswith(prefix) and self.read_input_file(v) is None]

    # --- predictions ---------------------------------------------------------------------------

    def _seconds(self, spec: Seconds) -> float:
        if callable(spec):
            return float(spec())
        if isinstance(spec, (tuple, list)):
            with self._lock:
                return self._rng.uniform(*spec)
        return float(spec)

    def _fault(self, phase: str, model: str | None) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.kind in FAULT_KINDS[phase] and f.take(model):
                    return f
        return None

    def _outcome_faults(self, model: str) -> dict[str, Fault]:
        out: dict[str, Fault] = {}
        with self._lock:
            for f in self.faults:
                if f.kind in FAULT_KINDS["outcome"] and f.kind not in out and f.take(model):
                    out[f.kind] = f
        return out

    def _new_id(self) -> str:
        with self._lock:
            return "".join(self._rng.choice(string.ascii_lowercase + "0123456789") for _ in range(26))

    def _fault_for(self, model: str, inp: dict[str, Any]) -> Fault | None:
        """The ``fault_for`` fault of one create request (counting the request), or None."""
        with self._lock:
            n = self.create_requests_by_input[(model, canonical(inp))]
            self.create_requests_by_input[(model, canonical(inp))] += 1
        if self.fault_for is None:
            return None
        decided = self.fault_for(model, inp, n)
        if decided is None:
            return None
        kind, options = (decided, {}) if isinstance(decided, str) else decided
        if not any(kind in kinds for kinds in FAULT_KINDS.values()):
            raise ValueError(f"fault_for returned an unknown fault {kind!r}")
        return Fault(kind, 0, model, dict(options))

    def create(self, model: str, version: str, inp: dict[str, Any], extra: Fault | None = None,
               cancel_after_s: float | None = None) -> FakePrediction:
        """Create a prediction (a paid attempt) and start its worker. ``cancel_after_s``: its
        ``Cancel-After`` deadline, seconds from now (aborted if still starting, else canceled)."""
        outcome = self._outcome_faults(model)
        if extra is not None and extra.kind in FAULT_KINDS["outcome"]:
            outcome[extra.kind] = extra
        now = time.time()
        pred = FakePrediction(id=self._new_id(), model=model, version=version, input=inp, created_at=now,
                              outcome=outcome, deadline_at=None if cancel_after_s is None else now + cancel_after_s)
        with self._lock:
            self.predictions[pred.id] = pred
            self.creates[(model, canonical(inp))] += 1
        threading.Thread(target=self._work, args=(pred,), daemon=True, name=f"fake-pred-{pred.id[:6]}").start()
        if cancel_after_s is not None:
            timer = threading.Timer(cancel_after_s, self._deadline, args=(pred,))
            timer.daemon = True
            timer.start()
        return pred

    def _deadline(self, pred: FakePrediction) -> None:
        with self._lock:
            if pred.status in TERMINAL or self._stop.is_set():
                return
            pred.status = "aborted" if pred.status == "starting" else "canceled"
            pred.completed_at = time.time()
            pred.logs += "Prediction deadline (Cancel-After) reached.\n"
            self.deadline_cancels.append(pred.id)
            pred.cancel.set()

    def cancel(self, pred: FakePrediction) -> None:
        with self._lock:
            self.cancels.append(pred.id)
            if pred.status not in TERMINAL:
                pred.status, pred.completed_at = "canceled", time.time()
                pred.logs += "Prediction canceled.\n"
            pred.cancel.set()

    def _work(self, pred: FakePrediction) -> None:
        run = None
        if "slow" in pred.outcome:
            run = pred.outcome["slow"].options.get("seconds", 5.0)
        elif self.run_seconds_for is not None:
            run = self.run_seconds_for(pred.model, pred.input)
        if run is None:
            run = self._seconds(self.run_seconds)
        run = float(run)
        pred.run_s = run
        starting = min(run * 0.2, 0.5)
        if pred.cancel.wait(starting):
            return
        with self._lock:
            if pred.status != "starting":
                return
            pred.status, pred.started_at = "processing", time.time()
            pred.logs += "Loading model...\nRunning prediction...\n"
        if "never_finish" in pred.outcome:
            pred.cancel.wait()
            return
        if "hold" in pred.outcome:
            while not pred.release.wait(0.05):
                if pred.cancel.is_set() or self._stop.is_set():
                    return
        rendered = None
        if self.render_during_run and not ({"fail", "abort", "never_finish", "hold"} & pred.outcome.keys()):
            rendered = self._render_result(pred)
        if "hold" not in pred.outcome and pred.cancel.wait(max(0.0, pred.created_at + run - time.time())):
            return
        output, error, metrics = None, None, {}
        status = "succeeded"
        if rendered is not None:
            status, output, error, metrics = rendered
        elif "fail" in pred.outcome:
            status, error = "failed", pred.outcome["fail"].options.get(
                "error", "The input or output was flagged as sensitive. Please try again with different inputs. (E005)")
        elif "abort" in pred.outcome:
            status = "aborted"
        else:
            status, output, error, metrics = self._render_result(pred)
        with self._lock:
            if pred.status != "processing":
                return
            now = time.time()
            pred.status, pred.output, pred.error, pred.completed_at = status, output, error, now
            pred.metrics = {"predict_time": round(now - (pred.started_at or now), 3),
                            "total_time": round(now - pred.created_at, 3), **metrics}
            pred.logs += "Done.\n" if status == "succeeded" else f"{status}\n"

    def _render_result(self, pred: FakePrediction) -> tuple[str, Any, str | None, dict[str, Any]]:
        """(status, output, error, metrics) of rendering ``pred``'s output now."""
        try:
            output, metrics = self._render(pred)
            return "succeeded", output, None, metrics
        except Exception as exc:  # a bad input the schema check let through
            return "failed", None, f"{type(exc).__name__}: {exc}", {}

    def _render(self, pred: FakePrediction) -> tuple[Any, dict[str, Any]]:
        from pipeline_tests.fake_replicate.render import render

        return render(self, pred)

    def _add_file(self, pred: FakePrediction, name: str, data: bytes, content_type: str) -> str:
        if "corrupt_output" in pred.outcome:
            data = bytes((i * 7 + 13) % 256 for i in range(max(64, len(data) // 4)))
        if "oversize_output" in pred.outcome:
            size = int(pred.outcome["oversize_output"].options.get("bytes", 80 << 20))
            data = data + bytes(max(0, size - len(data)))
        token = "".join(self._rng.choice(string.ascii_letters + string.digits) for _ in range(24))
        with self._lock:
            self.files[token] = {"data": data, "type": content_type, "expires_at": time.time() + self.output_ttl_s,
                                 "expired": "expired_output" in pred.outcome,
                                 "expired_status": pred.outcome.get("expired_output", Fault("x")).options.get("status", 404)}
        return f"{self.origin}/files/{pred.id[:4]}/{token}/{name}"
