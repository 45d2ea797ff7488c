"""The fake server as its own process: ``python -m pipeline_tests.fake_replicate`` (``main``) and
``FakeServerProcess``, which starts it for a test, waits for it to be ready without any fixed
sleep, and reads its counters over HTTP (``GET /_fake/stats``) so many client processes can share it."""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

READY = "fake Replicate at "
"""The first line the server prints once it accepts connections: ``fake Replicate at <base URL>``."""

REPO = Path(__file__).resolve().parents[2]


def _seconds_arg(text: str) -> float | tuple[float, float]:
    """A number of seconds, or a ``LOW,HIGH`` uniform range."""
    if "," in text:
        low, high = (float(x) for x in text.split(",", 1))
        return (low, high)
    return float(text)


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline_tests.fake_replicate``: serve on 127.0.0.1 until SIGTERM or Ctrl-C."""
    from pipeline_tests.fake_replicate.limits import CREATE_LIMIT_PER_MIN, READ_LIMIT_PER_MIN
    from pipeline_tests.fake_replicate.server import FakeReplicate
    from pipeline_tests.fake_replicate.state import DEFAULT_TOKEN

    ap = argparse.ArgumentParser(description="Run the fake Replicate API on 127.0.0.1.")
    ap.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed on the ready line)")
    ap.add_argument("--token", default=DEFAULT_TOKEN)
    ap.add_argument("--latency", type=_seconds_arg, default=0.0, help="seconds (or LOW,HIGH) added to every API request")
    ap.add_argument("--create-latency", type=_seconds_arg, default=0.0,
                    help="seconds (or LOW,HIGH) a create takes before the prediction exists")
    ap.add_argument("--run-seconds", type=float, nargs="+", default=[1.0, 3.0], metavar="S",
                    help="prediction run time, seconds: one number, or LOW HIGH")
    ap.add_argument("--render-scale", type=float, default=0.5)
    ap.add_argument("--file-ttl", type=float, default=86400.0, help="uploaded files expire after this many seconds")
    ap.add_argument("--retention", type=float, default=3600.0,
                    help="API predictions lose input/output/logs this many seconds after finishing (negative: never)")
    ap.add_argument("--official-echo", choices=("on", "off"), default=None,
                    help="official models show another model name and a dp- version (default: "
                         "$FAKE_REPLICATE_OFFICIAL_ECHO, else on)")
    ap.add_argument("--create-limit", type=int, default=CREATE_LIMIT_PER_MIN,
                    help="creates allowed per rate window (0: unlimited)")
    ap.add_argument("--read-limit", type=int, default=READ_LIMIT_PER_MIN,
                    help="other API requests allowed per rate window (0: unlimited)")
    ap.add_argument("--rate-window", type=float, default=60.0, help="rate limit window, seconds")
    ap.add_argument("--min-cancel-after", type=float, default=5.0,
                    help="shortest Cancel-After accepted, seconds (the API documents 5)")
    args = ap.parse_args(argv)
    if len(args.run_seconds) > 2:
        ap.error("--run-seconds takes one number or two (LOW HIGH)")
    run = args.run_seconds[0] if len(args.run_seconds) == 1 else tuple(args.run_seconds)
    server = FakeReplicate(token=args.token, port=args.port, latency=args.latency, create_latency=args.create_latency,
                           run_seconds=run, render_scale=args.render_scale, file_ttl_s=args.file_ttl,
                           retention_s=None if args.retention < 0 else args.retention,
                           official_echo=None if args.official_echo is None else args.official_echo == "on",
                           create_limit_per_min=args.create_limit or None, read_limit_per_min=args.read_limit or None,
                           rate_window_s=args.rate_window, min_cancel_after_s=args.min_cancel_after).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"{READY}{server.base_url}\n  export REPLICATE_BASE_URL={server.base_url}\n"
          f"  export REPLICATE_API_TOKEN={server.token}\n  export REPLICATE_OUTPUT_HOSTS={server.origin}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.close()


class FakeServerProcess:
    """``with FakeServerProcess("--create-latency", "0.5") as s:`` runs the fake server in a
    subprocess on a free port: ``s.base_url``, ``s.origin``, ``s.token``, ``s.stats()``,
    ``s.inject(kind, **options)``, ``s.release()``, ``s.configure(**knobs)``, ``s.advance_clock(s)``,
    ``s.seed_predictions(n, **options)`` (each like ``FakeReplicate``'s, over ``/_fake/...``).

    Start-up waits for the ready line for up to ``start_timeout_s`` seconds (generous: a loaded
    machine may take long to import), then for ``GET /_fake/stats`` to answer. The process gets
    SIGKILL if the test process dies. Raises RuntimeError (with its stderr) if it cannot start.
    """

    def __init__(self, *args: str, start_timeout_s: float = 120.0, token: str | None = None):
        from pipeline_tests.fake_replicate.state import DEFAULT_TOKEN

        self.args = list(args)
        self.token = token or DEFAULT_TOKEN
        self.start_timeout_s = start_timeout_s
        self.base_url = ""
        self._proc: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile()
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def origin(self) -> str:
        return self.base_url

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> "FakeServerProcess":
        from pipeline.procs import die_with_parent

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline_tests.fake_replicate", "--port", "0", "--token", self.token, *self.args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True, preexec_fn=die_with_parent)
        threading.Thread(target=self._read, daemon=True, name="fake-server-stdout").start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.base_url:
            try:
                line = self._lines.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                line = ""
            if line is None or self._proc.poll() is not None:
                raise RuntimeError(f"the fake server exited ({self._proc.poll()}) before it was ready: {self._err()}")
            if line.startswith(READY):
                self.base_url = line[len(READY):].strip()
            elif time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the fake server printed no ready line within {self.start_timeout_s:g} s: "
                                   f"{self._err()}")
        while True:  # the port is bound before the line is printed; check it answers anyway
            try:
                self.stats()
                return self
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the fake server at {self.base_url} does not answer: {exc}") from None
                time.sleep(0.2)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _err(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def _http(self, method: str, path: str, json: Any = None) -> Any:
        import httpx

        r = httpx.request(method, f"{self.base_url}{path}", json=json, timeout=60.0)
        r.raise_for_status()
        return r.json()

    def stats(self) -> dict[str, Any]:
        """The server's counters (``FakeReplicate.stats``)."""
        return self._http("GET", "/_fake/stats")

    def inject(self, kind: str, *, times: int | None = 1, model: str | None = None, **options: Any) -> None:
        """Add a fault in the server process (like ``FakeReplicate.inject``)."""
        self._http("POST", "/_fake/inject", {"kind": kind, "times": times, "model": model, **options})

    def release(self, prediction_id: str | None = None) -> None:
        """Let ``hold`` predictions finish."""
        self._http("POST", "/_fake/release", {"prediction_id": prediction_id})

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs of the server (``FakeReplicate.configure``); returns them all."""
        return self._http("POST", "/_fake/config", knobs)

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the server clock forward (``FakeReplicate.advance_clock``); returns its config."""
        return self._http("POST", "/_fake/clock", {"advance_s": seconds})

    def seed_predictions(self, n: int, **options: Any) -> list[str]:
        """Add finished web (or other clients') predictions (``FakeReplicate.seed_predictions``)."""
        return self._http("POST", "/_fake/seed", {"n": n, **options})["ids"]

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 60 s)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(60)

    def __enter__(self) -> "FakeServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._stderr.close()
