"""Configuration has one path: ``build_definitions(...)`` values over environment variables, read in
``pipeline.definitions`` only (the token as ``dg.EnvVar``); the CLI writes no environment variable,
and providers read none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipeline.definitions import build_definitions
from pipeline.defs.resources import ReplicateSettings
from pipeline.generation import GenerationRequest
from pipeline.providers import ProviderError, get_provider
from pipeline.providers.local import injected_fault
from pipeline.providers.replicate import DEFAULT_BASE_URL, DEFAULT_OUTPUT_HOSTS
from pipeline.spec import load_spec
from pipeline.submissions import ProviderDefaults
from pipeline_tests.cli_processes import clean_env
from pipeline_tests.conftest import ROOT, write_spec

KLING, PRO = "kwaivgi/kling-v2.1", "black-forest-labs/flux-1.1-pro"
TOKEN = "r8_ConfigTestToken0123456789abcdef"
ENV_NAMES = ("PIPELINE_DEPLOYMENT", "PIPELINE_DATA_DIR", "PIPELINE_INBOX_DIR", "PIPELINE_DEFAULT_PROVIDER",
             "PIPELINE_LOCAL_FAULTS", "PIPELINE_S3_BUCKET", "PIPELINE_S3_PREFIX", "REPLICATE_API_TOKEN",
             "REPLICATE_BASE_URL", "REPLICATE_OUTPUT_HOSTS", "REPLICATE_IMAGE_MODEL", "REPLICATE_VIDEO_MODEL",
             "REPLICATE_MUSIC_MODEL", "REPLICATE_SYNC_WAIT_S")


@pytest.fixture
def no_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _chunk_request(video_id: str, segment: str) -> GenerationRequest:
    return GenerationRequest(media_type="video", provider="local", model="local/camera-move-v1", prompt="p",
                             labels={"video_id": video_id, "segment": segment})


def test_build_definitions_takes_explicit_values(no_env, tmp_path):
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"fail": ["v/000"]}))
    defs = build_definitions(str(tmp_path / "data"), inbox_dir=str(tmp_path / "in"), default_provider="replicate",
                             replicate_video_model=KLING, replicate_base_url="http://127.0.0.1:9",
                             replicate_output_hosts=["http://127.0.0.1:9"], replicate_lease_s=12.0,
                             local_faults_file=str(faults))
    pipeline = defs.resources["pipeline"]
    assert pipeline.workspace.root == (tmp_path / "data").resolve() and pipeline.inbox_path == tmp_path / "in"
    assert pipeline.provider_defaults() == ProviderDefaults("replicate", {"video": KLING},
                                                            pipeline.provider_defaults().sources)
    replicate = pipeline.provider("replicate", {"image": PRO})
    assert (replicate.base_url, replicate.video_model, replicate.image_model) == ("http://127.0.0.1:9", KLING, PRO)
    assert replicate.jobs.lease_s == 12.0 and replicate.allowed_hosts
    assert replicate.ledger.path == (tmp_path / "data" / "ledger.sqlite").resolve()
    local = pipeline.provider("local")
    assert local.faults_file == str(faults)
    with pytest.raises(ProviderError, match="injected fault for segment v/000"):
        injected_fault(_chunk_request("v", "000"), local.faults_file)
    assert defs.resources["io_manager"].base_dir == str((tmp_path / "data" / "manifests").resolve())
    with pytest.raises(TypeError, match="unknown Replicate setting"):
        build_definitions(str(tmp_path), replicate_colour="blue")
    with pytest.raises(ValueError, match="unknown default provider 'acme'"):
        build_definitions(str(tmp_path), default_provider="acme")


def test_environment_variables_are_read_by_the_definitions(no_env, tmp_path):
    no_env.setenv("PIPELINE_DATA_DIR", str(tmp_path / "env-data"))
    no_env.setenv("PIPELINE_INBOX_DIR", str(tmp_path / "env-inbox"))
    no_env.setenv("PIPELINE_DEFAULT_PROVIDER", "replicate")
    no_env.setenv("REPLICATE_VIDEO_MODEL", KLING)
    no_env.setenv("REPLICATE_BASE_URL", "http://127.0.0.1:7")
    no_env.setenv("REPLICATE_OUTPUT_HOSTS", "http://127.0.0.1:7, cdn.example.com")
    no_env.setenv("PIPELINE_LOCAL_FAULTS", str(tmp_path / "drill.json"))
    no_env.setenv("REPLICATE_SYNC_WAIT_S", "7")
    pipeline = build_definitions().resources["pipeline"]
    assert pipeline.workspace.root == (tmp_path / "env-data").resolve()
    assert pipeline.inbox_path == tmp_path / "env-inbox"
    defaults = pipeline.provider_defaults()
    assert (defaults.provider, defaults.models) == ("replicate", {"video": KLING})
    assert defaults.sources["video"].startswith("$REPLICATE_VIDEO_MODEL")
    replicate = pipeline.provider("replicate")
    assert replicate.base_url == "http://127.0.0.1:7" and replicate.video_model == KLING
    assert replicate.predictions.sync_wait_s == 7  # Prefer: wait=7
    assert pipeline.provider("local").faults_file == str(tmp_path / "drill.json")
    # Explicit values beat the environment.
    explicit = build_definitions(str(tmp_path / "x"), default_provider="local",
                                 replicate_video_model="bytedance/seedance-1-lite").resources["pipeline"]
    assert explicit.provider_defaults().provider == "local"
    assert explicit.provider_defaults().models == {"video": "bytedance/seedance-1-lite"}
    no_env.setenv("PIPELINE_DEFAULT_PROVIDER", "acme")
    with pytest.raises(ValueError, match="PIPELINE_DEFAULT_PROVIDER='acme' is not a provider"):
        build_definitions()


def test_deployments_local_and_production(no_env, tmp_path):
    local = build_definitions(str(tmp_path))
    assert local.resources["pipeline"].s3 is None
    assert local.resources["pipeline"].replicate.api_token is None  # unset: no EnvVar that would fail a run
    no_env.setenv("PIPELINE_DEPLOYMENT", "production")
    with pytest.raises(ValueError, match="PIPELINE_S3_BUCKET"):
        build_definitions(str(tmp_path))
    no_env.setenv("PIPELINE_S3_BUCKET", "videos")
    production = build_definitions(str(tmp_path)).resources["pipeline"]
    assert production.s3.bucket == "videos" and production.provider_defaults().provider == "replicate"
    assert isinstance(production.replicate.api_token, dg.EnvVar)  # required even when unset here
    assert production.replicate.api_token.env_var_name == "REPLICATE_API_TOKEN"
    no_env.setenv("PIPELINE_DEPLOYMENT", "staging")
    with pytest.raises(ValueError, match="unknown deployment 'staging'"):
        build_definitions(str(tmp_path))


def test_the_token_comes_from_envvar_and_is_never_in_config_repr_or_runs(env, monkeypatch, tmp_path):
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    defs = build_definitions(str(env.data_dir))
    pipeline = defs.resources["pipeline"]
    assert TOKEN not in repr(pipeline) and TOKEN not in str(pipeline) and "api_token='<set>'" in repr(pipeline)
    config = json.dumps(defs.resolve_job_def("plan_video").resource_defs["pipeline"].config_schema.default_value)
    assert '"api_token": {"env": "REPLICATE_API_TOKEN"}' in config and TOKEN not in config
    # Resolved where a provider is made (outside Dagster here; inside a run Dagster resolves it).
    assert pipeline.provider("replicate").api.redact(f"x {TOKEN} y") != f"x {TOKEN} y"
    with pytest.raises(ValueError, match="never as a value"):
        build_definitions(str(env.data_dir), replicate_api_token=TOKEN)

    spec = load_spec(write_spec(tmp_path / "t.yaml", video_id="tok"))
    pipeline.submit_spec(spec, source="t.yaml")
    env.instance.add_dynamic_partitions("videos", ["tok"])
    result = defs.resolve_job_def("plan_video").execute_in_process(instance=env.instance, partition_key="tok")
    assert result.success
    run = env.instance.get_run_by_id(result.run_id)
    assert TOKEN not in json.dumps(run.run_config) and TOKEN not in json.dumps(dict(run.tags))
    records = env.instance.all_logs(result.run_id)
    assert not any(TOKEN in (r.user_message or "") for r in records)


def test_providers_read_no_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("REPLICATE_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("REPLICATE_OUTPUT_HOSTS", "evil.example.com")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "elsewhere"))
    provider = get_provider("replicate", workspace_root=tmp_path)
    assert provider.base_url == DEFAULT_BASE_URL.rstrip("/")
    assert not provider.downloader.allows("https://evil.example.com/x")
    assert all(provider.downloader.allows(f"https://{h}/x") for h in DEFAULT_OUTPUT_HOSTS)
    assert provider.ledger.path.parent == tmp_path.resolve()
    with pytest.raises(ProviderError, match="needs an API token"):
        provider.api.client()
    monkeypatch.setenv("PIPELINE_LOCAL_FAULTS", str(tmp_path / "faults.json"))
    (tmp_path / "faults.json").write_text(json.dumps({"fail": ["v/000"]}))
    injected_fault(_chunk_request("v", "000"), None)  # the variable alone injects nothing
    assert get_provider("local").faults_file is None


CHILD = """
import json, os, sys
before = dict(os.environ)
from pipeline.cli import main
codes = [main(["--data-dir", sys.argv[1], *args]) for args in json.loads(sys.argv[2])]
after = dict(os.environ)
changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
open(sys.argv[3], "w").write(json.dumps({"codes": codes, "changed": changed}))
"""


def test_the_cli_writes_no_environment_variable(tmp_path):
    """validate, submit and render in one process without DAGSTER_HOME or PIPELINE_* variables:
    the environment is the same afterwards, and the render (with forked workers) recorded its runs in
    the instance it opened explicitly under the data directory."""
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    spec = write_spec(tmp_path / "env.yaml", video_id="env-free", beats=[{"prompt": "a kite", "duration_s": 1}])
    commands = [["validate", str(spec)], ["submit", str(spec), "--provider", "replicate", "--video-model", KLING],
                ["render", str(spec), "--max-parallel", "2", "--image-model", PRO, "--provider", "local"],
                ["render", str(spec), "--max-parallel", "2"]]
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data), json.dumps(commands), str(out)], cwd=work,
                          env={**clean_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    # The render asking for a model with --provider local is refused (exit 2) before anything runs.
    assert result == {"codes": [0, 0, 2, 0], "changed": []}, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--image-model: model overrides apply to the replicate provider only" in proc.stderr
    assert (data / "inbox" / "env-free.json").exists() and (data / "videos" / "env-free.mp4").exists()
    with dg.DagsterInstance.from_config(str(data / "dagster_home")) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"video": "env-free"}))
        assert sorted(r.job_name for r in runs) == ["assemble_video", "plan_video", "render_music", "render_segment"]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)


def test_replicate_settings_hide_the_token_in_repr():
    settings = ReplicateSettings(api_token=TOKEN, base_url="http://x")
    assert TOKEN not in repr(settings) and TOKEN not in str(settings) and "<set>" in repr(settings)
