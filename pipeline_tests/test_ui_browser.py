"""A real browser on the real UI: headless Debian Chromium, driven by Playwright's Python package
(no browser download), opens ``dagster-webserver`` on an instance where one video was rendered and
shows the ``chunk_videos`` partitions: that video and its segment keys."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from pipeline.definitions import build_definitions
from pipeline.orchestration.render import render_video
from pipeline_tests.conftest import write_spec
from pipeline_tests.dagster_services import DagsterStack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIDEO_ID = "ui-paper-boat"
SEGMENTS = ("000", "001")
SCREENSHOT_COPY = os.environ.get("PIPELINE_UI_SCREENSHOT")
"""Where to keep a copy of the screenshot (unset: only in the test's temporary directory)."""

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the playwright Python package is not installed (pip install -e '.[dev]')"),
    pytest.mark.timeout(300),
]


@pytest.fixture
def webserver(tmp_path, monkeypatch):
    """A webserver (no daemon) on a temporary instance holding one rendered two-beat video."""
    stack = DagsterStack.create(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(stack.home.resolve()))
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(stack.data_dir.resolve()))
    monkeypatch.delenv("PIPELINE_LOCAL_FAULTS", raising=False)
    spec = write_spec(tmp_path / "spec.yaml", video_id=VIDEO_ID, beats=[
        {"prompt": "A paper boat sets off on a puddle", "duration_s": 5},
        {"prompt": "The boat spins past a fallen leaf", "duration_s": 5, "motion": "slow lateral pan"}])
    with dg.DagsterInstance.get() as instance:
        report = render_video(spec, defs=build_definitions(str(stack.data_dir)), instance=instance)
    assert report.final is not None, [r.error for r in report.failed]
    with stack.running(daemon=False):
        yield stack


def test_chunk_videos_partitions_page_in_chromium(webserver, tmp_path):
    from PIL import Image
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

    url = f"{webserver.url}/assets/chunk_videos?view=partitions"
    shot = tmp_path / "chunk_videos_partitions.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(90_000)
            page.goto(url, wait_until="domcontentloaded")
            # The partitions view lists each dimension's keys: the video, and its segments.
            page.get_by_text(VIDEO_ID, exact=True).first.wait_for(state="visible")
            for segment in SEGMENTS:
                page.get_by_text(segment, exact=True).first.wait_for(state="visible")
            # ... and their status: both (video, segment) partitions are materialized.
            page.get_by_text(f"Materialized ({len(SEGMENTS)})").first.wait_for(state="visible")
            try:  # let the partition status bars render; the UI polls, so it may never go idle
                page.wait_for_load_state("networkidle", timeout=10_000)
            except PlaywrightTimeout:
                pass
            text = page.inner_text("body")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert "chunk_videos" in text and VIDEO_ID in text, text[:2000]
    assert all(segment in text for segment in SEGMENTS), text[:2000]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
        assert width >= 1000 and height >= 600, image.size
        colours = image.convert("L").getextrema()
        assert colours[1] - colours[0] > 50, "the screenshot is blank"
    if SCREENSHOT_COPY:
        shutil.copy(shot, SCREENSHOT_COPY)
