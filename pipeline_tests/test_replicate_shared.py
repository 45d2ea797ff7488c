"""Many processes, one data directory, one fake Replicate server (its own process): requests
shared between processes are paid for once. Waiters adopt the owner's prediction for free; a
SIGKILLed owner is taken over as soon as its death is seen, without a second create; the planner's
text call is shared the same way.

Every wait here is on a condition with a generous deadline (the machine may be loaded)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.ledger import Ledger
from pipeline.procs import ProcessIdentity, die_with_parent
from pipeline_tests.fake_replicate import FakeServerProcess

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process identities and SIGKILL need Linux /proc")

REPO = Path(__file__).resolve().parents[1]
FLUX = "black-forest-labs/flux-schnell"
WAN = "wan-video/wan-2.2-i2v-fast"
LLAMA = "meta/meta-llama-3-70b-instruct"
PRICES = {"image0": 0.003, "image1": 0.003, "image2": 0.003, "chunk0": 0.05, "chunk1": 0.05, "noisy": 0.05}
DEADLINE_S = 600.0


class Worker:
    """One ``python -m pipeline_tests.replicate_worker`` process; its stdout lines are queued."""

    def __init__(self, server: FakeServerProcess, tmp: Path, video: str, *args: str):
        self.video, self.out, self.err = video, tmp / f"{video}.json", tmp / f"{video}.stderr"
        env = {**os.environ, "REPLICATE_API_TOKEN": server.token,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self._errf = open(self.err, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline_tests.replicate_worker", "--data", str(tmp / "data"), "--base-url",
             server.base_url, "--video", video, "--out", str(self.out), *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self._errf, text=True, preexec_fn=die_with_parent)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line.strip()) for line in self.proc.stdout],
                         daemon=True).start()

    def expect(self, line: str, timeout: float = DEADLINE_S) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.lines.get(timeout=1.0) == line:
                    return
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        raise AssertionError(f"{self.video} never printed {line!r}: {self.stderr()[-3000:]}")

    def stderr(self) -> str:
        if not self._errf.closed:
            self._errf.flush()
        return self.err.read_text(errors="replace")

    def results(self, timeout: float = DEADLINE_S) -> dict[str, dict]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.video} did not finish within {timeout:g} s: {self.stderr()[-3000:]}")
        assert self.proc.returncode == 0, f"{self.video} failed ({self.proc.returncode}): {self.stderr()[-3000:]}"
        self._errf.close()
        return {r["name"]: r for r in json.loads(self.out.read_text())}


def wait_until(predicate, what: str, timeout: float = DEADLINE_S, every: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _job_of(tmp: Path, model: str):
    path = tmp / "data" / "ledger.sqlite"
    if not path.exists():
        return None
    return next((j for j in Ledger(path).jobs() if j.model == model), None)


@pytest.mark.parametrize("create_latency", ["0", "2"])
def test_processes_sharing_requests_pay_once_per_key(tmp_path, create_latency):
    n = 4
    with FakeServerProcess("--create-latency", create_latency, "--run-seconds", "0.3", "0.8",
                           "--render-scale", "0.25") as server:
        workers = [Worker(server, tmp_path, f"twin-{i}", "--go", str(tmp_path / "go")) for i in range(n)]
        for w in workers:
            w.expect("ready")
        started = time.time()
        t0 = time.monotonic()
        (tmp_path / "go").touch()
        results = [w.results() for w in workers]
        elapsed = time.monotonic() - t0
        stats = server.stats()
    ended = time.time()

    # One paid create per request, however many processes asked; no extra create request either.
    assert len(stats["creates"]) == len(PRICES) and set(stats["creates"].values()) == {1}, stats["creates"]
    assert stats["create_requests"] == len(PRICES)
    assert list(stats["uploads_by_sha256"].values()) == [1]  # the noisy start image, uploaded once in all
    # Every process got every output, the same bytes.
    for name in PRICES:
        assert len({r[name]["sha256"] for r in results}) == 1
        assert len({r[name]["prediction_id"] for r in results}) == 1
    # Money: exactly one process paid for each request; the others adopted it free (or hit the cache).
    for name, price in PRICES.items():
        calls = [(w.video, r[name]) for w, r in zip(workers, results)]
        payers = [(video, c) for video, c in calls if c["cost_usd"] > 0]
        assert len(payers) == 1, (name, calls)
        payer, paid = payers[0]
        assert paid["cost_usd"] == pytest.approx(price) and paid["paid_by"] == payer and paid["how"] == "created"
        for video, c in calls:
            if video != payer and not c["cache_hit"]:
                assert c["cost_usd"] == 0 and c["reused_cost_usd"] == pytest.approx(price) and c["paid_by"] == payer
    reported = sum(r[name]["cost_usd"] for r in results for name in PRICES)
    ledger = Ledger(tmp_path / "data" / "ledger.sqlite")
    assert reported == pytest.approx(sum(PRICES.values()))
    assert ledger.spent_between(started - 1, ended + 1) == pytest.approx(reported)
    assert sum(p.cost_usd for p in ledger.predictions(since=started - 1, until=ended + 1)) == pytest.approx(reported)
    hows = sorted(r[name]["how"] for r in results for name in PRICES)
    print(f"\ncreate latency {create_latency} s, {n} processes x {len(PRICES)} requests: creates per key "
          f"{sorted(stats['creates'].values())}, create requests {stats['create_requests']}, uploads "
          f"{stats['uploads']}, outcomes {dict((h, hows.count(h)) for h in set(hows))}, {elapsed:.1f} s")


def test_a_killed_owner_is_taken_over_without_a_second_create(tmp_path):
    with FakeServerProcess("--run-seconds", "0.2", "--render-scale", "0.25") as server:
        server.inject("hold", model=FLUX)  # the prediction runs until released
        # Its create is held 1 s (sync mode), answered still processing: the owner is then polling.
        owner = Worker(server, tmp_path, "payer", "--only", "image0", "--sync-wait", "1")
        job = wait_until(lambda: (j := _job_of(tmp_path, FLUX)) is not None and j.state == "in_flight" and j,
                         "the owner's job in flight")
        assert ProcessIdentity.parse(job.owner).pid == owner.proc.pid
        twin = Worker(server, tmp_path, "twin", "--only", "image0")
        wait_until(lambda: "waiting for it" in twin.stderr(), "the second process to wait for the owner")
        owner.proc.send_signal(signal.SIGKILL)
        owner.proc.wait(60)
        taken = wait_until(lambda: (j := _job_of(tmp_path, FLUX)) is not None and
                           ProcessIdentity.parse(j.owner).pid == twin.proc.pid and j, "the takeover")
        assert taken.state == "in_flight" and taken.prediction_id == job.prediction_id
        server.release()
        got = twin.results()["image0"]
        stats = server.stats()
    assert list(stats["creates"].values()) == [1] and stats["create_requests"] == 1
    assert got["prediction_id"] == job.prediction_id and got["how"] == "resumed"
    # The killed process's video paid for the prediction; the twin reused it.
    assert got["cost_usd"] == 0 and got["reused_cost_usd"] == pytest.approx(0.003) and got["paid_by"] == "payer"
    assert "owner is gone" in twin.stderr()
    ledger = Ledger(tmp_path / "data" / "ledger.sqlite")
    assert ledger.spent_usd("payer") == pytest.approx(0.003) and ledger.spent_usd("twin") == 0


def test_two_processes_planning_the_same_brief_pay_for_one_call(tmp_path):
    with FakeServerProcess("--create-latency", "1", "--run-seconds", "0.5", "--render-scale", "0.25") as server:
        workers = [Worker(server, tmp_path, f"plan-{i}", "--plan", "--go", str(tmp_path / "go")) for i in range(2)]
        for w in workers:
            w.expect("ready")
        (tmp_path / "go").touch()
        plans = [w.results()["plan"] for w in workers]
        stats = server.stats()
    assert stats["create_requests"] == 1 and list(stats["creates"]) == [next(iter(stats["creates"]))]
    assert next(iter(stats["creates"])).startswith(f"{LLAMA}:") and set(stats["creates"].values()) == {1}
    assert plans[0]["beats"] == plans[1]["beats"] and len(plans[0]["beats"]) >= 2
    costs = sorted(p["cost_usd"] for p in plans)
    assert costs[0] == 0 and 0 < costs[1] < 0.01  # one paid, the other adopted the answer


def test_an_owner_keeps_a_short_lease_alive_through_a_long_prediction(tmp_path):
    # A 4 s lease and a 10 s prediction: the owner renews while it polls, so the waiting process
    # never takes the job over (which would look it up and, finding it running, poll it twice).
    with FakeServerProcess("--run-seconds", "10", "--render-scale", "0.25") as server:
        workers = [Worker(server, tmp_path, f"lease-{i}", "--only", "image0", "--lease", "4", "--go",
                          str(tmp_path / "go")) for i in range(2)]
        for w in workers:
            w.expect("ready")
        (tmp_path / "go").touch()
        results = [w.results()["image0"] for w in workers]
        stats = server.stats()
    assert list(stats["creates"].values()) == [1] and stats["create_requests"] == 1
    assert sorted(r["how"] for r in results) == ["created", "waited"]
    assert not any("taken over" in w.stderr() for w in workers)
    job = Ledger(tmp_path / "data" / "ledger.sqlite").jobs()[0]
    assert job.state == "succeeded" and job.updated_at - job.intent_at >= 10 - 1  # it did outlive two leases
