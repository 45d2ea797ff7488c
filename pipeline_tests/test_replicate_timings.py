"""Each replicate call says where its time went (``extra["timings_s"]``, logged per call in
``logs/provider_calls.jsonl``): start image to input, create, poll, how late the end was seen,
download, verification. The pieces add up to no more than the call, and a slow create shows as
``create_s``."""

from __future__ import annotations

from pipeline.generation import read_call_log
from pipeline_tests.fake_replicate import FakeReplicate
from pipeline_tests.test_replicate_faults import Harness

PIECES = ("upload_s", "create_s", "poll_s", "download_s", "verify_s")


def test_a_chunk_call_logs_its_timings_and_they_add_up(tmp_path):
    with FakeReplicate(run_seconds=0.05, create_latency=0.3, render_scale=0.25) as server:
        h = Harness(tmp_path, server)
        video = h.chunk()
    t = video.extra["timings_s"]
    assert set(PIECES) | {"total_s", "seen_late_s"} <= set(t) and all(v >= 0 for v in t.values())
    assert t["create_s"] >= 0.3  # the server held the create that long
    assert sum(t[k] for k in PIECES) <= t["total_s"] + 1e-3
    (line,) = [c for c in read_call_log(h.ws) if c["provider"] == "replicate"]
    assert line["timings_s"] == t and line["seconds"] >= t["total_s"]


def test_an_image_call_times_download_and_verification_and_a_cache_hit_logs_nothing(tmp_path):
    with FakeReplicate(run_seconds=0.02, render_scale=0.25) as server:
        h = Harness(tmp_path, server)
        image = h.image()
        again = h.image()
    t = image.extra["timings_s"]
    assert "upload_s" not in t and {"create_s", "poll_s", "download_s", "verify_s", "total_s"} <= set(t)
    assert again.cache_hit and len(read_call_log(h.ws)) == 1


def test_seen_late_is_measured_from_the_predictions_completion(tmp_path):
    with FakeReplicate(run_seconds=0.4, render_scale=0.25) as server:
        h = Harness(tmp_path, server, poll_interval_s=1.0, max_poll_interval_s=1.0)
        video = h.chunk()
    # One read at once (still running), the next 1 s later: the end (~0.4 s + render) is seen up to
    # 1 s late (plus a read's time on a loaded machine).
    assert 0.0 < video.extra["timings_s"]["seen_late_s"] <= 3.0
