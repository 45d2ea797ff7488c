"""One poller per process: many predictions in flight stay within the read budget and are seen
soon after they finish -- one by one when few, through the list endpoint when many. The API is an
``httpx.MockTransport`` account whose predictions finish at scripted times."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from pipeline.providers.replicate.client import NotFound, ReplicateApi

BASE = "https://api.replicate.test"


class Account:
    """Predictions ``p0``.. created now, each ending ``succeeded`` at its scripted monotonic time;
    ``others`` more predictions of the account (another process, the web) created in between."""

    def __init__(self, finish_in: list[float], *, others: int = 0, page_size: int = 100, list_status: int = 200,
                 list_full: bool = True):
        now_wall, now = time.time(), time.monotonic()
        self.page_size, self.list_status, self.list_full = page_size, list_status, list_full
        self.done_at = {f"p{i}": now + s for i, s in enumerate(finish_in)}
        self.created = {pid: now_wall + i * 1e-3 for i, pid in enumerate(self.done_at)}
        self.created.update({f"o{i}": now_wall + 0.5e-3 + i * 1e-3 for i in range(others)})
        self.reads: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def json(self, pid: str) -> dict:
        finished = pid in self.done_at and time.monotonic() >= self.done_at[pid]
        stamp = datetime.fromtimestamp(self.created[pid], timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {"id": pid, "status": "succeeded" if finished or pid.startswith("o") else "processing",
                "created_at": stamp, "output": "https://replicate.delivery/x.png" if finished else None,
                "metrics": {"predict_time": 1.0} if finished else {}}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = urlsplit(str(request.url))
        with self._lock:
            self.reads.append((time.monotonic(), url.path + ("?list" if url.path == "/v1/predictions" else "")))
        if url.path == "/v1/predictions":
            if self.list_status != 200:
                return httpx.Response(self.list_status, json={"detail": "Something went wrong"})
            query = parse_qs(url.query)
            floor = datetime.fromisoformat(query["created_after"][0].replace("Z", "+00:00")).timestamp()
            cursor = int(query.get("cursor", ["0"])[0])
            ids = sorted((p for p in self.created if self.created[p] >= floor), key=self.created.get, reverse=True)
            page = ids[cursor:cursor + self.page_size]
            more = cursor + self.page_size < len(ids)
            nxt = f"{BASE}/v1/predictions?created_after={query['created_after'][0]}&cursor={cursor + self.page_size}"
            listed = [self.json(p) if self.list_full else {k: v for k, v in self.json(p).items() if k != "output"}
                      for p in page]
            return httpx.Response(200, json={"results": listed, "next": nxt if more else None, "previous": None})
        pid = url.path.rsplit("/", 1)[-1]
        if pid not in self.created:
            return httpx.Response(404, json={"detail": "Not found"})
        return httpx.Response(200, json=self.json(pid))

    def max_in_window(self, seconds: float = 1.0) -> int:
        times = sorted(t for t, _ in self.reads)
        return max((sum(1 for u in times[i:] if u - t < seconds) for i, t in enumerate(times)), default=0)


def poller_for(account: Account, per_minute: float, **options):
    from pipeline.providers.replicate.poller import Poller

    api = ReplicateApi(token="r8_PollerTest0123456789", base_url=BASE, request_timeout_s=2.0, poll_interval_s=0.05,
                       max_poll_interval_s=0.2, max_reads_per_minute=per_minute,
                       transport=httpx.MockTransport(account))
    return Poller(api, **options)


def wait_all(poller, account: Account, *, first_s: float, cap_s: float, timeout_s: float = 30.0,
             created: bool = True) -> dict[str, float]:
    """Wait for every scripted prediction from its own thread (told its creation time, as after a
    create, if ``created``); {pid: seconds seen late}."""
    late: dict[str, float] = {}

    def one(pid: str) -> None:
        pred = poller.wait(pid, timeout_s=timeout_s, first_interval_s=first_s, max_interval_s=cap_s,
                           created_at=account.created[pid] if created else None)
        assert pred["status"] == "succeeded" and pred["output"]
        late[pid] = time.monotonic() - account.done_at[pid]

    threads = [threading.Thread(target=one, args=(pid,)) for pid in account.done_at]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(late) == len(account.done_at)
    return late


def test_few_in_flight_are_read_one_by_one_within_the_budget():
    account = Account([0.3, 0.6, 0.9, 1.2, 1.5, 1.8])
    poller = poller_for(account, per_minute=1200)  # 20 reads a second
    late = wait_all(poller, account, first_s=0.05, cap_s=0.2)
    assert max(late.values()) < 0.6
    assert all(path.startswith("/v1/predictions/") for _, path in account.reads)  # no list below list_min
    assert account.max_in_window() <= 20 + 5  # the budget, plus its burst


def test_many_in_flight_are_batched_through_the_list_and_stay_within_the_budget():
    finish = [0.5 + (i % 20) * 0.1 for i in range(60)]  # 60 in flight, all done within 2.5 s
    account = Account(finish, others=150)  # the account made 150 others meanwhile: two pages a sweep
    poller = poller_for(account, per_minute=600)  # 10 reads a second: one by one, each would wait 6 s
    late = wait_all(poller, account, first_s=0.05, cap_s=0.2)
    lists = sum(1 for _, path in account.reads if path.endswith("?list"))
    gets = len(account.reads) - lists
    assert lists >= 3 and poller.stats["sweeps"] >= 1
    assert gets <= 25  # fewer than one each: by id only below list_min in flight (the first and last few)
    assert account.max_in_window() <= 10 + 5
    assert sum(late.values()) / len(late) < 1.0 and max(late.values()) < 2.0


def test_resumed_predictions_are_read_by_id_first_then_swept():
    finish = [1.5 + (i % 10) * 0.1 for i in range(30)]
    account = Account(finish)
    poller = poller_for(account, per_minute=600, list_min=10)
    late = wait_all(poller, account, first_s=0.05, cap_s=0.2, created=False)  # creation times unknown
    by_id = [path.rsplit("/", 1)[-1] for _, path in account.reads if not path.endswith("?list")]
    assert set(by_id) == set(account.done_at) and len(by_id) <= 30 + 10  # one read by id each, then sweeps
    assert poller.stats["sweeps"] >= 1 and max(late.values()) < 2.5


@pytest.mark.parametrize("trouble", ["listing without outputs", "listing fails"])
def test_a_listing_without_outputs_or_a_failing_one_falls_back_to_reads_by_id(trouble):
    finish = [0.4 + (i % 10) * 0.05 for i in range(20)]
    account = Account(finish, list_full=trouble != "listing without outputs",
                      list_status=500 if trouble == "listing fails" else 200)
    poller = poller_for(account, per_minute=3000, list_min=5)
    late = wait_all(poller, account, first_s=0.05, cap_s=0.2)
    by_id = {path.rsplit("/", 1)[-1] for _, path in account.reads if not path.endswith("?list")}
    assert by_id == set(account.done_at) and max(late.values()) < 2.0  # every one got its JSON by id


def test_the_list_mode_threshold_follows_the_budget():
    account = Account([5.0] * 3)
    assert poller_for(account, per_minute=1500)._list_min() == 25  # 25 reads/s x 2 s / 2: the default budget
    assert poller_for(account, per_minute=600)._list_min() == 10


def test_a_missing_prediction_and_a_deadline_end_the_wait():
    account = Account([60.0])
    poller = poller_for(account, per_minute=6000)
    with pytest.raises(NotFound):
        poller.wait("nope", timeout_s=5, first_interval_s=0.05, max_interval_s=0.1)
    started = time.monotonic()
    pred = poller.wait("p0", timeout_s=0.5, first_interval_s=0.05, max_interval_s=0.1)
    assert pred["status"] == "processing" and 0.45 <= time.monotonic() - started < 2.0
    assert poller.in_flight() == 0
