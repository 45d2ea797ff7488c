"""Lateness per call with sync mode (``sync_wait_s``, ``Prefer: wait=n``) and without: how long after a
prediction's ``completed_at`` the provider had it (``timings_s.seen_late_s``), and the reads by id
it took, for image calls through the real provider against the tests' fake Replicate (in process).

Each mode runs ``--calls`` calls, ``--parallel`` at a time (threads, as a render's threads do), each
prediction running a uniformly drawn ``--run-seconds`` LOW HIGH; every API request is answered after
``--latency`` s. Polling is the provider's default (first read at once, then 1 s x1.5 up to 2 s).
Sync mode removes the polling lateness of predictions that end within the wait; what is left is
the create answer's trip and the ledger write before ``seen_late_s`` is taken.

Usage: python benchmarks/bench_sync_wait.py [--calls 24] [--parallel 8] [--run-seconds 1 6]
       [--latency 0.1] [--modes 0 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, heading, machine_info, save_results, table  # noqa: E402

from pipeline.generation import GenerationRequest  # noqa: E402
from pipeline.providers import get_provider  # noqa: E402
from pipeline_tests.fake_replicate import FakeReplicate, provider_options  # noqa: E402

FLUX = "black-forest-labs/flux-schnell"


def run_mode(wait_s: int, args: argparse.Namespace, root: Path) -> dict:
    with FakeReplicate(run_seconds=tuple(args.run_seconds), latency=args.latency, render_scale=0.25,
                       seed=7) as server:
        provider = get_provider("replicate", **provider_options(
            server, root / f"wait-{wait_s}", sync_wait_s=wait_s, poll_interval_s=1.0, max_poll_interval_s=2.0,
            request_timeout_s=30.0, deadline_s=120.0))

        def call(i: int) -> dict:
            req = GenerationRequest(media_type="image", provider="replicate", model=FLUX, prompt=f"a fox, take {i}",
                                    seed=i, params={"width": 512, "height": 288}, labels={"video_id": "bench"})
            scratch = root / f"wait-{wait_s}" / f"scratch-{i}"
            scratch.mkdir(parents=True)
            result = provider.render_image(req, scratch)
            return {"pid": result.prediction_id, **result.extra["timings_s"]}

        began = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            rows = list(pool.map(call, range(args.calls)))
        wall = time.monotonic() - began
        reads = {r["pid"]: sum(m == "GET" and p == f"/v1/predictions/{r['pid']}" for m, p, _ in server.requests)
                 for r in rows}
        provider.close()
    late = sorted(r["seen_late_s"] for r in rows)
    return {"sync_wait_s": wait_s, "calls": len(rows), "mean_late_s": round(statistics.fmean(late), 3),
            "median_late_s": round(statistics.median(late), 3), "p90_late_s": round(late[int(0.9 * (len(late) - 1))], 3),
            "max_late_s": round(late[-1], 3), "reads_per_call": round(statistics.fmean(reads.values()), 2),
            "mean_create_s": round(statistics.fmean(r["create_s"] for r in rows), 2),
            "mean_poll_s": round(statistics.fmean(r["poll_s"] for r in rows), 2), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=24)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--run-seconds", type=float, nargs=2, default=[1.0, 6.0])
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--modes", type=int, nargs="+", default=[0, 60])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sync-wait-") as tmp:
        rows = [run_mode(w, args, Path(tmp)) for w in args.modes]
    heading("Lateness per call: sync mode vs polling (seen_late_s = completed_at -> the provider has it)")
    emit(table(rows, floatfmt=".3f"))
    save_results("sync_wait", {"machine": machine_info(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
