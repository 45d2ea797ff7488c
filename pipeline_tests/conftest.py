"""Shared fixtures: a temporary Dagster instance (DAGSTER_HOME) and data directory per test, and
renders of every example spec (rendered once per test run, shared by the xdist workers, asserted
on by many tests)."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from contextlib import contextmanager
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
    """``path`` with the tests' dagster.yaml, written atomically: two xdist workers may make the
    shared examples' home at once, and neither may read the other's half-written file."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f"dagster.yaml.{os.getpid()}.tmp"
    tmp.write_text(INSTANCE_YAML)
    os.replace(tmp, path / "dagster.yaml")
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


def _shared_root(tmp_path_factory) -> Path:
    """A directory every pytest-xdist worker of this run shares (the run's base temp directory; the
    session's own base temp directory without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def _file_lock(path: Path, *, blocking: bool = True):
    """An exclusive ``flock`` on ``path``: yields True once held, or False at once if ``blocking``
    is False and another process holds it."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def rendered_examples(tmp_path_factory) -> dict[str, tuple[Env, RenderReport]]:
    """Every spec in examples/ rendered with the local provider into one instance, once per test
    run: the pytest-xdist workers share the instance and data directory (in the run's base temp
    directory). Each worker renders the specs no other worker is rendering (a lock per spec) and
    saves each report (pickled) beside them; then waits for the rest and loads their reports. Each
    worker has its own ``DagsterInstance`` on the shared DAGSTER_HOME (SQLite storage: several
    processes may use it). Tests only read what is shared; a test that renders again makes its own
    render (``test_rerun_reuses_everything``)."""
    root = _shared_root(tmp_path_factory) / "examples"
    data = root / "data"
    reports = root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        # Dagster's SQLite storage is not safe to create from two processes at once ("table
        # secondary_indexes already exists" when both workers reach this fixture together): the
        # first worker creates the instance under a lock, the other opens it afterwards.
        with _file_lock(reports / "instance.lock"):
            home = make_dagster_home(root / "dagster_home")
            mp.setenv("DAGSTER_HOME", str(home))
            mp.setenv("PIPELINE_DATA_DIR", str(data))
            instance = dg.DagsterInstance.get()
            instance.get_runs(limit=1)  # the run, event-log and schedule storages exist now
        env = Env(data, instance, build_definitions(str(data)))

        def render(spec: Path) -> None:
            report = env.render(spec, max_parallel=2)
            assert report.final is not None, f"{spec.name}: {[r.error for r in report.failed]}"
            tmp = reports / f"{spec.stem}.pickle.tmp"
            tmp.write_bytes(pickle.dumps(report))
            tmp.replace(reports / f"{spec.stem}.pickle")

        lock = lambda spec: reports / f"{spec.stem}.lock"  # noqa: E731
        done = lambda spec: (reports / f"{spec.stem}.pickle").exists()  # noqa: E731
        for spec in EXAMPLE_SPECS:  # the specs nobody else is rendering
            with _file_lock(lock(spec), blocking=False) as mine:
                if mine and not done(spec):
                    render(spec)
        out = {}
        for spec in EXAMPLE_SPECS:  # wait for the others' (render here what a failed worker left)
            with _file_lock(lock(spec)):
                if not done(spec):
                    render(spec)
            out[spec.stem] = (env, pickle.loads((reports / f"{spec.stem}.pickle").read_bytes()))
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

