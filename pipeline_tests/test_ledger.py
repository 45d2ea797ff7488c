"""The prediction ledger: durable job states, resumption, spend accounting and the budget."""

from __future__ import annotations

import threading

import pytest

from pipeline import costs
from pipeline.ledger import BudgetExceededError, Ledger
from pipeline.manifests import CostLine
from pipeline.providers.base import ProviderError


def _begin(ledger: Ledger, key: str, estimate: float = 0.05, budget: float | None = None, video: str = "v1"):
    return ledger.begin(key, provider="replicate", model="m/x", video_id=video, estimate_usd=estimate,
                        max_cost_usd=budget, labels={"video_id": video})


def test_job_goes_intent_in_flight_succeeded_and_survives_reopening(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    job = _begin(ledger, "k1")
    assert (job.state, job.prediction_id, job.resumed, job.attempts) == ("intent", None, False, 1)
    ledger.set_in_flight("k1", "pred-1")

    reopened = Ledger(path)  # another process would see the same
    job = _begin(reopened, "k1")
    assert (job.state, job.prediction_id, job.resumed) == ("in_flight", "pred-1", True)
    assert job.attempts == 1  # resuming is not a new attempt

    reopened.finish("k1", "succeeded", cost_usd=0.05, output={"urls": ["https://x/y.mp4"]})
    job = reopened.get("k1")
    assert (job.state, job.cost_usd, job.output) == ("succeeded", 0.05, {"urls": ["https://x/y.mp4"]})
    assert [p.prediction_id for p in reopened.predictions(video_id="v1")] == ["pred-1"]
    assert reopened.spent_usd("v1") == pytest.approx(0.05)
    # A succeeded job is returned as is (its output can be fetched again for free).
    again = _begin(reopened, "k1")
    assert (again.state, again.prediction_id, again.resumed) == ("succeeded", "pred-1", False)


def test_failed_job_restarts_as_a_new_attempt_and_keeps_the_paid_cost(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    _begin(ledger, "k")
    ledger.set_in_flight("k", "p1")
    ledger.finish("k", "failed", cost_usd=0.05, error="output expired")  # paid, but unusable
    job = _begin(ledger, "k")
    assert (job.state, job.prediction_id, job.attempts, job.error) == ("intent", None, 2, None)
    ledger.set_in_flight("k", "p2")
    ledger.finish("k", "succeeded", cost_usd=0.05)
    assert ledger.spent_usd("v1") == pytest.approx(0.10)  # both predictions were paid
    assert [(p.prediction_id, p.status) for p in ledger.predictions()] == [("p1", "failed"), ("p2", "succeeded")]


def test_budget_counts_spend_and_open_estimates_and_refuses_before_recording(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    _begin(ledger, "a", estimate=0.30, budget=1.0)
    ledger.set_in_flight("a", "pa")
    ledger.finish("a", "succeeded", cost_usd=0.25)
    _begin(ledger, "b", estimate=0.50, budget=1.0)  # open: reserves 0.50
    assert ledger.committed_usd("v1") == pytest.approx(0.75)
    with pytest.raises(BudgetExceededError) as err:
        _begin(ledger, "c", estimate=0.30, budget=1.0)
    assert isinstance(err.value, ProviderError) and err.value.retryable is False
    assert "max_cost_usd" in str(err.value) and "$1.00" in str(err.value)
    assert ledger.get("c") is None  # nothing recorded for a refused call
    _begin(ledger, "c", estimate=0.25, budget=1.0)  # exactly at the budget is allowed
    # Resuming an open job never re-checks the budget (it is already reserved).
    assert _begin(ledger, "b", estimate=0.50, budget=0.01).resumed
    # Other videos have their own budget.
    _begin(ledger, "d", estimate=0.9, budget=1.0, video="v2")


def test_concurrent_reservations_cannot_overshoot_the_budget(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            Ledger(ledger.path).begin(f"k{i}", provider="replicate", model="m", video_id="v", estimate_usd=0.1,
                                      max_cost_usd=0.5)
            result = "ok"
        except BudgetExceededError:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 5 and outcomes.count("refused") == 7
    assert ledger.committed_usd("v") == pytest.approx(0.5)


def test_cost_table_has_a_total_row():
    rows = [CostLine(stage="storyboard_images", segment="000", item="storyboard image", provider="replicate",
                     model="black-forest-labs/flux-schnell", units=1, unit="image", cost_usd=0.003, cache_hit=False),
            CostLine(stage="chunk_videos", segment="000", item="chunk 0", provider="replicate",
                     model="wan-video/wan-2.2-i2v-fast", units=5.06, unit="video s", cost_usd=0.05, cache_hit=False)]
    rows_out = costs.display_rows(costs.cost_frame(rows))
    assert [r["stage"] for r in rows_out] == ["storyboard_images", "chunk_videos", "total"]
    assert float(rows_out[-1]["paid_usd"]) == pytest.approx(0.053)
    assert float(costs.display_rows(costs.cost_frame([]))[-1]["paid_usd"]) == 0.0
