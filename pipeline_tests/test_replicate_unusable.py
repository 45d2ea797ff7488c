"""Paid outputs that cannot be used are not re-bought without limit: a transient cause may be bought
once more, a deterministic one not at all (until the configuration that refused it changes), and no
retry policy can buy a third time. Adopting an already-paid prediction reports no cost."""

from __future__ import annotations

import pytest

from pipeline.providers import ProviderError
from pipeline_tests.fake_replicate import fake_replicate  # noqa: F401
from pipeline_tests.test_replicate_faults import FLUX, WAN, Harness


def retry_like_dagster(call, retries: int = 3) -> list[ProviderError]:
    """Call as the asset's RetryPolicy would: again after a retryable ProviderError, up to ``retries``
    times; stop at a permanent one. Returns the errors (the call never succeeds here)."""
    errors: list[ProviderError] = []
    for _ in range(1 + retries):
        try:
            call()
        except ProviderError as exc:
            errors.append(exc)
            if not exc.retryable:
                break
        else:
            break
    return errors


def test_an_undecodable_output_is_bought_twice_at_most(tmp_path, fake_replicate):
    h = Harness(tmp_path, fake_replicate)
    fake_replicate.inject("corrupt_output", times=None, model=WAN)
    errors = retry_like_dagster(h.chunk)
    assert [e.retryable for e in errors] == [True, False]
    assert fake_replicate.create_count(WAN) == 2  # not 4: the retry policy could not buy a 3rd or 4th time
    pids = [p.id for p in sorted(fake_replicate.predictions.values(), key=lambda p: p.created_at)]
    last = str(errors[-1])
    assert f"bought {WAN} twice" in last and "undecodable" in last and "Not buying a third time" in last
    assert all(pid in last for pid in pids) and "bytes" in last and "choose another model" in last
    # A later rerun (a backfill, a new run) is refused before anything is bought.
    with pytest.raises(ProviderError, match="not buying .* again") as err:
        h.chunk()
    assert err.value.retryable is False and fake_replicate.create_count(WAN) == 2
    job = h.ledger.jobs("v")[0]
    assert job.unusable["undecodable"]["count"] == 2 and job.state == "failed"
    assert h.ledger.spent_usd("v") == pytest.approx(0.10)  # both purchases were paid and are counted
    assert h.stored_media() == []


def test_an_expired_output_is_bought_once_more_and_then_used(tmp_path, fake_replicate):
    h = Harness(tmp_path, fake_replicate)
    fake_replicate.inject("expired_output", times=1, model=WAN)
    with pytest.raises(ProviderError, match=r"unusable \(expired\).*buys it once more") as err:
        h.chunk()
    assert err.value.retryable is True
    video = h.chunk()
    assert fake_replicate.create_count(WAN) == 2 and video.cost_usd == pytest.approx(0.05)
    assert h.ledger.get(video.cache_key).unusable["expired"]["count"] == 1


def test_an_oversize_output_is_permanent_at_once_until_the_cap_is_raised(tmp_path, fake_replicate):
    cap = 2 << 20
    h = Harness(tmp_path, fake_replicate, max_download_bytes={"image": cap})
    fake_replicate.inject("oversize_output", times=1, model=FLUX, bytes=3 << 20)
    errors = retry_like_dagster(h.image)
    assert len(errors) == 1 and errors[0].retryable is False
    msg = str(errors[0])
    assert "too_large" in msg and f"{3 << 20} bytes" in msg and f"{cap}-byte cap" in msg
    assert "raise max_download_bytes" in msg and fake_replicate.create_count(FLUX) == 1
    with pytest.raises(ProviderError, match="not buying .* again") as err:  # the same configuration: refused
        h.image()
    assert err.value.retryable is False and fake_replicate.create_count(FLUX) == 1
    # With a larger cap the request may be bought again (and this time the output is fine).
    bigger = Harness(tmp_path, fake_replicate, max_download_bytes={"image": 8 << 20})
    image = bigger.image()
    assert fake_replicate.create_count(FLUX) == 2 and image.cost_usd == pytest.approx(0.003)


def test_a_refetched_prediction_reports_no_cost_and_names_its_payer(tmp_path, fake_replicate):
    # Two videos with the same storyboard request and one ledger, but separate media caches
    # (e.g. two data directories' stores over one shared ledger): the second adopts the first's
    # paid prediction and reports it as reused, not paid.
    first = Harness(tmp_path / "a", fake_replicate, ledger_path=str(tmp_path / "ledger.sqlite"))
    second = Harness(tmp_path / "b", fake_replicate, ledger_path=str(tmp_path / "ledger.sqlite"))
    paid = first.provider.render_image(first.request(video="twin-a"), first.scratch())
    reused = second.provider.render_image(second.request(video="twin-b"), second.scratch())
    assert (paid.cost_usd, paid.reused_cost_usd, paid.paid_by) == (0.003, 0.0, "twin-a")
    assert (reused.cost_usd, reused.reused_cost_usd, reused.paid_by) == (0.0, 0.003, "twin-a")
    assert reused.prediction_id == paid.prediction_id and reused.extra["obtained_by"] == "refetched"
    assert fake_replicate.create_count() == 1
    assert first.ledger.spent_usd("twin-a") == pytest.approx(0.003) and first.ledger.spent_usd("twin-b") == 0
    assert reused.path.read_bytes() == paid.path.read_bytes()
