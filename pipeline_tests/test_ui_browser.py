"""README "Backfilling a failed segment", followed for real.

``test_readme_backfill_steps_in_chromium``: ``dagster-daemon`` and ``dagster-webserver`` on
127.0.0.1 (dagster_services.py) render two videos dropped into the inbox: ``ui-puddle`` (1 beat,
so its segments 001 and 002 are phantoms) and ``ui-boat`` (3 beats), whose segment 001 fails
through the stack's faults file. Headless Debian Chromium, driven by Playwright's Python package
(no browser download), then does what the README says, step by step, with roles and visible text
as selectors, and a screenshot at each step (saved under the test's temporary directory, their
paths printed; ``PIPELINE_UI_SCREENSHOTS=DIR`` copies them to DIR):

1. ``pipeline status ui-boat`` names the segment to redo; **Runs** filtered by tag ``video``
   shows the failed ``render_segment`` run and its ``001|ui-boat`` partition;
2. **Catalog -> chunk_videos -> Partitions**: segment keys left, video ids right; a phantom
   partition is green with ``phantom: true`` and a reason;
3. untick Materialized, Materializing and Missing: only the failed partition is left;
4. click the segment key, then the video: the panel names the failed run;
5. **Materialize...**: the dialog is prefilled with that one partition and says "Launch 1 run";
   the other two ways the README gives (all segments of the video with "Backfill only failed and
   missing partitions within selection"; the ``render_segment`` job's Partitions page) are opened
   and checked too, then canceled;
6. **Launch 1 run** (the fault healed first): one run, not a backfill, tagged ``video``; it
   succeeds, ``assembly_sensor`` assembles the video once, and the UI shows it.

``test_readme_dagster_asset_materialize_command``: the README's ``dagster asset materialize``
command, copied out of the README, run against a temporary instance on a video whose segment
failed: the wrong key order fails with the message the README quotes, the right one re-renders the
segment in the command's own process, and ``pipeline retry`` assembles the video.

If a README step cannot be done in the real UI, the README is wrong: change it, not this test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from pipeline_tests.cli_processes import clean_env, pipeline_command
from pipeline_tests.conftest import write_spec
from pipeline_tests.dagster_services import ROOT, DagsterStack, wait_until, write_instance_yaml

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
README = ROOT / "README.md"
VIDEO, SHORT = "ui-boat", "ui-puddle"
BEATS = {SHORT: 1, VIDEO: 3}
FAILING = "001"
KEY = f"{FAILING}|{VIDEO}"
"""The failed partition's key: ``segment|video`` (Dagster sorts the dimension names)."""
SCREENSHOT_DIR = os.environ.get("PIPELINE_UI_SCREENSHOTS")
"""Where to copy the screenshots too (unset: only the test's temporary directory)."""

needs_browser = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the playwright Python package is not installed (pip install -e '.[dev]')"),
]


def _beats(video_id: str) -> list[dict]:
    return [{"prompt": f"Shot {i + 1} of {video_id}: a paper boat on a puddle", "duration_s": 5}
            for i in range(BEATS[video_id])]


def _drop(stack: DagsterStack, staging: Path, video_id: str) -> None:
    """Put a spec into the inbox already settled (mtime in the past), as a finished copy would be."""
    staging.mkdir(exist_ok=True)
    spec = write_spec(staging / f"{video_id}.yaml", video_id=video_id, beats=_beats(video_id))
    old = time.time() - 30
    os.utime(spec, (old, old))
    os.replace(spec, stack.data_dir / "inbox" / spec.name)


def _segment_states(instance: dg.DagsterInstance, manifests: Path, video_id: str) -> dict[str, str]:
    from pipeline.orchestration.status import video_status

    return {s.segment: s.state for s in video_status(instance, manifests, video_id).segments}


def _video_assets(instance: dg.DagsterInstance, manifests: Path, video_id: str) -> dict[str, str]:
    from pipeline.orchestration.status import video_status

    return video_status(instance, manifests, video_id).video_assets


def _settled(instance: dg.DagsterInstance) -> bool:
    from pipeline.orchestration.status import IN_PROGRESS

    return not instance.get_run_records(dg.RunsFilter(statuses=list(IN_PROGRESS)))


def _close_menu(page, placeholder: str, *, toggle=None) -> None:
    """Close an open drop-down (the one whose search box shows ``placeholder``) so a screenshot shows
    what is under it: Escape, else ``toggle`` (the button that opened it). Cosmetic: never fails."""
    from playwright.sync_api import Error

    box = page.get_by_placeholder(re.compile("^" + re.escape(placeholder)))
    page.keyboard.press("Escape")
    for attempt in (None, toggle):
        if attempt is not None:
            attempt.click()
        try:
            box.first.wait_for(state="hidden", timeout=3_000)
            return
        except Error:
            continue


def _runs_text(instance: dg.DagsterInstance) -> str:
    return "\n".join(f"{r.run_id[:8]} {r.job_name} {r.status.value} {r.tags.get('dagster/partition')} "
                     f"video={r.tags.get('video')}" for r in instance.get_runs(limit=30))


class Shots:
    """Numbered full-page screenshots of one test, printed as they are taken."""

    def __init__(self, page, directory: Path):
        self.page, self.directory, self.paths = page, directory, []
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        path = self.directory / f"{len(self.paths) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.paths.append(path)
        print(f"screenshot: {path}", flush=True)
        if SCREENSHOT_DIR:
            Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(SCREENSHOT_DIR) / path.name)
        return path


@pytest.fixture
def failed_segment_stack(tmp_path):
    """Daemon + webserver; ui-puddle finished, ui-boat's segment 001 failed (everything else done)."""
    with DagsterStack.create(tmp_path).running(daemon=True) as stack:
        # The retry schedule would redo the segment by itself (every 10 minutes); the backfill is the fix here.
        assert stack.stop_schedule("retry_failed_segments") == "STOPPED"
        stack.faults.write_text(json.dumps({"fail": [f"{VIDEO}/{FAILING}"], "retryable": False}))
        manifests = stack.data_dir / "manifests"
        with dg.DagsterInstance.from_config(str(stack.home)) as instance:
            for video_id in (SHORT, VIDEO):
                _drop(stack, tmp_path / "staging", video_id)

            def failed_as_planned() -> bool:
                stack.check_alive()
                return (_segment_states(instance, manifests, VIDEO) == {"000": "materialized", FAILING: "failed",
                                                                        "002": "materialized"}
                        and _video_assets(instance, manifests, VIDEO).get("music") == "materialized"
                        and _video_assets(instance, manifests, SHORT).get("final_video") == "materialized"
                        and _settled(instance))

            wait_until(failed_as_planned, timeout=400, interval=2, what=f"{KEY} to fail and everything else to finish",
                       on_timeout=lambda: _runs_text(instance) + "\n" + stack.tails())
        yield stack


@pytest.mark.timeout(900)
@pytest.mark.parametrize("_", [None], ids=["chromium"])
@needs_browser[0]
@needs_browser[1]
def test_readme_backfill_steps_in_chromium(failed_segment_stack, tmp_path, _):
    from playwright.sync_api import expect, sync_playwright

    stack = failed_segment_stack
    manifests = stack.data_dir / "manifests"

    # README: "pipeline status VIDEO_ID" names the segments to redo (exit code 3).
    status = subprocess.run([*pipeline_command(), "status", VIDEO], env=stack.env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 3, status.stdout + status.stderr
    assert f"segments to redo: {FAILING}" in status.stdout, status.stdout
    assert "FAILED" in status.stdout, status.stdout

    with dg.DagsterInstance.from_config(str(stack.home)) as instance, sync_playwright() as p:
        [failed_run] = [r for r in instance.get_runs(dg.RunsFilter(tags={"video": VIDEO},
                                                                    statuses=[dg.DagsterRunStatus.FAILURE]))]
        assert failed_run.tags.get("dagster/partition") == KEY, failed_run.tags
        runs_before = {r.run_id for r in instance.get_runs()}

        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(90_000)
            shot = Shots(page, tmp_path / "screenshots")

            # 1. Runs, filtered by tag video=ui-boat: the failed segment run and its partition.
            page.goto(f"{stack.url}/runs", wait_until="domcontentloaded")
            page.get_by_role("button", name="Filter").click()
            page.get_by_text("Tag", exact=True).first.click()
            page.keyboard.type("video")
            page.get_by_role("menuitem", name=re.compile(r"^(\S+ )?video$")).first.click()
            page.get_by_role("menuitem", name=re.compile(rf"^(\S+ )?{re.escape(VIDEO)}$")).first.click()
            page.get_by_text(f"video={VIDEO}").first.wait_for()
            page.get_by_text(f"partition: {KEY}").first.wait_for()
            page.get_by_text("Failure", exact=True).first.wait_for()
            assert "q%5B0%5D=tag%3Avideo%3Dui-boat" in page.url or "tag:video=ui-boat" in page.url, page.url
            _close_menu(page, "Search filters", toggle=page.get_by_role("button", name="Filter"))
            shot("runs-filtered-by-video-tag")

            # 2. Catalog -> chunk_videos -> Partitions: segment keys and video ids side by side.
            page.get_by_role("link", name=re.compile(r"Catalog$")).click()
            page.get_by_role("link", name=re.compile(r"^(\S+ )?chunk_videos$")).first.click()
            page.get_by_role("tab", name="Partitions").click()
            for label in ("Failed (1)", "Materialized (5)", "Materializing (0)", "Missing (0)"):
                page.get_by_text(label, exact=True).wait_for()
            body = page.inner_text("body")
            assert "6 Partitions Selected" in body, body[:2000]
            # A phantom partition is materialized (green), its metadata says why.
            page.get_by_text("001", exact=True).first.click()
            page.get_by_text(SHORT, exact=True).first.click()
            page.get_by_text(f"001|{SHORT}", exact=True).first.wait_for()
            page.get_by_text("phantom", exact=True).wait_for()
            page.get_by_text(f"video {SHORT} has 1 beat (segment 000); segment 001 is not part of it").wait_for()
            shot("partitions-phantom-metadata")

            # 3. Untick Materialized, Materializing and Missing: only the failed partition is left.
            for label in ("Materialized (5)", "Materializing (0)", "Missing (0)"):
                page.get_by_text(label, exact=True).click()
            page.get_by_text("1 Partitions Selected").wait_for()
            assert "status=FAILED" in page.url, page.url
            # The two lists (between the checkboxes and the panel, which still shows 001|ui-puddle's
            # metadata) hold only the failed segment and its video now.
            lists = page.inner_text("body").split("Missing (0)", 1)[1].split(f"001|{SHORT}", 1)[0]
            assert FAILING in lists and VIDEO in lists, lists
            assert SHORT not in lists and "000" not in lists and "002" not in lists, lists
            shot("partitions-failed-only")

            # 4. Click the segment key, then the video: the panel names the failed run.
            page.get_by_text(FAILING, exact=True).first.click()
            page.get_by_text(VIDEO, exact=True).first.click()
            page.get_by_text(KEY, exact=True).first.wait_for()
            page.get_by_text(f"Run {failed_run.run_id[:8]} failed, and did not materialize this asset.").wait_for()
            page.get_by_role("button", name="View logs").wait_for()
            shot("failed-partition-selected")

            # 5a. The two other ways, checked and canceled while the failure is there.
            # All segments of the video + "Backfill only failed and missing partitions within selection".
            page.goto(f"{stack.url}/assets/chunk_videos?view=partitions", wait_until="domcontentloaded")
            page.get_by_text("Failed (1)", exact=True).wait_for()
            page.get_by_role("button", name="Materialize…").first.click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize chunk_videos")
            dialog.wait_for()
            dialog.get_by_text("0 partitions").wait_for()  # nothing selected in the view: nothing prefilled
            dialog.get_by_role("button", name="Launch backfill").wait_for()
            dialog.get_by_role("button", name="All").nth(0).click()  # segment: All
            dialog.get_by_text("Select a partition or create one").first.click()  # video: the one video
            page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(VIDEO)}( |$)")).click()
            page.keyboard.press("Escape")
            dialog.get_by_text("Backfill only failed and missing partitions within selection").click()
            dialog.get_by_text("Only 1 failed and missing partition partitions will be materialized.").wait_for()
            dialog.get_by_role("button", name="Launch 1 run").wait_for()
            shot("dialog-all-segments-only-failed")
            dialog.get_by_role("button", name="Cancel").click()
            dialog.wait_for(state="hidden")

            # Jobs -> render_segment -> Partitions -> Materialize...: all four segment assets (narration too).
            page.get_by_role("link", name=re.compile(r"Jobs$")).click()
            page.get_by_role("link", name=re.compile(r"^(\S+ )?render_segment$")).first.click()
            page.get_by_role("tab", name="Partitions").click()
            page.get_by_text("Total partitions").wait_for()
            page.get_by_role("button", name="Materialize…").first.click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize 4 assets")
            dialog.wait_for()
            for key in (FAILING, VIDEO):  # the segment list first, then the video list
                dialog.get_by_text("Select a partition or create one").first.click()
                page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(key)}( |$)")).click()
                page.keyboard.press("Escape")
            dialog.get_by_text("1 partition", exact=True).wait_for()
            dialog.get_by_role("button", name="Launch 1 run").wait_for()
            _close_menu(page, "Filter partitions")
            shot("dialog-render-segment-job")
            dialog.get_by_role("button", name="Cancel").click()
            dialog.wait_for(state="hidden")

            # 5b. Back to the failed partition, selected as in step 4, and Materialize...
            page.goto(f"{stack.url}/assets/chunk_videos?view=partitions&status=FAILED", wait_until="domcontentloaded")
            page.get_by_text("1 Partitions Selected").wait_for()
            page.get_by_text(FAILING, exact=True).first.click()
            page.get_by_text(VIDEO, exact=True).first.click()
            page.get_by_text(f"Run {failed_run.run_id[:8]} failed, and did not materialize this asset.").wait_for()
            page.get_by_role("button", name="Materialize…").first.click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize chunk_videos")
            dialog.wait_for()
            dialog.get_by_text("1 partition", exact=True).wait_for()
            text = dialog.inner_text()
            assert re.search(rf"segment\s+{FAILING}\b", text) and re.search(rf"video\s+{re.escape(VIDEO)}\b", text), text
            launch = dialog.get_by_role("button", name="Launch 1 run")
            launch.wait_for()
            expect(dialog.get_by_text(re.compile("^Loading pipeline and partition sets"))).to_have_count(0, timeout=60_000)
            shot("dialog-prefilled-launch-1-run")

            # 6. Fix the cause (heal the fault), launch: one run, not a backfill.
            stack.faults.write_text(json.dumps({"fail": []}))
            launch.click()
            toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
            toast.wait_for()
            short_id = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)
            shot("launched-1-run")

            new_runs = [r for r in instance.get_runs() if r.run_id not in runs_before]
            assert [r.run_id[:8] for r in new_runs] == [short_id], _runs_text(instance)
            run = new_runs[0]
            assert run.tags.get("dagster/partition") == KEY and run.tags.get("video") == VIDEO, run.tags
            assert "dagster/backfill" not in run.tags, run.tags
            assert instance.get_backfills() == [], "one partition launches a run, not a backfill"

            def reassembled():
                stack.check_alive()
                runs = [r for r in instance.get_runs() if r.run_id not in runs_before]
                done = instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS
                assemblies = [r for r in runs if r.job_name == "assemble_video"]
                return done and any(r.status == dg.DagsterRunStatus.SUCCESS for r in assemblies) and \
                    _settled(instance) and (stack.data_dir / "videos" / f"{VIDEO}.mp4").is_file() and assemblies

            assemblies = wait_until(reassembled, timeout=300, interval=2,
                                    what=f"run {short_id} and the assembly of {VIDEO}",
                                    on_timeout=lambda: _runs_text(instance) + "\n" + stack.tails())
            assert len(assemblies) == 1 and assemblies[0].tags.get("dagster/sensor_name") == "assembly_sensor", \
                _runs_text(instance)
            assert _segment_states(instance, manifests, VIDEO) == {s: "materialized" for s in ("000", FAILING, "002")}

            # The UI agrees: no failed partition left; the video's runs end with its assembly.
            page.goto(f"{stack.url}/assets/chunk_videos?view=partitions", wait_until="domcontentloaded")
            for label in ("Failed (0)", "Materialized (6)", "Missing (0)"):
                page.get_by_text(label, exact=True).wait_for()
            shot("partitions-all-materialized")
            page.goto(f"{stack.url}/runs?q%5B0%5D=tag%3Avideo%3D{VIDEO}", wait_until="domcontentloaded")
            page.get_by_text(assemblies[0].run_id[:8], exact=True).wait_for()
            page.get_by_text(short_id, exact=True).wait_for()
            page.get_by_text("assemble_video", exact=True).first.wait_for()
            shot("runs-after-backfill")
            page.goto(f"{stack.url}/assets/final_video?view=partitions&partition={VIDEO}",
                      wait_until="domcontentloaded")
            page.get_by_text("video_url", exact=True).wait_for()
            shot("final-video-materialized")
        finally:
            browser.close()

    assert len(shot.paths) == 11
    for path in shot.paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, path


# --- the README's `dagster asset materialize` command ------------------------------------------------

def readme_materialize_command() -> list[str]:
    """The README's ``dagster asset materialize`` example as argv (continuation lines joined,
    ``VAR=value`` prefixes kept as the first items)."""
    text = README.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()
             if "dagster asset materialize" in line and line.strip().startswith("DAGSTER_HOME=")]
    assert lines, "README.md has no `DAGSTER_HOME=... dagster asset materialize` line"
    return shlex.split(lines[0].split("#")[0])


def _command_for(argv: list[str], *, home: Path, partition: str) -> list[str]:
    """The README's argv for this test: DAGSTER_HOME dropped (it goes in the environment), the
    virtualenv's dagster binary, and ``partition`` in place of the example's key."""
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("DAGSTER_HOME="):
            continue
        if arg.endswith("bin/dagster"):
            arg = str(Path(sys.executable).parent / "dagster")
        if i > 0 and argv[i - 1] == "--partition":
            arg = partition
        out.append(arg)
    assert "--partition" in out and out[0].endswith("dagster"), argv
    return out


@pytest.mark.timeout(600)
def test_readme_dagster_asset_materialize_command(tmp_path):
    from pipeline.definitions import build_definitions
    from pipeline.orchestration.instance import open_instance
    from pipeline.orchestration.render import render_video

    argv = readme_materialize_command()
    assert argv[0] == "DAGSTER_HOME=$PWD" and "-m" in argv and "pipeline.definitions" in argv, argv
    assert argv[argv.index("--partition") + 1].count("|") == 1, argv  # segment|video
    home, data, faults = tmp_path / "dagster_home", tmp_path / "data", tmp_path / "faults.json"
    write_instance_yaml(home)  # the repository's dagster.yaml, storage moved into home
    faults.write_text(json.dumps({"fail": [f"{VIDEO}/{FAILING}"], "retryable": False}))
    spec = write_spec(tmp_path / "spec.yaml", video_id=VIDEO, beats=_beats(VIDEO))
    with open_instance(home) as instance:  # as the CLI opens it: the render's workers open the same home
        report = render_video(spec, defs=build_definitions(str(data), local_faults_file=str(faults)),
                              instance=instance)
        assert report.final is None and [r.partition for r in report.failed] == [KEY], report.failed
    env = clean_env(DAGSTER_HOME=str(home), PIPELINE_DATA_DIR=str(data))  # no fault drill: the cause is fixed

    wrong = subprocess.run(_command_for(argv, home=home, partition=f"{VIDEO}|{FAILING}"), env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0
    assert f"containing the passed partition key `{VIDEO}|{FAILING}`" in wrong.stdout + wrong.stderr, wrong.stderr[-3000:]

    started = time.monotonic()
    right = subprocess.run(_command_for(argv, home=home, partition=KEY), env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    seconds = time.monotonic() - started
    output = right.stdout + right.stderr
    assert right.returncode == 0, output[-5000:]
    assert "Executing steps in process" in output and "RUN_SUCCESS" in output, output[-3000:]
    print(f"dagster asset materialize --partition '{KEY}': {seconds:.1f} s")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs(limit=1)
        assert run.job_name == "__ASSET_JOB" and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags.get("dagster/partition") == KEY
        # Not queued, so the run coordinator never saw it: no `video` tag (the README says so).
        assert "video" not in run.tags, run.tags
        assert _segment_states(instance, data / "manifests", VIDEO) == {s: "materialized" for s in ("000", FAILING, "002")}

    retry = subprocess.run([*pipeline_command(), "retry", VIDEO], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert (data / "videos" / f"{VIDEO}.mp4").is_file()
