"""Shared fixtures: a temporary Dagster instance (DAGSTER_HOME) and data directory per test, and
session-wide renders of every example spec (rendered once, asserted on by many tests)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from pipeline.definitions import build_definitions
from pipeline.orchestration.render import RenderReport, render_video

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_SPECS = sorted(EXAMPLES.glob("*.yaml"))
INSTANCE_YAML = "telemetry:\n  enabled: false\n"


def make_dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(INSTANCE_YAML)
    return path


@dataclass
class Env:
    """A test's pipeline environment: data dir, Dagster instance and definitions."""

    data_dir: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions

    def render(self, spec: Path | str, **kwargs) -> RenderReport:
        return render_video(spec, defs=self.defs, instance=self.instance, **kwargs)


@pytest.fixture
def env(tmp_path, monkeypatch) -> Env:
    home = make_dagster_home(tmp_path / "dagster_home")
    data = tmp_path / "data"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(data))
    with dg.DagsterInstance.get() as instance:
        yield Env(data, instance, build_definitions(str(data)))


@pytest.fixture(scope="session")
def rendered_examples(tmp_path_factory) -> dict[str, tuple[Env, RenderReport]]:
    """Every spec in examples/ rendered with the local provider into one instance."""
    root = tmp_path_factory.mktemp("examples")
    home = make_dagster_home(root / "dagster_home")
    data = root / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("PIPELINE_DATA_DIR", str(data))
        instance = dg.DagsterInstance.get()
        env = Env(data, instance, build_definitions(str(data)))
        out = {}
        for spec in EXAMPLE_SPECS:
            report = env.render(spec, max_parallel=2)
            assert report.final is not None, f"{spec.name}: {[r.error for r in report.failed]}"
            out[spec.stem] = (env, report)
        yield out
        instance.dispose()


@pytest.fixture
def replicate_env(env, monkeypatch):
    """``(env, server)``: the test's environment with definitions rendering through a fake Replicate
    server on 127.0.0.1 (token and API root set in the environment, fast polling)."""
    from pipeline_tests.fake_replicate import FakeReplicate

    with FakeReplicate(run_seconds=(0.02, 0.05), render_scale=0.25) as server:
        monkeypatch.setenv("REPLICATE_API_TOKEN", server.token)
        monkeypatch.setenv("REPLICATE_BASE_URL", server.base_url)
        env.defs = build_definitions(str(env.data_dir), replicate_output_hosts=[server.origin],
                                     replicate_poll_interval_s=0.02)
        yield env, server


def write_spec(path: Path, *, video_id: str = "tiny", beats: list[dict] | None = None, aspect: str = "1:1",
               duration: float | None = None, **extra) -> Path:
    """Write a small spec file (YAML) for tests; beats default to 5 s, 6 s and 5 s."""
    import yaml

    beats = beats if beats is not None else [
        {"prompt": "A red kite rises over a green hill", "duration_s": 5},
        {"prompt": "The kite string snaps and it drifts away", "duration_s": 6, "motion": "slow lateral pan"},
        {"prompt": "A child waves goodbye at sunset", "duration_s": 5, "motion": "push in"},
    ]
    spec = {"video_id": video_id, "title": "Tiny test video", "aspect_ratio": aspect,
            "duration_s": duration if duration is not None else sum(b["duration_s"] for b in beats),
            "style": "flat test card", "music": {"prompt": "simple test tune", "bpm": 120}, "beats": beats, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def copy_example(name: str, dest: Path) -> Path:
    return Path(shutil.copy(EXAMPLES / name, dest))


__all__ = ["Env", "EXAMPLE_SPECS", "write_spec", "copy_example", "os"]
