"""Polling N predictions in flight: reads a minute and how late a finished prediction is seen, for
the provider's one poller per process (pipeline.providers.replicate.poller) and, for comparison,
for one thread per prediction polling on its own (the provider before it; tenacity, 1 s x1.5 up
to 2 s).

The API is a stub on 127.0.0.1 (this file; not the tests' fake server): ``GET /v1/predictions/{id}``
and ``GET /v1/predictions?created_after=...`` (100 per page, newest first, ``next``), each answered
after ``--latency`` seconds (the real API's answers take ~0.1-0.2 s). Predictions are created at
``--create-rate`` a second (Replicate allows 600 creates a minute) and each runs a uniformly drawn
``--run-seconds`` LOW HIGH; every one is waited for by its own thread, as the render's threads do.
Lateness = when the waiting thread got the terminal answer minus when the stub finished it.
GETs/min: the mean over the row (first create to last answer), and the peak over any 10 s.
The provider's defaults: first poll 1 s, cap 2 s, budget 1500 reads a minute (``--budget``).

"predictions" is how many are created in a row; "peak in flight" the most waited for at once.

Usage: python benchmarks/bench_poller.py [--in-flight 1 10 25 50 100 200] [--latency 0.1]
       [--run-seconds 4 12] [--create-rate 10] [--budget 1500] [--modes poller per-thread]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, heading, machine_info, save_results, table  # noqa: E402

TOKEN = "r8_BenchPollerToken000000000000"


class Stub:
    """The predictions of one account: id -> (created wall time, finish monotonic time)."""

    def __init__(self, latency: float):
        self.latency = latency
        self.preds: dict[str, tuple[float, float]] = {}
        self.reads: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def add(self, pid: str, run_s: float) -> float:
        with self.lock:
            self.preds[pid] = (time.time(), time.monotonic() + run_s)
            return self.preds[pid][0]

    def json(self, pid: str) -> dict:
        created, finish = self.preds[pid]
        done = time.monotonic() >= finish
        return {"id": pid, "status": "succeeded" if done else "processing", "output": "x" if done else None,
                "metrics": {"predict_time": 1.0} if done else {},
                "created_at": datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}

    def serve(self) -> ThreadingHTTPServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                time.sleep(stub.latency)
                url = urlsplit(self.path)
                with stub.lock:
                    stub.reads.append((time.monotonic(), "list" if url.path == "/v1/predictions" else "get"))
                    if url.path == "/v1/predictions":
                        q = parse_qs(url.query)
                        floor = datetime.fromisoformat(q["created_after"][0].replace("Z", "+00:00")).timestamp()
                        cursor = int(q.get("cursor", ["0"])[0])
                        ids = sorted((p for p, (c, _) in stub.preds.items() if c >= floor),
                                     key=lambda p: stub.preds[p][0], reverse=True)
                        more = cursor + 100 < len(ids)
                        nxt = f"{self.path.split('&cursor=')[0]}&cursor={cursor + 100}" if more else None
                        body = {"results": [stub.json(p) for p in ids[cursor:cursor + 100]], "next": nxt}
                    else:
                        body = stub.json(url.path.rsplit("/", 1)[-1])
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def per_thread_wait(base_url: str, pid: str) -> dict:
    """The provider before the poller: each thread polls its own prediction (tenacity backoff)."""
    import httpx
    from tenacity import Retrying, retry_if_result, wait_exponential

    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        retrying = Retrying(retry=retry_if_result(lambda p: p["status"] != "succeeded"),
                            wait=wait_exponential(multiplier=1.0, exp_base=1.5, max=2.0))
        return retrying(lambda: client.get(f"/v1/predictions/{pid}").json())


def run_row(mode: str, n: int, args) -> dict:
    from pipeline.providers.replicate.client import ReplicateApi
    from pipeline.providers.replicate.poller import Poller

    stub = Stub(args.latency)
    server = stub.serve()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    api = ReplicateApi(token=TOKEN, base_url=base_url, request_timeout_s=30.0, poll_interval_s=1.0,
                       max_poll_interval_s=2.0, max_reads_per_minute=args.budget)
    poller = Poller(api)
    rng = random.Random(n)
    late: list[float] = []
    spans: list[tuple[float, float]] = []  # (created, seen) monotonic, for the number in flight
    lock = threading.Lock()

    def wait(pid: str, created: float, created_mono: float) -> None:
        if mode == "poller":
            pred = poller.wait(pid, timeout_s=600, first_interval_s=1.0, max_interval_s=2.0, created_at=created)
        else:
            pred = per_thread_wait(base_url, pid)
        seen = time.monotonic()
        assert pred["status"] == "succeeded"
        with lock:
            late.append(seen - stub.preds[pid][1])
            spans.append((created_mono, seen))

    started = time.monotonic()
    threads = []
    for i in range(n):
        pid = f"pred{i:04d}"
        created = stub.add(pid, rng.uniform(*args.run_seconds))
        t = threading.Thread(target=wait, args=(pid, created, time.monotonic()))
        t.start()
        threads.append(t)
        time.sleep(1.0 / args.create_rate)
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    server.shutdown()
    times = sorted(t for t, _ in stub.reads)
    peak10 = max((sum(1 for u in times[i:] if u - t < 10.0) for i, t in enumerate(times)), default=0)
    peak = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    return {"mode": mode, "predictions": n, "peak in flight": peak, "reads": len(times),
            "list pages": sum(1 for _, kind in stub.reads if kind == "list"),
            "GETs/min (mean)": len(times) / wall * 60, "GETs/min (peak 10 s)": peak10 * 6,
            "mean lateness s": statistics.fmean(late), "max lateness s": max(late), "wall s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 10, 25, 50, 100, 200])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--run-seconds", type=float, nargs=2, default=[4.0, 12.0])
    parser.add_argument("--create-rate", type=float, default=10.0)
    parser.add_argument("--budget", type=float, default=1500.0)
    parser.add_argument("--modes", nargs="+", default=["poller", "per-thread"], choices=["poller", "per-thread"])
    args = parser.parse_args()
    heading(f"Polling N predictions in flight (stub latency {args.latency:g} s, runs {args.run_seconds[0]:g}-"
            f"{args.run_seconds[1]:g} s, {args.create_rate:g} creates/s, budget {args.budget:g} reads/min)")
    rows = []
    for mode in args.modes:
        for n in args.in_flight:
            rows.append(run_row(mode, n, args))
            print(f"  {mode} {n} predictions: done", file=sys.stderr, flush=True)
    emit(table([{k: v for k, v in r.items() if k != "wall s"} for r in rows]))
    save_results("poller", {"machine": machine_info(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
