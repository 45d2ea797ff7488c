"""Input images over 256 KB go through the Replicate Files API, once per content: a retry, a
resumed job or a new process sends the same file URL, so the lookup-before-create still matches.
Smaller ones stay inline data URIs. (Across processes: test_replicate_shared.) The upload records
live in the ledger database: each test runs on SQLite and PostgreSQL (``ledger_target``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline.providers import ProviderError
from pipeline.providers.replicate import MAX_DATA_URI_PNG_BYTES
from pipeline_tests.fake_replicate import fake_replicate  # noqa: F401
from pipeline_tests.ledger_backends import ledger_target, postgres_url  # noqa: F401 (fixtures)
from pipeline_tests.test_replicate_faults import WAN, Harness


def noisy(path, seed: int = 0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (480, 854, 3), dtype=np.uint8)).save(path)
    assert path.stat().st_size > MAX_DATA_URI_PNG_BYTES
    return path


def file_gets(server, file_id: str) -> int:
    return sum(1 for m, p, _ in server.requests if m == "GET" and p == f"/v1/files/{file_id}")


def test_large_inputs_are_uploaded_once_small_ones_go_inline(tmp_path, fake_replicate, ledger_target):
    server = fake_replicate
    h = Harness(tmp_path, server, ledger_path=ledger_target)
    h.chunk(seed=1)  # the harness's start image is a flat colour: a small PNG
    assert server.inputs(WAN)[0]["image"].startswith("data:image/png;base64,") and server.uploads == 0

    h.start = noisy(tmp_path / "noise.png")
    h.chunk(seed=2)
    url = server.inputs(WAN)[1]["image"]
    assert url.startswith(f"{server.base_url}/v1/files/") and server.uploads == 1
    (file_id,) = server.uploaded
    assert server.uploaded[file_id]["data"] == h.start.read_bytes()  # the PNG itself, lossless
    assert url == server.file_json(file_id)["urls"]["get"]

    # A new provider (a new process, a rerun) reuses the recorded upload, after checking it still exists.
    again = Harness(tmp_path, server, ledger_path=ledger_target)
    again.start = h.start
    again.chunk(seed=3)
    assert server.inputs(WAN)[2]["image"] == url and server.uploads == 1 and file_gets(server, file_id) == 1
    again.chunk(seed=4)  # checked once per provider
    assert server.uploads == 1 and file_gets(server, file_id) == 1

    # A file that vanished from Replicate is uploaded again.
    assert server.delete_file(file_id)
    third = Harness(tmp_path, server, ledger_path=ledger_target)
    third.start = h.start
    third.chunk(seed=5)
    assert server.uploads == 2 and server.inputs(WAN)[4]["image"] != url
    assert server.create_count(WAN) == 5


def test_an_ambiguous_create_with_an_uploaded_input_is_found_by_the_lookup(tmp_path, fake_replicate, ledger_target):
    server = fake_replicate
    # The dropped connection fails the create at once: no short timeout needed.
    h = Harness(tmp_path, server, ledger_path=ledger_target)
    h.start = noisy(tmp_path / "noise.png")
    server.inject("drop_connection", model=WAN)
    video = h.chunk()
    assert video.extra["obtained_by"] == "adopted"
    assert server.create_count(WAN) == 1 and server.create_requests == 1 and server.uploads == 1


def test_a_resumed_intent_sends_the_same_file_and_adopts_the_earlier_prediction(tmp_path, fake_replicate,
                                                                                 ledger_target):
    server = fake_replicate
    # Lookups retry for 3 x the request timeout: 2 s keeps that short and still lets the ~1 MB upload
    # through on a loaded machine (0.2 s timed it out, and a retried upload is a second upload).
    h = Harness(tmp_path, server, request_timeout_s=2.0, ledger_path=ledger_target)
    h.start = noisy(tmp_path / "noise.png")
    server.inject("drop_connection", model=WAN)  # created, but the client never hears of it ...
    server.inject("list_error", times=None)      # ... and cannot look it up: it must not create blindly
    with pytest.raises(ProviderError, match="not creating another one") as err:
        h.chunk()
    assert err.value.retryable and server.create_count(WAN) == 1
    assert h.ledger.jobs("v")[0].state == "intent"
    server.clear_faults()
    # A new process: its upload record is checked, then reused.
    rerun = Harness(tmp_path, server, ledger_path=ledger_target)
    rerun.start = h.start
    video = rerun.chunk()
    assert video.extra["obtained_by"] == "adopted" and server.create_count(WAN) == 1 and server.uploads == 1
    assert video.prediction_id == next(iter(server.predictions))


def test_machines_sharing_a_postgres_ledger_upload_one_content_once(tmp_path, fake_replicate, postgres_url):
    """Two providers with data directories of their own (two machines) and one PostgreSQL ledger:
    the per-content lock is the database's (an advisory lock, no lock file is shared), so the same
    large input racing from both is uploaded once and both send its one URL."""
    from pipeline_tests.pg_service import fresh_database

    server, url = fake_replicate, fresh_database(postgres_url)
    machines = [Harness(tmp_path / name, server, ledger_path=url) for name in ("m1", "m2")]
    image = noisy(tmp_path / "noise.png")
    for m in machines:
        m.start = image
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(m.chunk, seed) for seed, m in enumerate(machines, start=1)]:
            future.result()
    assert server.uploads == 1 and server.create_count(WAN) == 2
    assert server.inputs(WAN)[0]["image"] == server.inputs(WAN)[1]["image"]
    assert not any((tmp_path / name / "locks").exists() for name in ("m1", "m2"))


def test_an_unknown_file_url_is_refused_like_a_real_model_would(tmp_path, fake_replicate):
    import httpx

    server = fake_replicate
    r = httpx.post(f"{server.base_url}/v1/models/{WAN}/predictions",
                   headers={"Authorization": f"Bearer {server.token}"},
                   json={"input": {"prompt": "x", "image": f"{server.base_url}/v1/files/nope"}}, timeout=60)
    assert r.status_code == 422 and "input.image: file not found" in r.json()["detail"]
    assert server.create_count() == 0
