"""The poll interval's cap is 2 s by default (a finished prediction is seen ~1 s late on average;
BENCHMARKS.md section 1) and configurable where the other Replicate settings are: the Dagster
resource's ``ReplicateSettings`` (run config) and ``build_definitions(replicate_max_poll_interval_s=..)``.
Like ``lease_s`` and ``deadline_s`` it has no environment variable (README, configuration table)."""

from __future__ import annotations

import dagster as dg

from pipeline.definitions import build_definitions
from pipeline.defs.resources import PipelineResource, ReplicateSettings
from pipeline.providers import get_provider
from pipeline_tests.fake_replicate import FakeReplicate
from pipeline_tests.test_replicate_faults import Harness


def caps(provider) -> tuple[float, float, float]:
    """The cap as the API client (retried reads), the poller's waits and the ledger waits see it."""
    return provider.api.max_poll_interval_s, provider.predictions.max_poll_interval_s, provider.jobs.max_poll_interval_s


def test_the_default_cap_is_2_s_everywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    assert ReplicateSettings().max_poll_interval_s == 2.0 and ReplicateSettings().poll_interval_s == 1.0
    assert caps(get_provider("replicate", workspace_root=tmp_path)) == (2.0, 2.0, 2.0)
    defs = build_definitions(str(tmp_path / "data"))
    assert caps(defs.resources["pipeline"].provider("replicate")) == (2.0, 2.0, 2.0)


def test_the_cap_is_set_by_build_definitions_and_by_the_resource_config(tmp_path):
    defs = build_definitions(str(tmp_path / "a"), replicate_poll_interval_s=0.2, replicate_max_poll_interval_s=0.5)
    assert caps(defs.resources["pipeline"].provider("replicate")) == (0.5, 0.5, 0.5)

    # As Dagster run config: the resource's nested ReplicateSettings.
    @dg.op
    def read_cap(pipeline: PipelineResource) -> float:
        return pipeline.provider("replicate").predictions.max_poll_interval_s

    @dg.job(resource_defs={"pipeline": PipelineResource(data_dir=str(tmp_path / "b"), replicate=ReplicateSettings())})
    def cap_job():
        read_cap()

    result = cap_job.execute_in_process(run_config={"resources": {"pipeline": {"config": {
        "replicate": {"max_poll_interval_s": 1.5}}}}})
    assert result.success and result.output_for_node("read_cap") == 1.5


def test_a_cap_below_the_first_interval_is_raised_to_it(tmp_path):
    with FakeReplicate(run_seconds=0.02, render_scale=0.25) as server:
        h = Harness(tmp_path, server, poll_interval_s=0.3, max_poll_interval_s=0.1)
    assert caps(h.provider) == (0.3, 0.3, 0.3)
