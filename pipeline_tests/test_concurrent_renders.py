"""Many processes on one fresh Dagster instance at once: six real ``pipeline render`` processes
(different specs, and the same spec), and dynamic partition adds racing from several processes.
Assertions are on exit codes, decoded videos and the runs recorded in the instance."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import dagster as dg
import sqlalchemy.exc

from pipeline import media
from pipeline.orchestration.instance import OWNER_TAG, open_instance
from pipeline.defs.partitions import add_partitions
from pipeline.procs import ProcessIdentity
from pipeline_tests.cli_processes import ROOT, clean_env, start_cli
from pipeline_tests.conftest import make_dagster_home, write_spec

RENDERS = 6
TIMEOUT_S = 1500.0
"""Six renders of 5 s videos on a loaded 2-core machine: generous."""

BEATS = [{"prompt": "A red kite rises over a green hill", "duration_s": 5, "motion": "slow pan"}]
SECONDS = 5.0


def _check_video(path: Path, seconds: float) -> None:
    info = media.verify_video(path)  # decodes every frame
    assert abs(info.duration_s - seconds) <= 1 / info.fps, (path, info.duration_s)
    assert info.has_audio, path


def _runs_by_video(home: Path) -> dict[str, list[dg.DagsterRun]]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
    out: dict[str, list[dg.DagsterRun]] = {}
    for run in runs:
        out.setdefault(run.tags.get("video", ""), []).append(run)
    return out


def test_six_renders_of_different_specs_at_once_on_a_fresh_instance(tmp_path):
    home = make_dagster_home(tmp_path / "dagster_home")  # dagster.yaml only: no storage yet
    data = tmp_path / "data"
    env = clean_env(DAGSTER_HOME=str(home), PIPELINE_DATA_DIR=str(data))
    specs = [write_spec(tmp_path / f"c{i}.yaml", video_id=f"concurrent-{i}", beats=BEATS) for i in range(RENDERS)]
    procs = [start_cli(["render", str(spec)], env=env, cwd=ROOT, log_path=tmp_path / f"render-{i}.log")
             for i, spec in enumerate(specs)]
    try:
        codes = [p.wait(TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0] * RENDERS, "\n\n".join(f"--- render {i} exit {c}\n{p.output()[-3000:]}"
                                               for i, (c, p) in enumerate(zip(codes, procs)) if c != 0)
    runs = _runs_by_video(home)
    for i in range(RENDERS):
        video_id = f"concurrent-{i}"
        _check_video(data / "videos" / f"{video_id}.mp4", SECONDS)
        jobs = sorted(r.job_name for r in runs[video_id])
        assert jobs == ["assemble_video", "plan_video", "render_music", "render_segment"], jobs
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs[video_id])
        assert all(ProcessIdentity.parse(r.tags.get(OWNER_TAG)) is not None for r in runs[video_id])
    # The segment runs of each render ran in its forked workers, not in the CLI process itself.
    for video_runs in runs.values():
        owners = {r.job_name: r.tags[OWNER_TAG] for r in video_runs}
        assert owners["render_segment"] != owners["plan_video"] == owners["assemble_video"]


def test_six_renders_of_one_spec_at_once_without_dagster_home(tmp_path):
    """DAGSTER_HOME unset and no dagster.yaml in the working directory: the CLI makes its own
    home under the data directory, six times at once. One process renders; the others wait
    for it (one render of a video at a time) and find the video up to date."""
    data = tmp_path / "data"
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(PIPELINE_DATA_DIR=str(data))
    spec = write_spec(tmp_path / "same.yaml", video_id="same-spec", beats=BEATS)
    procs = [start_cli(["render", str(spec)], env=env, cwd=work, log_path=tmp_path / f"render-{i}.log")
             for i in range(RENDERS)]
    try:
        codes = [p.wait(TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outputs = [p.output() for p in procs]
    assert codes == [0] * RENDERS, "\n\n".join(f"--- render {i} exit {c}\n{o[-3000:]}"
                                               for i, (c, o) in enumerate(zip(codes, outputs)) if c != 0)
    _check_video(data / "videos" / "same-spec.mp4", SECONDS)
    assert sum("up to date" in o for o in outputs) == RENDERS - 1, outputs
    runs = _runs_by_video(data / "dagster_home")["same-spec"]
    assert sorted(r.job_name for r in runs) == ["assemble_video", "plan_video", "render_music", "render_segment"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)


# --- dynamic partitions --------------------------------------------------------------------------

ROUNDS = 8
ADDERS = 6


def _add_keys(barrier, index: int, errors) -> None:
    """In a forked child: open the (fresh) instance and add overlapping keys, round after round,
    all children at once."""
    try:
        barrier.wait(timeout=120)
        instance = open_instance()
        for r in range(ROUNDS):
            barrier.wait(timeout=120)
            add_partitions(instance, "videos", [f"video-{r}-{k}" for k in range(index % 3, 6)])
            add_partitions(instance, "segments", [f"{r * 10 + k:03d}" for k in range(0, 4 + index % 2)])
    except BaseException as exc:  # report to the parent: any exception fails the test
        errors.put(f"adder {index}: {type(exc).__name__}: {exc}")
        raise


def test_partition_adds_racing_from_several_processes_never_raise(tmp_path, monkeypatch):
    home = make_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    context = multiprocessing.get_context("fork")
    barrier, errors = context.Barrier(ADDERS), context.Queue()
    children = [context.Process(target=_add_keys, args=(barrier, i, errors)) for i in range(ADDERS)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=600)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert [c.exitcode for c in children] == [0] * ADDERS, problems
    with dg.DagsterInstance.get() as instance:
        assert sorted(instance.get_dynamic_partitions("videos")) == sorted(
            f"video-{r}-{k}" for r in range(ROUNDS) for k in range(6))
        assert sorted(instance.get_dynamic_partitions("segments")) == sorted(
            f"{r * 10 + k:03d}" for r in range(ROUNDS) for k in range(5))


class _RacingInstance:
    """An instance stand-in where another writer inserts the first key between this process's
    check and its insert, exactly once: Dagster's add then fails on the unique constraint."""

    def __init__(self):
        self.keys: list[str] = []
        self.adds = 0

    def get_dynamic_partitions(self, name: str) -> list[str]:
        return list(self.keys)

    def add_dynamic_partitions(self, name: str, keys: list[str]) -> None:
        self.adds += 1
        if self.adds == 1:
            self.keys.append(keys[0])  # the racing writer
            raise sqlalchemy.exc.IntegrityError("INSERT INTO dynamic_partitions", {}, Exception("UNIQUE"))
        assert not set(keys) & set(self.keys), "tried to insert a key that exists"
        self.keys.extend(keys)


def test_add_partitions_rechecks_after_losing_a_race():
    instance = _RacingInstance()
    assert add_partitions(instance, "segments", ["000", "001", "002"]) == ["001", "002"]
    assert instance.keys == ["000", "001", "002"] and instance.adds == 2
    assert add_partitions(instance, "segments", ["000", "001"]) == []  # nothing to add: no insert
    assert instance.adds == 2


def test_open_instance_on_a_fresh_home_from_many_processes(tmp_path, monkeypatch):
    """Without the lock, Dagster's SQLite storages race to create their tables (and can leave
    an ``alembic_version`` table with two heads that breaks the home for good)."""
    home = tmp_path / "fresh_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    context = multiprocessing.get_context("fork")
    barrier, errors = context.Barrier(ADDERS), context.Queue()

    def child(index: int) -> None:
        try:
            barrier.wait(timeout=120)
            open_instance().get_runs(limit=1)
        except BaseException as exc:
            errors.put(f"{index}: {type(exc).__name__}: {exc}")
            raise

    children = [context.Process(target=child, args=(i,)) for i in range(ADDERS)]
    for c in children:
        c.start()
    for c in children:
        c.join(timeout=600)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert [c.exitcode for c in children] == [0] * ADDERS, problems
    with open_instance() as instance:  # and the home works afterwards
        assert instance.get_runs() == []
