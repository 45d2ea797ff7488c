"""Concurrent ``pipeline render --provider replicate`` processes against one fake Replicate server
(its own process, ``FakeServerProcess``), one Dagster home and one data directory:

- *twins*: two specs with different video ids whose first beats, style, music and seed are the
  same (so their storyboard, chunk and music cache keys coincide) and whose last beat differs,
  rendered by two processes started together;
- *same spec*: one spec rendered by two processes started together (one renders, the other waits
  for the per-video render lock and finds it up to date);

the twins with a create latency of 2 s and the same spec with 0.5 s (the window in which two
processes could both decide to create). Every process exits 0; every final video decodes to its
planned duration; the fake saw exactly one create per (model, input) -- duplicates (creates per
key minus one) are 0; the ledger's spend in the test's time window (``pipeline cost --since/--until`` and ``pipeline.costs``) is the
sum of the videos' paid totals and the creates times the registry prices; and each shared line of
the twins' cost tables is paid by exactly one twin and reused by the other.

Every wait has a generous deadline: the machine (2 cores) may be loaded by other work.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from pipeline import costs, media, models
from pipeline.ledger import Ledger, default_ledger_path
from pipeline_tests.cli_processes import ROOT, clean_env, start_cli
from pipeline_tests.conftest import make_dagster_home, write_spec
from pipeline_tests.fake_replicate import FakeServerProcess

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="CLI process helpers need Linux /proc"),
              pytest.mark.timeout(1800)]

RENDER_TIMEOUT_S = 1200.0
"""Per process: two replicate renders with slow creates on a loaded 2-core machine (about a minute
when the machine is idle)."""

SIZE = {"width": 854, "height": 480}  # 16:9 draft resolution: Wan's 480p tier
IMAGE, VIDEO, MUSIC = models.DEFAULTS["image"], models.DEFAULTS["video"], models.DEFAULTS["audio"]

SHARED = [{"prompt": "A lighthouse keeper climbs the spiral stairs", "duration_s": 5},
          {"prompt": "The lamp turns over a stormy sea", "duration_s": 5, "motion": "slow orbit"}]
OWN = {"twin-a": {"prompt": "A small boat reaches the harbour", "duration_s": 5, "motion": "push in"},
       "twin-b": {"prompt": "Gulls circle the rocks at dawn", "duration_s": 5, "motion": "tilt up"}}
SEED = 4242
"""Explicit: the default seed derives from the video id, which would make every twin key differ."""


def registry_price(model_ref: str) -> float:
    """The registry price (USD) of one call of ``model_ref`` ("owner/name" or "owner/name:version")
    at the draft 16:9 size: per image, per 480p video, per track for the default models."""
    return models.get_model(model_ref).price(SIZE).usd


def model_of(stats_key: str) -> str:
    """The model of a fake-server stats key ("owner/name:sha256(input)")."""
    return stats_key.rsplit(":", 1)[0]


def spec_files(tmp: Path, case: str) -> dict[str, Path]:
    """{video_id: spec path} for ``case``: the twins, or the single spec rendered twice."""
    common = dict(aspect="16:9", seed=SEED, style="ink wash", music={"prompt": "slow cello drone", "bpm": 70})
    if case == "twins":
        return {v: write_spec(tmp / f"{v}.yaml", video_id=v, beats=[*SHARED, own], **common) for v, own in OWN.items()}
    return {"same-spec": write_spec(tmp / "same-spec.yaml", video_id="same-spec", beats=SHARED, **common)}


def window_total(output: str) -> float:
    """The paid_usd total of ``pipeline cost --since/--until --markdown`` output (its "total" row)."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    total = next(line for line in lines if line.strip("|").split("|")[0].strip() == "total")
    return float([c.strip() for c in total.strip("|").split("|")][header.index("paid_usd")])


def run_cli(args: list[str], *, env: dict[str, str], log: Path) -> str:
    """Run ``pipeline ARGS`` to the end; its output (AssertionError with it on a non-zero exit)."""
    proc = start_cli(args, env=env, cwd=ROOT, log_path=log)
    try:
        code = proc.wait(300)
    finally:
        proc.kill()
    assert code == 0, f"`pipeline {' '.join(args)}` exited {code}:\n{proc.output()[-3000:]}"
    return proc.output()


# Each case at one create latency (both latencies covered): the twins race two videos for shared
# keys in the wider 2 s window; the same spec's second process mostly waits on the render lock.
@pytest.mark.parametrize("case, create_latency", [("twins", "2"), ("same-spec", "0.5")])
def test_concurrent_replicate_renders_pay_one_create_per_key(tmp_path, case, create_latency):
    home = make_dagster_home(tmp_path / "dagster_home")
    data = tmp_path / "data"
    specs = spec_files(tmp_path, case)
    runs = [(video_id, spec) for video_id, spec in specs.items()] * (2 if case == "same-spec" else 1)
    planned_s = {v: float(sum(b["duration_s"] for b in (SHARED + ([OWN[v]] if v in OWN else [])))) for v in specs}

    with FakeServerProcess("--create-latency", create_latency, "--run-seconds", "0.3", "0.8",
                           "--render-scale", "0.25") as server:
        env = clean_env(DAGSTER_HOME=str(home), PIPELINE_DATA_DIR=str(data), REPLICATE_API_TOKEN=server.token,
                        REPLICATE_BASE_URL=server.base_url, REPLICATE_OUTPUT_HOSTS=server.origin)
        since = time.time() - 1
        t0 = time.monotonic()
        procs = [start_cli(["render", str(spec), "--provider", "replicate"], env=env, cwd=ROOT,
                           log_path=tmp_path / f"render-{i}-{video_id}.log")
                 for i, (video_id, spec) in enumerate(runs)]
        try:
            codes = [p.wait(RENDER_TIMEOUT_S) for p in procs]
        finally:
            for p in procs:
                p.kill()
        elapsed = time.monotonic() - t0
        stats = server.stats()
        until = time.time() + 1

    outputs = [p.output() for p in procs]
    assert codes == [0] * len(procs), "\n\n".join(
        f"--- {video_id} (process {i}) exit {c}\n{o[-4000:]}"
        for i, ((video_id, _), c, o) in enumerate(zip(runs, codes, outputs)) if c != 0)

    # Every final video decodes (every frame) to its planned duration, with its music.
    for video_id, seconds in planned_s.items():
        info = media.verify_video(data / "videos" / f"{video_id}.mp4")
        assert abs(info.frames / info.fps - seconds) <= 1 / info.fps, (video_id, info.frames, info.fps)
        assert info.has_audio, video_id

    # One create per (model, input) however many processes asked: duplicates 0.
    creates: dict[str, int] = stats["creates"]
    duplicates = {key: n - 1 for key, n in creates.items() if n > 1}
    assert duplicates == {}, f"duplicate creates: {duplicates}"
    by_model = {m: sum(1 for k in creates if model_of(k) == m) for m in {model_of(k) for k in creates}}
    if case == "twins":  # 2 shared + 2 own beats (one image, one 5 s chunk each), one shared track
        assert by_model == {IMAGE: 4, VIDEO: 4, MUSIC: 1}, by_model
    else:
        assert by_model == {IMAGE: 2, VIDEO: 2, MUSIC: 1}, by_model
        assert sum("up to date" in o for o in outputs) == 1, outputs  # the second waited, then found it done

    # Money: the window's ledger spend = the sum of the videos' paid totals = creates x registry price.
    ledger = Ledger(default_ledger_path(data))
    views = {v: costs.video_costs(v, manifests=data / "manifests", ledger=ledger) for v in specs}
    for view in views.values():
        assert view.finished and [line.source for line in view.lines] == ["manifest"] * len(view.lines), \
            view.markdown()
        assert view.paid_usd == pytest.approx(view.ledger_usd, abs=1e-9), view.markdown()
    registry_usd = sum(n * registry_price(model_of(k)) for k, n in creates.items())
    videos_usd = sum(view.paid_usd for view in views.values())
    window = costs.window_costs(ledger, since, until)
    assert set(window["video_id"]) == set(specs)
    assert int(window["predictions"].sum()) == sum(creates.values())
    assert ledger.spent_between(since, until) == pytest.approx(videos_usd, abs=1e-9)
    assert float(window["paid_usd"].sum()) == pytest.approx(videos_usd, abs=1e-9)
    assert videos_usd == pytest.approx(registry_usd, abs=1e-9)
    # ... and the CLI reports the same window total.
    cost_env = clean_env(DAGSTER_HOME=str(home), PIPELINE_DATA_DIR=str(data))
    cli = run_cli(["cost", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--markdown"], env=cost_env,
                  log=tmp_path / "cost-window.log")
    assert window_total(cli) == pytest.approx(registry_usd, abs=1e-4), cli

    if case == "twins":
        a, b = views["twin-a"], views["twin-b"]
        assert [(x.segment, x.stage) for x in a.lines] == [(x.segment, x.stage) for x in b.lines]
        for la, lb in zip(a.lines, b.lines):
            if la.segment == "002":  # the beat that differs: each twin paid for its own
                for view, line in ((a, la), (b, lb)):
                    assert line.paid_by == view.video_id and line.paid_usd > 0 and line.reused_usd == 0, line
                assert la.prediction_id != lb.prediction_id
                continue
            # A shared line: the same prediction, paid by exactly one twin and reused by the other.
            assert la.prediction_id == lb.prediction_id and la.cache_key == lb.cache_key, (la, lb)
            payers = [(view, line) for view, line in ((a, la), (b, lb)) if line.paid_usd > 0]
            assert len(payers) == 1, (la, lb)
            (payer_view, paid), other = payers[0], (lb if payers[0][1] is la else la)
            assert paid.paid_by == payer_view.video_id and paid.reused_usd == 0, paid
            assert paid.paid_usd == pytest.approx(registry_price(paid.model.split(":")[0])), paid
            assert other.paid_usd == 0 and other.reused_usd == pytest.approx(paid.paid_usd), other
            assert other.paid_by == payer_view.video_id, other
        assert a.reused_usd + b.reused_usd == pytest.approx(
            sum(line.paid_usd for line in a.lines + b.lines if line.segment != "002"), abs=1e-9)
        # Each twin's own `pipeline cost VIDEO_ID` says the same totals.
        for view in (a, b):
            text = run_cli(["cost", view.video_id, "--markdown"], env=cost_env,
                           log=tmp_path / f"cost-{view.video_id}.log")
            m = re.search(r"paid \$([\d.]+) \(ledger \$([\d.]+)\), reused \$([\d.]+)", text)
            assert m, text
            assert [float(x) for x in m.groups()] == pytest.approx(
                [view.paid_usd, view.ledger_usd, view.reused_usd], abs=1e-4), text
    else:
        [view] = views.values()
        assert all(line.paid_by == view.video_id and line.reused_usd == 0 for line in view.lines), view.markdown()

    reused = [line.note or "" for view in views.values() for line in view.lines if line.reused_usd > 0]
    print(f"\n{case}, create latency {create_latency} s: {len(procs)} processes, {len(creates)} keys, "
          f"{sum(creates.values())} creates ({stats['create_requests']} create requests), duplicates 0, "
          f"reused lines: {sum(n.startswith('adopted') for n in reused)} adopted in flight, "
          f"{sum(n.startswith('cache hit') for n in reused)} cache hits; paid ${videos_usd:.4f}, {elapsed:.1f} s")
