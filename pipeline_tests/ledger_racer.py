"""One racing process for test_ledger_processes: ``python -m pipeline_tests.ledger_racer TARGET DIR N``.

Opens the ledger at TARGET (a SQLite path or a database URL), touches ``DIR/ready-<pid>``, waits
until ``DIR/go`` exists, then claims (``Ledger.begin``, owner = this process) keys ``shared-0`` ..
``shared-<N-1>`` of video "shared" (estimate $0.10 each, budget $0.50) and ``free-0`` ..
``free-<N-1>`` of video "free" (no budget), in an order of its own. Each key it owns is marked
in flight and finished (cost $0.10) before it exits, so no key is left open by a process that is
gone. Prints one JSON line: ``{"claims": {key: "owner" | "busy" | "succeeded" | "refused"},
"max_committed": the highest committed spend of "shared" it read, USD}``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from pipeline.ledger import BudgetExceededError, Ledger
from pipeline.procs import ProcessIdentity

ESTIMATE_USD, BUDGET_USD = 0.10, 0.50


def main(target: str, directory: str, n: int) -> None:
    ledger = Ledger(target)
    (Path(directory) / f"ready-{os.getpid()}").touch()
    go = Path(directory) / "go"
    while not go.exists():
        time.sleep(0.005)
    keys = [f"shared-{i}" for i in range(n)] + [f"free-{i}" for i in range(n)]
    random.Random(os.getpid()).shuffle(keys)
    claims: dict[str, str] = {}
    owned: list[str] = []
    max_committed = 0.0
    for key in keys:
        video = key.split("-")[0]
        try:
            job = ledger.begin(key, provider="test", model="m/x", video_id=video, estimate_usd=ESTIMATE_USD,
                               max_cost_usd=BUDGET_USD if video == "shared" else None)
            claims[key] = job.claim
            if job.claim == "owner":
                owned.append(key)
        except BudgetExceededError:
            claims[key] = "refused"
        max_committed = max(max_committed, ledger.committed_usd("shared"))
    me = str(ProcessIdentity.current())
    for key in owned:  # still ours: this process is alive and well within its 30 s lease
        assert ledger.set_in_flight(key, f"p-{key}-{os.getpid()}", owner=me), key
        assert ledger.finish(key, "succeeded", cost_usd=ESTIMATE_USD, owner=me) is not None, key
        max_committed = max(max_committed, ledger.committed_usd("shared"))
    print(json.dumps({"claims": claims, "max_committed": max_committed}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
