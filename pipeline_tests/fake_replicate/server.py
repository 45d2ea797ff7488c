"""The fake Replicate server: its state, knobs, control methods and counters (see the package doc).
Predictions live in ``lifecycle.PredictionsMixin``, files in ``uploads.UploadsMixin``, HTTP in ``routes``."""

from __future__ import annotations

import hashlib
import random
import tempfile
import threading
import time
from collections import Counter
from http.server import ThreadingHTTPServer
from typing import Any, Callable

from pipeline_tests.fake_replicate.lifecycle import TERMINAL, PredictionsMixin
from pipeline_tests.fake_replicate.limits import CREATE_LIMIT_PER_MIN, READ_LIMIT_PER_MIN, RateLimiter, throttled
from pipeline_tests.fake_replicate.state import (
    DEFAULT_TOKEN,
    FAULT_KINDS,
    FakePrediction,
    Fault,
    canonical,
    input_key,
    iso,
    official_echo_default,
)
from pipeline_tests.fake_replicate.uploads import UploadsMixin

__all__ = ["CONFIG_KNOBS", "TERMINAL", "FakeReplicate", "Seconds"]

Seconds = float | tuple[float, float] | Callable[[], float]

CONFIG_KNOBS = ("retention_s", "official_echo", "create_limit_per_min", "read_limit_per_min", "rate_window_s",
                "min_cancel_after_s", "page_size", "output_ttl_s", "file_ttl_s")
"""The knobs ``configure`` (and ``POST /_fake/config``) can change on a running server."""


class FakeReplicate(UploadsMixin, PredictionsMixin):
    """The fake API server (see the package doc). Binds 127.0.0.1 on ``port`` (0: a free port).

    ``token``: the API token it accepts (401 otherwise). ``render_scale``: output media are
    rendered at this fraction of the real models' sizes (speed). ``page_size``: predictions per
    list page (Replicate: 100). ``output_ttl_s``: output URLs answer 404 this long after completion.
    ``output_origin``: origin used in output URLs (default: this server's own).
    ``latency``: added to every API request; ``create_latency``: added to a create before the
    prediction exists (so a lookup meanwhile finds nothing); ``run_seconds``: create -> terminal.
    Each is seconds: a number, a ``(low, high)`` uniform range, or a callable.
    ``file_ttl_s``: uploaded files expire this long after upload (Replicate: 24 h).
    ``run_seconds_for``, ``fault_for``, ``render_during_run``: per-prediction run times and faults
    (see the package doc).

    Replicate's own behaviour, each a knob (``configure`` changes them later):

    - ``retention_s`` (3600, Replicate's 1 hour; None: never): an API prediction's input, output
      and logs are removed this long after it finished (``data_removed: true``).
    - ``official_echo`` (None: ``FAKE_REPLICATE_OFFICIAL_ECHO``, else ``state.OFFICIAL_ECHO_DEFAULT``,
      True): official models' predictions show another model name and a ``dp-`` version.
    - ``create_limit_per_min`` (600) and ``read_limit_per_min`` (3000; None: unlimited): sliding-window
      rate limits over ``rate_window_s`` (60) seconds; past them a request gets Replicate's 429.
    - ``min_cancel_after_s`` (5, the OpenAPI document's minimum): a shorter ``Cancel-After`` is
      refused with 422 (the provider sends at least 5 s: ``client.MIN_CANCEL_AFTER_S``).

    The server clock (``now``) is real time plus ``advance_clock`` shifts: every timestamp, data
    removal, file expiry, deadline and rate window follows it.
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, port: int = 0, latency: Seconds = 0.0,
                 run_seconds: Seconds = (0.05, 0.15), render_scale: float = 0.25, page_size: int = 100,
                 output_ttl_s: float = 3600.0, output_origin: str | None = None, seed: int = 0,
                 run_seconds_for: Callable[[str, dict[str, Any]], float | None] | None = None,
                 fault_for: Callable[[str, dict[str, Any], int], Any] | None = None,
                 render_during_run: bool = False, create_latency: Seconds = 0.0, file_ttl_s: float = 86400.0,
                 retention_s: float | None = 3600.0, official_echo: bool | None = None,
                 create_limit_per_min: int | None = CREATE_LIMIT_PER_MIN,
                 read_limit_per_min: int | None = READ_LIMIT_PER_MIN, rate_window_s: float = 60.0,
                 min_cancel_after_s: float = 5.0):
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
        self.retention_s = retention_s
        self.official_echo = official_echo_default() if official_echo is None else bool(official_echo)
        self.min_cancel_after_s = min_cancel_after_s
        self.clock_offset_s = 0.0
        self._limiters = {"create": RateLimiter(create_limit_per_min, rate_window_s),
                          "read": RateLimiter(read_limit_per_min, rate_window_s)}
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
        self.throttled = 0
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

    def now(self) -> float:
        """The server clock: Unix seconds, real time plus every ``advance_clock`` shift."""
        return time.time() + self.clock_offset_s

    def advance_clock(self, seconds: float) -> float:
        """Move the server clock ``seconds`` forward (data removal, file expiry, ``Cancel-After``
        deadlines and rate windows see the time pass at once). Returns the new ``now()``."""
        if seconds < 0:
            raise ValueError(f"the fake clock only moves forward (advance_clock({seconds}))")
        with self._lock:
            self.clock_offset_s += seconds
        self.sweep_deadlines()
        return self.now()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs of the running server (names in ``CONFIG_KNOBS``: see the class doc) and
        return them all. Raises ValueError for an unknown one."""
        unknown = set(knobs) - set(CONFIG_KNOBS)
        if unknown:
            raise ValueError(f"unknown fake Replicate knob(s) {sorted(unknown)}; known: {', '.join(CONFIG_KNOBS)}")
        with self._lock:
            for name, value in knobs.items():
                if name == "create_limit_per_min":
                    self._limiters["create"].limit = value
                elif name == "read_limit_per_min":
                    self._limiters["read"].limit = value
                elif name == "rate_window_s":
                    for limiter in self._limiters.values():
                        limiter.window_s = float(value)
                else:
                    setattr(self, name, bool(value) if name == "official_echo" else value)
        return self.config()

    def config(self) -> dict[str, Any]:
        """The current knobs (``CONFIG_KNOBS``) and the clock (``now``, ``clock_offset_s``)."""
        with self._lock:
            return {"retention_s": self.retention_s, "official_echo": self.official_echo,
                    "create_limit_per_min": self._limiters["create"].limit,
                    "read_limit_per_min": self._limiters["read"].limit,
                    "rate_window_s": self._limiters["create"].window_s, "min_cancel_after_s": self.min_cancel_after_s,
                    "page_size": self.page_size, "output_ttl_s": self.output_ttl_s, "file_ttl_s": self.file_ttl_s,
                    "now": iso(self.now()), "clock_offset_s": self.clock_offset_s}

    def throttle(self, kind: str) -> tuple[dict, dict[str, str]] | None:
        """Count one request against the ``create`` or ``read`` rate limit; None if it may proceed,
        else the 429 (body, headers) to answer (``limits.throttled``)."""
        with self._lock:
            ok, _remaining, reset = self._limiters[kind].hit(self.now())
            if ok:
                return None
            self.throttled += 1
        return throttled(reset)

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
            return [p.input for p in preds if not p.seeded and (model is None or p.model == model)]

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
        (and per content sha256), ``cancels``, ``deadline_cancels``, ``throttled`` (429s of the rate
        limits), and every prediction's summary."""
        now = self.now()
        with self._lock:
            creates = Counter({f"{m}:{hashlib.sha256(i.encode()).hexdigest()}": n for (m, i), n in self.creates.items()})
            requests = Counter({f"{m}:{hashlib.sha256(i.encode()).hexdigest()}": n
                                for (m, i), n in self.create_requests_by_input.items()})
            return {"creates": dict(creates), "create_requests": self.create_requests,
                    "create_requests_by_key": dict(requests), "uploads": self.uploads,
                    "uploads_by_sha256": dict(self.uploads_by_sha256), "cancels": list(self.cancels),
                    "deadline_cancels": list(self.deadline_cancels), "auth_failures": self.auth_failures,
                    "throttled": self.throttled,
                    "predictions": [{"id": p.id, "model": p.model, "key": input_key(p.model, p.input),
                                     "status": p.status, "created_at": p.created_at, "completed_at": p.completed_at,
                                     "deadline_at": p.deadline_at, "run_s": p.run_s, "source": p.source,
                                     "data_removed": p.data_removed(now, self.retention_s)}
                                    for p in sorted(self.predictions.values(), key=lambda p: p.created_at)]}
