"""One poller per process: every prediction the process waits for is read by it, within the
process's read budget (``ratelimit.ReadBudget``), at most ``max_poll_interval_s`` apart, and
batched through the list endpoint when many are in flight.

Replicate allows 3000 reads a minute per account; a thread per prediction polling on its own
passes any share of that with enough in flight (~2500 reads/min at 80 in flight). Here waiting
threads (``Poller.wait``) only register their prediction; one scheduler thread decides what to read
next and hands reads to a few worker threads (so HTTP latency does not bound the rate):

- **Few in flight** (GET mode): ``GET /v1/predictions/{id}`` at once, then ``poll_interval_s``
  later, x1.5 up to ``max_poll_interval_s``, earliest due first (round-robin when the budget is the
  bottleneck). The default 2 s cap sees a finished prediction ~1 s late on average; one that ends
  within its create's sync wait (``Prefer: wait``, ``predictions``) is never polled at all.
- **Many in flight** (list mode, from ``list_min``: by default when GET mode would need over half
  the budget, 25 at 1500/min and a 2 s cap): a *sweep* of ``GET /v1/predictions?created_after=
  <oldest watched creation - skew>`` (100 per page, newest first, ``next`` up to ``list_max_pages``)
  every second (TARGET_LATENESS_S) reads them all. One the sweep shows finished ends with the
  listed JSON (read by id if it lacks ``output`` or ``metrics``); one whose creation time is
  unknown (resumed after a crash) or that a sweep did not show is read by id as in GET mode. A
  sweep costs one page per 100 predictions created on the account since the oldest watched,
  whatever the number in flight; sweeps use at most half the budget.

Transient read failures are read again on the same schedule; a 429 pauses every read of the process
as long as it says. ``benchmarks/bench_poller.py`` measures reads a minute and lateness (at 100 in
flight: ~250 reads/min, ~0.6 s mean lateness). This scheduler is not a retry loop of one call
(tenacity's domain, used for every other retry); it interleaves the reads of many.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline.procs import PerProcess
from pipeline.providers.base import ProviderError
from pipeline.providers.replicate.client import NotFound, RateLimited, ReplicateApi, Transient, iso, parse_time

log = logging.getLogger("pipeline.providers.replicate")

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
"""Every terminal status the API sends. Anything else is treated as still running."""

TARGET_LATENESS_S = 1.0
"""The most a finished prediction should wait to be seen in list mode (the sweep period), seconds."""


@dataclass(eq=False)
class _Watch:
    """One waiting call's prediction: schedule (monotonic seconds) and what was read."""

    pid: str
    until: float
    first_s: float
    cap_s: float
    due: float
    reads: int = 0
    busy: bool = False
    created_at: float | None = None
    listed: bool = False  # a sweep covers it (no read by id needed while in list mode)
    confirm: bool = False  # a sweep saw it end without its output: read it by id at once
    last: dict[str, Any] | None = None
    failure: Exception | None = None
    outcome: dict[str, Any] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def interval(self) -> float:
        return min(self.cap_s, self.first_s * 1.5 ** max(0, self.reads - 1))


class Poller:
    """Reads predictions until they end, for every thread of this process (see the module doc).

    ``api``: whose client and read budget to use. ``workers``: reads in flight at most.
    ``list_min``: predictions in flight from which sweeps of the list endpoint start (None: when
    GET mode would need more than half the budget). ``list_max_pages``: pages one sweep reads at
    most. ``skew_s``: how far before the oldest watched creation a sweep starts, seconds.
    ``stats`` counts ``gets`` (by id), ``list_pages`` and ``sweeps``.
    """

    def __init__(self, api: ReplicateApi, *, workers: int = 8, list_min: int | None = None, list_max_pages: int = 5,
                 skew_s: float = 5.0, idle_exit_s: float = 30.0):
        self.api = api
        self.workers = max(1, workers)
        self.list_min = list_min
        self.list_max_pages = max(1, list_max_pages)
        self.skew_s = skew_s
        self.idle_exit_s = idle_exit_s
        self.stats = {"gets": 0, "list_pages": 0, "sweeps": 0}
        self._cond = threading.Condition()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.Semaphore(self.workers)
        self._sweeping = False
        self._next_sweep = 0.0

    # --- the waiting side ----------------------------------------------------------------------

    def wait(self, pid: str, *, timeout_s: float, first_interval_s: float, max_interval_s: float,
             created_at: float | None = None) -> dict[str, Any]:
        """Block until prediction ``pid`` has a terminal status or ``timeout_s`` seconds have passed
        (reads ``first_interval_s`` .. ``max_interval_s`` apart, see the module doc). ``created_at``
        (Unix seconds, from the create answer) lets a sweep cover it without a first read by id.
        Returns the prediction JSON: terminal, or the last one read when the time is up. Raises
        NotFound (404), Transient (the last reads failed transiently up to the time limit) or
        ProviderError (a refused read, e.g. HTTP 401)."""
        now = time.monotonic()
        w = _Watch(pid=pid, until=now + timeout_s, first_s=first_interval_s,
                   cap_s=max(first_interval_s, max_interval_s), due=now, created_at=created_at,
                   listed=created_at is not None)
        with self._cond:
            self._watches.add(w)
            self._start()
            self._cond.notify_all()
        if not w.done.wait(timeout_s + self.api.request_timeout_s + 5.0):  # the scheduler is stuck: give up
            with self._cond:
                if not w.done.is_set():
                    self._finish(w, error=Transient(f"prediction {pid}: no read answered within {timeout_s:g} s"))
        if w.error is not None:
            raise w.error
        assert w.outcome is not None
        return w.outcome

    def in_flight(self) -> int:
        """Predictions being waited for now."""
        with self._cond:
            return len(self._watches)

    # --- the scheduler -------------------------------------------------------------------------

    def _start(self) -> None:  # with self._cond held
        if self._thread is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="replicate-poll")
            self._thread = threading.Thread(target=self._schedule, name="replicate-poller", daemon=True)
            self._thread.start()

    def _list_min(self) -> int:
        if self.list_min is not None:
            return self.list_min
        cap = min((w.cap_s for w in self._watches), default=2.0)
        return max(2, math.ceil(self.api.reads.per_second * max(cap, 2 * TARGET_LATENESS_S) / 2))

    def _pick(self) -> tuple[Any, float | None]:
        """The next job, ``("get", watch)`` or ``("sweep", watches)``, and when (monotonic) it is due.
        In list mode a watch a sweep covers is read by id only to confirm its end or at its deadline."""
        idle = [w for w in self._watches if not w.busy]
        if not idle:
            return None, None
        if len(self._watches) < self._list_min():
            first = min(idle, key=lambda w: w.due)
            return ("get", first), first.due
        listable = [w for w in idle if w.listed and w.created_at is not None]

        def due(w: _Watch) -> float:
            if w.confirm:
                return 0.0
            return w.until if w.listed and w.created_at is not None else w.due

        first = min(idle, key=due)
        if listable and not self._sweeping and self._next_sweep <= due(first):
            return ("sweep", listable), self._next_sweep
        return ("get", first), due(first)

    def _schedule(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._watches:
                        if not self._cond.wait(self.idle_exit_s) and not self._watches:
                            pool, self._pool, self._thread = self._pool, None, None
                            if pool is not None:
                                pool.shutdown(wait=False)
                            return
                        continue
                    now = time.monotonic()
                    job, at = self._pick()
                    if job is not None and at is not None and at <= now:
                        break
                    self._cond.wait(None if at is None else at - now)
                kind, target = job
                if kind == "get":
                    target.busy = True
                else:
                    self._sweeping = True
                pool = self._pool
            self._slots.acquire()
            assert pool is not None
            pool.submit(self._get if kind == "get" else self._sweep, target)

    def _finish(self, w: _Watch, *, outcome: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        w.outcome, w.error = outcome, error
        self._watches.discard(w)
        w.done.set()

    def _get(self, w: _Watch) -> None:
        pred: dict[str, Any] | None = None
        problem: BaseException | None = None
        try:
            pred = self.api.read_json(f"/v1/predictions/{w.pid}", what=f"prediction {w.pid}")
        except Exception as exc:  # noqa: BLE001 - sorted below; a waiter must never hang
            problem = exc
        with self._cond:
            try:
                self.stats["gets"] += 1
                now = time.monotonic()
                w.busy = False
                if w.done.is_set():
                    return
                if pred is not None:
                    w.reads += 1
                    w.failure, w.last, w.confirm = None, pred, False
                    if w.created_at is None:
                        w.created_at = parse_time(pred.get("created_at"))
                        w.listed = w.created_at is not None
                    if pred.get("status") in TERMINAL_STATUSES:
                        return self._finish(w, outcome=pred)
                    w.due = now + w.interval()
                elif isinstance(problem, Transient):
                    w.failure = problem
                    wait = problem.retry_after if isinstance(problem, RateLimited) else None
                    w.due = now + (wait if wait is not None else w.interval())
                else:  # NotFound, ProviderError, anything unexpected: the waiter raises it
                    return self._finish(w, error=problem)
                if now >= w.until:
                    if w.failure is not None:
                        return self._finish(w, error=w.failure)
                    return self._finish(w, outcome=w.last)
                w.due = min(w.due, w.until)
            finally:
                self._cond.notify_all()
                self._slots.release()

    def _sweep(self, listable: list[_Watch]) -> None:
        wanted = {w.pid for w in listable}
        floor = min(w.created_at or 0.0 for w in listable) - self.skew_s
        path: str | None = f"/v1/predictions?created_after={iso(floor)}"
        seen: dict[str, dict[str, Any]] = {}
        pages, failed = 0, True
        try:
            while path and pages < self.list_max_pages:
                data = self.api.read_json(path, what="list predictions")
                pages += 1
                results = [p for p in data.get("results") or [] if isinstance(p, dict)]
                seen.update((p["id"], p) for p in results if p.get("id") in wanted)
                oldest = parse_time(results[-1].get("created_at")) if results else None
                if len(seen) == len(wanted) or (oldest is not None and oldest < floor):
                    break
                path = data.get("next")
            failed = False
        except (Transient, NotFound, ProviderError) as exc:
            log.warning("could not list predictions (%s); reading them one by one", self.api.redact(str(exc)))
        except Exception:  # noqa: BLE001 - the scheduler must go on
            log.exception("listing predictions failed")
        with self._cond:
            try:
                now = time.monotonic()
                self.stats["list_pages"] += pages
                self.stats["sweeps"] += 1
                cap = min((w.cap_s for w in self._watches), default=TARGET_LATENESS_S)
                period = max(min(cap, TARGET_LATENESS_S), 2 * pages * self.api.reads.spacing_s)
                self._sweeping, self._next_sweep = False, now + period
                for w in listable:
                    p = seen.get(w.pid)
                    if w.done.is_set():
                        continue
                    if p is None:  # not listed (the listing failed, or it is older): read it by id from now on
                        w.listed = False
                        continue
                    w.failure = None
                    if p.get("status") in TERMINAL_STATUSES:
                        if {"output", "metrics"} <= p.keys():
                            self._finish(w, outcome=p)
                        else:
                            w.confirm = True
                    else:
                        w.last = p
                        w.due = min(w.until, now + w.interval())
            finally:
                self._cond.notify_all()
                self._slots.release()


_POLLERS: PerProcess[Poller] = PerProcess()


def shared_poller(api: ReplicateApi) -> Poller:
    """This process's Poller for ``api``'s API root and token (``ReplicateApi.account_key``),
    created on first use. A forked child starts with none."""
    return _POLLERS.get(api.account_key, lambda: Poller(api))
