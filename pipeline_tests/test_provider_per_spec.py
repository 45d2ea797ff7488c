"""The provider is chosen per spec: ``provider`` / ``models`` in the spec, ``pipeline submit
--provider``, the deployment default; the registered submission records the resolved choice, and the
inbox sensor, the jobs and a later backfill all render with it, through the real HTTP client against
the fake Replicate server on loopback and a real temporary Dagster instance."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pipeline import media, models
from pipeline.cli import main
from pipeline.definitions import build_definitions
from pipeline.defs.io_manager import read_manifest
from pipeline.defs.partitions import segment_partition_key
from pipeline.defs.sensors import spec_inbox_sensor
from pipeline.manifests import ChunkVideosManifest, FinalManifest, VideoPlan
from pipeline.spec import SpecError, parse_spec
from pipeline.submissions import PROVIDER_TAG, ProviderDefaults, load_submission, resolve_provider
from pipeline_tests.conftest import write_spec
from pipeline_tests.fake_replicate import FakeReplicate

WAN, KLING, SEEDANCE = "wan-video/wan-2.2-i2v-fast", "kwaivgi/kling-v2.1", "bytedance/seedance-1-lite"
SCHNELL, PRO = "black-forest-labs/flux-schnell", "black-forest-labs/flux-1.1-pro"
BEATS = [{"prompt": "A fox runs through snow", "duration_s": 5},
         {"prompt": "The fox leaps over a frozen stream", "duration_s": 4, "motion": "tracking"}]


@pytest.fixture
def fake(env, monkeypatch):
    """The env fixture (temporary DAGSTER_HOME and data dir) and a running fake Replicate server
    whose token is in $REPLICATE_API_TOKEN (read by the definitions as dg.EnvVar)."""
    with FakeReplicate(run_seconds=(0.02, 0.05), render_scale=0.25) as server:
        monkeypatch.setenv("REPLICATE_API_TOKEN", server.token)
        yield env, server


def _defs(env, server, **options) -> dg.Definitions:
    return build_definitions(str(env.data_dir), replicate_base_url=server.base_url,
                             replicate_output_hosts=[server.origin], replicate_poll_interval_s=0.02, **options)


def _drop(inbox: Path, spec: Path) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    target = inbox / spec.name
    target.write_bytes(spec.read_bytes())
    old = time.time() - 10  # settled
    os.utime(target, (old, old))


def _inbox_tick(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, resources={"pipeline": defs.resources["pipeline"]})
    result = spec_inbox_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, job: str, key, tags: dict[str, str]) -> None:
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=key, tags=tags,
                                                       raise_on_error=False)
    failures = [e.message for e in result.all_events if e.is_failure]
    assert result.success, f"{job} {key}: {failures}"


def _plan(defs, instance, video_id: str, tags: dict[str, str]) -> VideoPlan:
    _run(defs, instance, "plan_video", video_id, tags)
    plan = read_manifest(defs.resources["pipeline"].manifests_dir, "video_spec", video_id)
    assert isinstance(plan, VideoPlan)
    new = [s for s in plan.segment_keys if s not in instance.get_dynamic_partitions("segments")]
    instance.add_dynamic_partitions("segments", new)
    return plan


def _render(defs, instance, request: dg.RunRequest) -> tuple[VideoPlan, FinalManifest]:
    """Execute what the inbox sensor requested, then the segment, music and assembly jobs."""
    video_id, tags = request.partition_key, dict(request.tags)
    plan = _plan(defs, instance, video_id, tags)
    for beat in plan.beats:
        _run(defs, instance, "render_segment", segment_partition_key(video_id, beat.index), tags)
    _run(defs, instance, "render_music", video_id, tags)
    _run(defs, instance, "assemble_video", video_id, tags)
    final = read_manifest(defs.resources["pipeline"].manifests_dir, "final_video", video_id)
    assert isinstance(final, FinalManifest)
    return plan, final


def _assert_decodes(final: FinalManifest, seconds: float) -> None:
    info = media.probe(final.path)
    assert abs(info.frames / info.fps - seconds) <= 1 / info.fps and info.has_audio
    assert (info.width, info.height) == (854, 480)


def test_inbox_spec_with_provider_replicate_renders_through_replicate(fake, tmp_path):
    env, server = fake
    defs = _defs(env, server)  # the deployment default stays local
    spec = write_spec(tmp_path / "fox.yaml", video_id="fox", aspect="16:9", beats=BEATS,
                      provider="replicate", models={"video": KLING})
    _drop(defs.resources["pipeline"].inbox_path, spec)
    result = _inbox_tick(defs, env.instance)
    [request] = result.run_requests
    assert request.tags[PROVIDER_TAG] == "replicate" and request.tags["video"] == "fox"
    sub = load_submission(defs.resources["pipeline"].workspace, "fox")
    assert sub.provider == "replicate"
    assert sub.models == {"image": models.DEFAULTS["image"], "video": KLING, "music": models.DEFAULTS["audio"]}

    plan, final = _render(defs, env.instance, request)
    assert plan.provider == "replicate" and plan.models["video"] == KLING and plan.fps == 24  # Kling's rate
    _assert_decodes(final, 9)
    # The override reached the provider: the fake server made every chunk with Kling, none with Wan.
    assert server.create_count(KLING) == 2 and server.create_count(WAN) == 0
    assert server.create_count(SCHNELL) == 2
    assert {line.provider for line in final.costs} == {"replicate"}
    [record] = env.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("video_spec"), asset_partitions=["fox"]), limit=1).records
    metadata = record.asset_materialization.metadata
    assert metadata["provider"].value == "replicate" and metadata["models"].value["video"] == KLING
    runs = env.instance.get_runs(dg.RunsFilter(tags={"video": "fox"}))
    assert len(runs) == 5 and all(r.tags[PROVIDER_TAG] == "replicate" for r in runs)
    # The token is nowhere: not in the instance (run config, event log, compute logs), nor in data/.
    home = Path(os.environ["DAGSTER_HOME"])
    leaks = [p for root in (home, env.data_dir) for p in root.rglob("*")
             if p.is_file() and server.token.encode() in p.read_bytes()]
    assert leaks == []


def test_pipeline_submit_provider_replicate_on_a_spec_without_the_field(fake, tmp_path, capsys):
    env, server = fake
    spec = write_spec(tmp_path / "owl.yaml", video_id="owl", aspect="16:9", beats=BEATS[:1], duration=5)
    assert "provider" not in yaml.safe_load(spec.read_text())
    assert main(["--data-dir", str(env.data_dir), "submit", str(spec), "--provider", "replicate",
                 "--image-model", PRO]) == 0
    assert "provider replicate" in capsys.readouterr().out
    dropped = env.data_dir / "inbox" / "owl.json"  # the choices are written into the spec
    written = json.loads(dropped.read_text())
    assert written["provider"] == "replicate" and written["models"] == {"image": PRO}
    old = time.time() - 10
    os.utime(dropped, (old, old))

    defs = _defs(env, server)  # deployment default local: the explicit choice wins
    [request] = _inbox_tick(defs, env.instance).run_requests
    assert request.tags[PROVIDER_TAG] == "replicate"
    sub = load_submission(defs.resources["pipeline"].workspace, "owl")
    assert (sub.provider, sub.models["image"], sub.models["video"]) == ("replicate", PRO, WAN)
    plan, final = _render(defs, env.instance, request)
    _assert_decodes(final, 5)
    assert server.create_count(PRO) == 1 and server.create_count(SCHNELL) == 0 and server.create_count(WAN) == 1


def test_a_later_backfill_uses_the_recorded_provider_after_the_default_changed(fake, tmp_path):
    env, server = fake
    before = _defs(env, server, default_provider="replicate")
    spec = write_spec(tmp_path / "hare.yaml", video_id="hare", aspect="16:9", beats=BEATS)  # no provider field
    _drop(before.resources["pipeline"].inbox_path, spec)
    [request] = _inbox_tick(before, env.instance).run_requests
    tags = dict(request.tags)
    plan = _plan(before, env.instance, "hare", tags)
    assert plan.provider == "replicate" and plan.models["video"] == WAN
    _run(before, env.instance, "render_segment", segment_partition_key("hare", 0), tags)
    creates = server.create_count()

    # Months later the deployment's defaults changed; a UI backfill runs with the new definitions,
    # without the sensor's tags.
    after = _defs(env, server, default_provider="local", replicate_video_model=SEEDANCE)
    assert after.resources["pipeline"].provider_defaults() == ProviderDefaults(
        "local", {"video": SEEDANCE}, after.resources["pipeline"].provider_defaults().sources)
    replanned = _plan(after, env.instance, "hare", {})
    assert (replanned.provider, replanned.models) == ("replicate", plan.models)
    for index in (0, 1):  # 0 again (all cache hits), 1 for the first time (paid, with the recorded model)
        _run(after, env.instance, "render_segment", segment_partition_key("hare", index), {})
    manifests = after.resources["pipeline"].manifests_dir
    again = read_manifest(manifests, "chunk_videos", str(segment_partition_key("hare", 0)))
    first = read_manifest(manifests, "chunk_videos", str(segment_partition_key("hare", 1)))
    assert isinstance(again, ChunkVideosManifest) and isinstance(first, ChunkVideosManifest)
    assert all(c.video.provider == "replicate" and c.video.cache_hit for c in again.chunks)
    assert all(c.video.provider == "replicate" and c.video.model == WAN and not c.video.cache_hit
               for c in first.chunks)
    assert server.create_count() == creates + 2  # segment 1's storyboard and chunk, nothing else
    assert server.create_count(SEEDANCE) == 0


# --- precedence and validation ---------------------------------------------------------------------

SPEC = {"video_id": "p", "title": "t", "duration_s": 5, "aspect_ratio": "16:9", "style": "s",
        "music": {"prompt": "m", "bpm": 100}, "beats": [{"prompt": "x", "duration_s": 5}]}


def test_provider_precedence_cli_then_spec_then_deployment_then_local():
    plain, in_spec = parse_spec(SPEC), parse_spec({**SPEC, "provider": "replicate"})
    local_spec = parse_spec({**SPEC, "provider": "local"})
    replicate_default = ProviderDefaults("replicate")
    assert resolve_provider(plain)[0] == "local"
    assert resolve_provider(plain, defaults=replicate_default)[0] == "replicate"
    assert resolve_provider(local_spec, defaults=replicate_default)[0] == "local"  # spec > deployment
    assert resolve_provider(in_spec)[0] == "replicate"
    assert resolve_provider(in_spec, provider="local")[0] == "local"  # explicit > spec
    assert resolve_provider(plain, provider="replicate", defaults=ProviderDefaults("local"))[0] == "replicate"


def test_model_precedence_cli_then_spec_then_deployment_then_registry():
    spec = parse_spec({**SPEC, "provider": "replicate", "models": {"video": KLING}})
    defaults = ProviderDefaults("local", {"video": SEEDANCE, "image": PRO})
    assert resolve_provider(spec)[1] == {"image": SCHNELL, "video": KLING, "music": models.DEFAULTS["audio"]}
    assert resolve_provider(spec, defaults=defaults)[1]["image"] == PRO  # deployment > registry
    assert resolve_provider(spec, defaults=defaults)[1]["video"] == KLING  # spec > deployment
    assert resolve_provider(spec, models={"video": SEEDANCE})[1]["video"] == SEEDANCE  # explicit > spec


def test_bad_model_overrides_fail_validation_naming_the_field(env, tmp_path, capsys):
    with pytest.raises(SpecError) as err:
        parse_spec({**SPEC, "provider": "replicate", "models": {"video": "acme/no-such-model"}}, "s.yaml")
    assert "models.video: unknown Replicate video model 'acme/no-such-model'" in str(err.value)
    assert KLING in str(err.value)  # the known models are listed
    with pytest.raises(SpecError, match=r"models.video: unknown Replicate video model"):
        parse_spec({**SPEC, "models": {"video": PRO}})  # an image model is not a video model
    with pytest.raises(SpecError, match="models: model overrides apply to the replicate provider only"):
        parse_spec({**SPEC, "provider": "local", "models": {"image": PRO}})
    # Overrides on a spec that renders locally by the deployment's default: refused, saying why.
    with pytest.raises(SpecError, match=r"models.image: model overrides apply to the replicate provider only"):
        resolve_provider(parse_spec({**SPEC, "models": {"image": PRO}}))
    with pytest.raises(SpecError, match=r"--video-model: model overrides apply to the replicate provider only"):
        resolve_provider(parse_spec(SPEC), provider="local", models={"video": KLING})
    with pytest.raises(SpecError, match=r"--video-model: unknown Replicate video model 'nope/x'"):
        resolve_provider(parse_spec(SPEC), provider="replicate", models={"video": "nope/x"})

    bad = write_spec(tmp_path / "bad.yaml", video_id="bad", provider="replicate", models={"video": "acme/x"})
    assert main(["validate", str(bad)]) == 2
    assert "models.video" in capsys.readouterr().err
    ok = write_spec(tmp_path / "ok.yaml", video_id="ok")
    assert main(["validate", str(ok), "--provider", "local", "--video-model", KLING]) == 2
    assert "--video-model: model overrides apply to the replicate provider only" in capsys.readouterr().err
    assert main(["validate", str(ok), "--provider", "replicate", "--video-model", KLING]) == 0
    assert f"provider replicate, image {SCHNELL}, video {KLING}" in capsys.readouterr().out
    # The inbox rejects it with the reason beside it; nothing is registered.
    defs = build_definitions(str(env.data_dir))
    inbox = defs.resources["pipeline"].inbox_path
    _drop(inbox, bad)
    _drop(inbox, write_spec(tmp_path / "local-models.yaml", video_id="lm", models={"video": KLING}))
    assert _inbox_tick(defs, env.instance).run_requests == []
    errors = {p.name: p.read_text() for p in (inbox / "rejected").glob("*.error.txt")}
    assert "models.video: unknown Replicate video model 'acme/x'" in errors["bad.yaml.error.txt"]
    assert "models.video: model overrides apply to the replicate provider only" in errors["local-models.yaml.error.txt"]
    assert not list((env.data_dir / "specs").glob("*.json"))


def test_the_replicate_example_validates_with_its_provider_and_models(capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "replicate" / "fox-in-snow.yaml"
    assert main(["validate", str(example)]) == 0
    out = capsys.readouterr().out
    assert f"provider replicate, image {PRO}, video {KLING}" in out and "24 fps" in out and "3 beats" in out
