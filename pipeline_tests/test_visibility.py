"""What an operator sees from the Dagster UI, through the real assets on a real instance:

- the run log of every run has a started and a done line per chunk (type, prediction id, seconds,
  USD paid and reused, cache hit), per storyboard image and per music track; with Replicate (the
  fake server on loopback) the prediction ids and prices are the real ones and the provider's own
  "created prediction" line arrives before the chunk is done;
- every run carries its cost as run tags (``pipeline/cost_usd``, ``pipeline/reused_usd``), and the
  assembly run the video's total (``pipeline/video_cost_usd``);
- final_video's materialization links to the published file and holds an animated preview, a
  poster frame and the storyboard contact sheet as small inline images that decode with the
  video's aspect ratio, made once and reused from the media store on a rerun;
- final_video's checks are partitioned by video: a failed check on one video stays visible on its
  partition after another video assembles (instance API, and GraphQL as the UI asks it);
- the webserver names the code location ``video_pipeline``; Chromium renders the preview.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg
import pytest
from PIL import Image, ImageChops, ImageSequence

from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from pipeline import models, previews
from pipeline.definitions import build_definitions
from pipeline.defs.partitions import segment_partition_key, videos
from pipeline.orchestration.render import render_video
from pipeline.defs.run_log import RUN_COST_TAG, RUN_REUSED_TAG, VIDEO_COST_TAG
from pipeline.generation import read_call_log
from pipeline.store import Workspace
from pipeline_tests.conftest import write_spec
from pipeline_tests.dagster_services import DagsterStack
from pipeline_tests.fake_replicate import FakeReplicate

# One xdist worker runs this module (`--dist loadgroup`): its module-scoped Dagster stack is then
# started once, not once per worker (about 35 s of a loaded 2-core machine each).
pytestmark = pytest.mark.xdist_group("visibility")

FINAL = dg.AssetKey("final_video")
DURATION_CHECK = dg.AssetCheckKey(FINAL, "duration_matches_spec")
DATA_URI = re.compile(r"\]\(data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)\)")
CHROMIUM = Path("/usr/bin/chromium")


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if e.user_message]


def _one(lines: list[str], prefix: str) -> str:
    found = [m for m in lines if m.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


def _final_metadata(instance: dg.DagsterInstance, video_id: str) -> dict:
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FINAL, asset_partitions=[video_id]), limit=1).records
    return record.asset_materialization.metadata


def _inline_image(markdown: str) -> tuple[str, bytes]:
    [(mime, data)] = DATA_URI.findall(markdown)
    return mime, base64.b64decode(data)


def _tags(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    return instance.get_run_by_id(run_id).tags


def _assert_aspect(size: tuple[int, int], plan) -> None:
    width, height = size
    assert abs(height - width * plan.height / plan.width) <= 2, (size, plan.width, plan.height)


# --- the local provider: progress lines, cost tags, link and previews ---------------------------------

def test_run_log_progress_cost_tags_and_final_video_previews(env, tmp_path):
    spec = write_spec(tmp_path / "vis.yaml", video_id="vis-progress", aspect="16:9", beats=[
        {"prompt": "A kite climbs over a hill", "duration_s": 7, "motion": "slow lateral pan"},
        {"prompt": "A paper boat on a pond", "duration_s": 5}])
    report = env.render(spec, max_parallel=2)
    assert report.final is not None, [r.error for r in report.failed]
    plan, vid = report.plan, report.plan.video_id
    runs = {(r.job, r.partition): r for r in report.runs}

    # Every chunk of every segment: "chunk k of n started" before "chunk k of n done", in chain order.
    chunk_sets = report.chunk_sets
    assert [len(cv.chunks) for cv in chunk_sets] == [2, 1]
    for cv in chunk_sets:
        seg = f"{cv.index:03d}"
        run = runs[("render_segment", str(segment_partition_key(vid, cv.index)))]
        lines = _messages(env.instance, run.run_id)
        board = _one(lines, f"storyboard image 1 of 1 done: segment {seg}, ")
        assert "854x480" in board and "cache hit: no" in board and "paid $0.0000" in board
        order = []
        for c in cv.chunks:
            k, n = c.plan.index + 1, len(cv.chunks)
            kind = "reference image chunk" if c.plan.index == 0 else "continuous chunk"
            started = _one(lines, f"chunk {k} of {n} started: segment {seg}, {kind}, 5 s, from ")
            done = _one(lines, f"chunk {k} of {n} done: segment {seg}, {kind}, prediction -, ")
            assert f"{c.video.duration_s:.3f} s" in done and "paid $0.0000, reused $0.0000" in done
            assert "cache hit: no" in done and f"model {c.video.model}" in done
            order += [lines.index(started), lines.index(done)]
        assert order == sorted(order), lines
        if len(cv.chunks) == 2:
            assert "from the last frame of chunk 1 " in _one(lines, "chunk 2 of 2 started")
        assert _tags(env.instance, run.run_id)[RUN_COST_TAG] == "0.0000"
        assert _tags(env.instance, run.run_id)[RUN_REUSED_TAG] == "0.0000"
    music_lines = _messages(env.instance, runs[("render_music", vid)].run_id)
    assert "120 bpm" in _one(music_lines, "music track 1 of 1 started: 12 s, ")
    assert "cache hit: no" in _one(music_lines, "music track 1 of 1 done: prediction -, ")
    for run in report.runs:
        assert _tags(env.instance, run.run_id)[RUN_COST_TAG] == "0.0000", run.job
    assert _tags(env.instance, runs[("assemble_video", vid)].run_id)[VIDEO_COST_TAG] == "0.0000"

    # final_video: the published file as a path and a file:// URL, and three small inline images.
    metadata = _final_metadata(env.instance, vid)
    published = Path(report.final.path).resolve()
    assert metadata["path"].value == str(published)
    url = urlparse(metadata["video_url"].value)
    assert url.scheme == "file" and Path(unquote(url.path)) == published and published.is_file()

    mime, strip = _inline_image(metadata["preview"].value)
    assert mime == "image/webp" and len(strip) <= previews.MAX_INLINE_BYTES
    with Image.open(io.BytesIO(strip)) as image:
        assert image.format == "WEBP" and image.n_frames == previews.STRIP["frames"]
        assert image.width == previews.STRIP["width"]
        _assert_aspect(image.size, plan)
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    assert ImageChops.difference(frames[0], frames[-1]).getbbox() is not None, "the preview does not move"
    mime, poster = _inline_image(metadata["poster"].value)
    with Image.open(io.BytesIO(poster)) as image:
        assert mime == "image/jpeg" and image.format == "JPEG" and image.width == previews.POSTER_WIDTH
        _assert_aspect(image.size, plan)
    mime, sheet = _inline_image(metadata["storyboard"].value)
    with Image.open(io.BytesIO(sheet)) as image:
        assert mime == "image/jpeg" and image.format == "JPEG" and image.width > image.height  # 2 cards side by side
    assert sum(len(str(v.value)) for v in metadata.values()) < 300_000  # the whole event stays small
    assert "nan" not in metadata["cost_table"].value.lower()  # the music row's empty segment too

    # A forced rerun: every chunk a cache hit in the log, and the previews are not made again.
    calls = len(read_call_log(Workspace.at(env.data_dir)))
    again = env.render(spec, max_parallel=2, force=True)
    assert again.final is not None and again.final.video.sha256 == report.final.video.sha256
    assert len(read_call_log(Workspace.at(env.data_dir))) == calls
    for run in again.runs:
        if run.job == "render_segment":
            done = [m for m in _messages(env.instance, run.run_id) if m.startswith("chunk ") and " done: " in m]
            assert done and all("cache hit: yes" in m for m in done), done
    assert _inline_image(_final_metadata(env.instance, vid)["preview"].value)[1] == strip


# --- replicate (fake server): prediction ids, prices, provider lines, run tags ----------------------

def test_replicate_progress_lines_name_predictions_and_runs_carry_their_cost(env, monkeypatch, tmp_path):
    size = {"width": 854, "height": 480}
    price = {kind: models.get_model(models.DEFAULTS[kind]).price(size).usd for kind in ("image", "video", "audio")}
    spec = write_spec(tmp_path / "paid.yaml", video_id="vis-paid", aspect="16:9", seed=3,
                      beats=[{"prompt": "A lighthouse in a storm", "duration_s": 8}])
    with FakeReplicate(run_seconds=(0.02, 0.05), render_scale=0.25) as server:
        monkeypatch.setenv("REPLICATE_API_TOKEN", server.token)
        monkeypatch.setenv("REPLICATE_BASE_URL", server.base_url)
        env.defs = build_definitions(str(env.data_dir), replicate_output_hosts=[server.origin],
                                     replicate_poll_interval_s=0.02)
        report = env.render(spec, provider="replicate", max_parallel=2)
        assert report.final is not None, [r.error for r in report.failed]
        again = env.render(spec, provider="replicate", max_parallel=2, force=True)
        assert again.final is not None, [r.error for r in again.failed]

    [cv] = report.chunk_sets
    assert len(cv.chunks) >= 2
    runs = {(r.job, r.partition): r for r in report.runs}
    segment_run = runs[("render_segment", str(segment_partition_key("vis-paid", 0)))]
    lines = _messages(env.instance, segment_run.run_id)
    for c in cv.chunks:
        pid = c.video.prediction_id
        assert pid
        done = _one(lines, f"chunk {c.plan.index + 1} of {len(cv.chunks)} done: segment 000, ")
        assert f"prediction {pid}, " in done and "cache hit: no" in done
        assert f"paid ${price['video']:.4f}, reused $0.0000" in done
        # The provider's own line for this prediction came first: visible while it runs.
        created = [i for i, m in enumerate(lines) if "created prediction" in m and pid in m]
        assert created and created[0] < lines.index(done), lines
    paid = price["image"] + len(cv.chunks) * price["video"]
    assert float(_tags(env.instance, segment_run.run_id)[RUN_COST_TAG]) == pytest.approx(paid, abs=1e-4)
    assert float(_tags(env.instance, segment_run.run_id)[RUN_REUSED_TAG]) == 0
    music_run = runs[("render_music", "vis-paid")]
    assert float(_tags(env.instance, music_run.run_id)[RUN_COST_TAG]) == pytest.approx(price["audio"], abs=1e-4)
    assemble = runs[("assemble_video", "vis-paid")]
    assert float(_tags(env.instance, assemble.run_id)[RUN_COST_TAG]) == 0
    assert float(_tags(env.instance, assemble.run_id)[VIDEO_COST_TAG]) == pytest.approx(report.final.paid_usd, abs=1e-4)
    assert report.final.paid_usd == pytest.approx(paid + price["audio"], abs=1e-4)

    # The forced rerun paid nothing: its runs say so, and reused what the first paid.
    rerun = {(r.job, r.partition): r for r in again.runs}
    segment_rerun = rerun[("render_segment", str(segment_partition_key("vis-paid", 0)))]
    assert float(_tags(env.instance, segment_rerun.run_id)[RUN_COST_TAG]) == 0
    assert float(_tags(env.instance, segment_rerun.run_id)[RUN_REUSED_TAG]) == pytest.approx(paid, abs=1e-4)
    assert all("cache hit: yes" in m and "paid $0.0000" in m
               for m in _messages(env.instance, segment_rerun.run_id) if m.startswith("chunk ") and " done: " in m)


# --- partitioned checks, the location name and the UI ----------------------------------------------

BAD, GOOD = "vis-short", "vis-fine"


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    """A webserver on an instance where ``BAD`` (beats shorter than its duration_s: its
    duration_matches_spec check fails) and then ``GOOD`` (passes) were assembled."""
    root = tmp_path_factory.mktemp("visibility")
    stack = DagsterStack.create(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(stack.home.resolve()))
        mp.setenv("PIPELINE_DATA_DIR", str(stack.data_dir.resolve()))
        mp.delenv("PIPELINE_LOCAL_FAULTS", raising=False)
        bad = write_spec(root / "bad.yaml", video_id=BAD, duration=12, beats=[
            {"prompt": "A red kite rises", "duration_s": 5}, {"prompt": "It drifts away", "duration_s": 5}])
        good = write_spec(root / "good.yaml", video_id=GOOD, beats=[{"prompt": "A child waves", "duration_s": 5}])
        with dg.DagsterInstance.get() as instance:
            defs = build_definitions(str(stack.data_dir))
            for spec in (bad, good):
                report = render_video(spec, defs=defs, instance=instance, max_parallel=2)
                assert report.final is not None, [r.error for r in report.failed]
            # Not ``stack.running()``: its stop() kills the live owners of the instance's runs, and the
            # runs rendered here name this test process as their owner.
            try:
                stack.start_webserver()
                yield stack, instance
            finally:
                stack.stop_service("dagster-webserver")


def test_a_failed_check_stays_visible_on_its_video_after_another_assembles(two_videos):
    stack, instance = two_videos
    check_spec = build_definitions(str(stack.data_dir)).get_assets_def(FINAL).get_spec_for_check_key(DURATION_CHECK)
    assert check_spec.partitions_def == videos

    # Instance: the newest execution is GOOD's (it passed); BAD's failure is still its partition's latest.
    history = instance.event_log_storage.get_asset_check_execution_history(DURATION_CHECK, limit=10)
    assert history[0].partition == GOOD and history[0].status == AssetCheckExecutionRecordStatus.SUCCEEDED
    latest = {}
    for record in history:
        latest.setdefault(record.partition, record)
    assert set(latest) == {BAD, GOOD}
    assert latest[BAD].status == AssetCheckExecutionRecordStatus.FAILED
    evaluation = latest[BAD].event.dagster_event.event_specific_data
    assert evaluation.partition == BAD and evaluation.description.startswith(f"{BAD}: ")
    assert evaluation.metadata["video_id"].value == BAD

    # GraphQL, as the UI's check pages ask it: per-partition status, and BAD's own history.
    data = stack.graphql("""query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
        ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks { name
            partitionStatuses { __typename ... on AssetCheckDefaultPartitionStatuses {
                succeededPartitions failedPartitions } } } } } } } }""", {"key": {"path": ["final_video"]}})
    checks = {c["name"]: c for c in data["assetNodeOrError"]["assetChecksOrError"]["checks"]}
    statuses = checks["duration_matches_spec"]["partitionStatuses"]
    assert statuses["failedPartitions"] == [BAD] and statuses["succeededPartitions"] == [GOOD], statuses
    assert sorted(checks["audio_present"]["partitionStatuses"]["succeededPartitions"]) == sorted([BAD, GOOD])
    executions = stack.graphql("""query($key: AssetKeyInput!, $partition: String) {
        assetCheckExecutions(assetKey: $key, checkName: "duration_matches_spec", limit: 5, partition: $partition) {
            partition status evaluation { description } } }""",
                               {"key": {"path": ["final_video"]}, "partition": BAD})["assetCheckExecutions"]
    assert [(e["partition"], e["status"]) for e in executions] == [(BAD, "FAILED")]
    assert "the spec's duration_s is 12 s" in executions[0]["evaluation"]["description"]


def test_webserver_names_the_code_location_video_pipeline(two_videos):
    stack, _ = two_videos
    data = stack.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name } } } }")
    assert [e["name"] for e in data["workspaceOrError"]["locationEntries"]] == ["video_pipeline"]


@pytest.mark.skipif(not CHROMIUM.exists() or importlib.util.find_spec("playwright") is None,
                    reason="needs Chromium at /usr/bin/chromium and the playwright package")
@pytest.mark.timeout(300)
def test_chromium_shows_the_preview_of_the_final_video(two_videos):
    from playwright.sync_api import sync_playwright

    stack, instance = two_videos
    strip = _inline_image(_final_metadata(instance, GOOD)["preview"].value)[1]
    with Image.open(io.BytesIO(strip)) as image:
        size = image.size
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(f"{stack.url}/assets/final_video?partition={GOOD}", wait_until="domcontentloaded")
            link = page.locator("a[href^='file:']").first
            link.wait_for(state="attached")
            href = link.get_attribute("href")
            # The metadata table shows markdown behind "[Show Markdown]"; the first is the preview.
            # (A DOM click: a "join the community" dialog may cover the page.)
            page.get_by_text("[Show Markdown]").first.dispatch_event("click")
            image = page.locator("img[src^='data:image/webp']").first
            image.wait_for(state="visible")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        finally:
            browser.close()
    assert href == (stack.data_dir.resolve() / "videos" / f"{GOOD}.mp4").as_uri()
    assert tuple(natural) == size


# --- the preview helpers alone ---------------------------------------------------------------------

def test_preview_helpers_refuse_what_they_cannot_show(tmp_path):
    from pipeline.media import MediaError

    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(MediaError, match="notes.mp4"):
        previews.video_preview(not_video, tmp_path / "p.webp")
    with pytest.raises(ValueError, match="at least one frame"):
        previews.video_preview(not_video, tmp_path / "p.webp", frames=0)
    big = tmp_path / "big.png"
    Image.effect_noise((400, 400), 100).save(big)  # noise does not compress: > MAX_INLINE_BYTES
    assert big.stat().st_size > previews.MAX_INLINE_BYTES
    with pytest.raises(ValueError, match="too big to inline"):
        previews.data_uri(big)
    with pytest.raises(ValueError, match="not an image type that can be inlined"):
        previews.data_uri(not_video)
