"""Kill and resume: a segment rendering in a subprocess is SIGKILLed mid-call; the rerun adopts the
same prediction (from the ledger, or by lookup) and the server sees no second create."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import media, stages
from pipeline.generation import Generator
from pipeline.ledger import Ledger
from pipeline.providers import get_provider
from pipeline.spec import parse_spec
from pipeline.store import Workspace
from pipeline.submissions import load_submission, submit_spec
from pipeline_tests.fake_replicate import FakeReplicate, provider_options

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

WAN = "wan-video/wan-2.2-i2v-fast"
REPO = Path(__file__).resolve().parents[1]

SEGMENT_SCRIPT = textwrap.dedent("""
    import json, logging, os, sys
    from pathlib import Path
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from pipeline import stages
    from pipeline.generation import Generator
    from pipeline.providers import get_provider
    from pipeline.store import Workspace
    from pipeline.submissions import load_submission

    root, options, video_id = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), sys.argv[3]
    ws = Workspace.at(root)
    provider = get_provider("replicate", api_token=os.environ["REPLICATE_API_TOKEN"], **options)  # not in the file
    plan = stages.plan_video(load_submission(ws, video_id), provider)
    beat = stages.plan_beat(plan, plan.beats[0], provider)
    gen = Generator(ws)
    storyboard = stages.render_storyboard(beat, provider, gen)
    print("storyboard done", flush=True)
    stages.render_chunks(beat, storyboard, provider, gen)
    print("chunks done", flush=True)
""")


def _setup(tmp_path: Path, server: FakeReplicate, **overrides):
    ws = Workspace.at(tmp_path / "data")
    data = {"video_id": "heron", "title": "Heron", "duration_s": 5, "aspect_ratio": "16:9", "style": "ink wash",
            "music": {"prompt": "calm", "bpm": 70}, "beats": [{"prompt": "a heron lifts off a misty lake",
                                                               "duration_s": 5, "motion": "slow tilt up"}]}
    submit_spec(ws, parse_spec(data), source="test", provider="replicate")
    options = provider_options(server, ws.root, **overrides)
    del options["api_token"]
    opts_file = tmp_path / "options.json"
    opts_file.write_text(json.dumps(options))
    script = tmp_path / "segment.py"
    script.write_text(SEGMENT_SCRIPT)
    env = {**os.environ, "REPLICATE_API_TOKEN": server.token,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(script), str(ws.root), str(opts_file), "heron"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return ws, proc


def _wan_job(ws: Workspace):
    path = ws.root / "ledger.sqlite"
    if not path.exists():
        return None
    return next((j for j in Ledger(path).jobs() if j.model == WAN), None)


def _kill(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return out.decode() + err.decode()


def _resume(ws: Workspace, server: FakeReplicate):
    provider = get_provider("replicate", **provider_options(server, ws.root))
    gen = Generator(ws)
    plan = stages.plan_video(load_submission(ws, "heron"), provider)
    beat = stages.plan_beat(plan, plan.beats[0], provider)
    storyboard = stages.render_storyboard(beat, provider, gen)
    assert storyboard.image.cache_hit  # the killed run had finished it
    return stages.render_chunks(beat, storyboard, provider, gen), gen


def resume_adopts(ws: Workspace, server: FakeReplicate, pred, logs: str) -> None:
    """Resume the killed render: its chunk is fake prediction ``pred``, adopted by lookup (one
    chunk create in all), verified, recorded as adopted; the token is not in the killed run's ``logs``."""
    chunks, gen = _resume(ws, server)
    video = chunks.chunks[0].video
    assert video.prediction_id == pred.id and video.extra["obtained_by"] == "adopted"
    assert server.create_count(WAN) == 1 and server.create_requests == 2  # storyboard + the one chunk create
    assert media.verify_video(gen.local_path(video)).frames == 81
    (record,) = Ledger(ws.root / "ledger.sqlite").predictions(key=video.cache_key)
    assert record.prediction_id == pred.id and record.adopted and record.status == "succeeded"
    assert server.token not in logs


def test_killed_while_polling_the_rerun_resumes_the_same_prediction(tmp_path):
    with FakeReplicate(run_seconds=0.05, render_scale=0.25) as server:
        server.inject("hold", model=WAN)  # the chunk runs until released
        # Its create is held 1 s (sync mode), answered still processing, then polled.
        ws, proc = _setup(tmp_path, server, sync_wait_s=1)
        try:
            assert server.wait_for(lambda: (j := _wan_job(ws)) is not None and j.state == "in_flight", timeout=30)
            pid = _wan_job(ws).prediction_id
            # It is polling: the server has seen GETs of that prediction.
            assert server.wait_for(lambda: sum(p == f"/v1/predictions/{pid}" for _, p, _ in server.requests) >= 2)
        finally:
            logs = _kill(proc)
        assert server.create_count(WAN) == 1
        assert server.predictions[pid].status == "processing"  # nobody canceled it

        server.release()
        chunks, gen = _resume(ws, server)
        video = chunks.chunks[0].video
        assert video.prediction_id == pid and video.extra["obtained_by"] == "resumed"
        assert server.create_count(WAN) == 1 and server.create_count() == 2  # storyboard + one chunk
        assert media.verify_video(gen.local_path(video)).frames == 81
        job = Ledger(ws.root / "ledger.sqlite").get(video.cache_key)
        assert job.state == "succeeded" and job.prediction_id == pid and job.attempts == 1
        assert "storyboard done" in logs and server.token not in logs


@pytest.mark.parametrize("official_echo", [True, False], ids=["official-echo", "exact-echo"])
def test_killed_between_create_and_the_ledger_write_the_lookup_adopts_the_prediction(tmp_path, official_echo):
    # Official echo (Replicate's real behaviour): the prediction shows replicate-internal/... and a
    # dp- version, not the model asked for; the lookup still adopts it instead of paying twice.
    with FakeReplicate(run_seconds=0.05, render_scale=0.25, official_echo=official_echo) as server:
        # The server creates the chunk's prediction but holds the response: the client never
        # learns the id, so the ledger still says "intent" when it is killed.
        server.inject("hang_after_create", model=WAN, seconds=60)
        ws, proc = _setup(tmp_path, server, request_timeout_s=60.0)
        try:
            assert server.wait_for(lambda: server.create_count(WAN) == 1, timeout=30)
            job = _wan_job(ws)
            assert job is not None and job.state == "intent" and job.prediction_id is None
        finally:
            logs = _kill(proc)
        (pred,) = [p for p in server.predictions.values() if p.model == WAN]

        resume_adopts(ws, server, pred, logs)
