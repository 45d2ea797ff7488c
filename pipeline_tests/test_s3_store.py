"""The S3 media store, cache index and manifests, against moto's S3 server on loopback: unit tests
of S3MediaStore, then a whole render with S3 configured (forked workers included), and a forced
rerun from an empty local cache that is all cache hits."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import shutil
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pytest

from pipeline import media
from pipeline.definitions import build_definitions
from pipeline.defs.io_manager import read_manifest
from pipeline.orchestration.render import render_video
from pipeline.generation import read_call_log
from pipeline.manifests import FinalManifest, MediaManifest, load_manifest
from pipeline.s3_store import S3ClientProvider, S3Location, S3MediaStore
from pipeline.store import GenerationCache, Workspace
from pipeline_tests.conftest import make_dagster_home, write_spec

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's S3 server in a thread of this process, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_endpoint, monkeypatch) -> str:
    """A fresh bucket; boto3 in this process (and forked children) talks to moto with dummy keys."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "PIPELINE_S3_BUCKET", "PIPELINE_S3_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    name = f"pipeline-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


class CallCounter:
    """Counts S3 API calls (PutObject, GetObject, HeadObject, ...) made through clients it made."""

    def __init__(self):
        self.calls: list[str] = []

    def client(self):
        client = boto3.session.Session().client("s3")
        client.meta.events.register("before-call.s3.*", lambda model, **_: self.calls.append(model.name))
        return client

    def count(self, operation: str) -> int:
        return self.calls.count(operation)


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _keys(bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


# --- S3MediaStore --------------------------------------------------------------------------------

def test_put_is_content_addressed_single_put_and_idempotent(bucket, tmp_path):
    counter = CallCounter()
    store = S3MediaStore(S3Location(bucket, "/team/a/", counter.client), tmp_path / "s3cache")
    data = b"\x89PNG not really, but bytes are bytes" * 100
    sha = hashlib.sha256(data).hexdigest()

    src = _file(tmp_path / "work" / "frame.png", data)
    uri, digest, size = store.put(src)
    assert (digest, size) == (sha, len(data))
    assert uri == f"s3://{bucket}/team/a/media/{sha[:2]}/{sha}.png"
    assert not src.exists()  # consumed: it became the local cached copy
    obj = boto3.client("s3").get_object(Bucket=bucket, Key=f"team/a/media/{sha[:2]}/{sha}.png")
    assert obj["Body"].read() == data and obj["Metadata"] == {"sha256": sha}
    assert counter.count("PutObject") == 1 and counter.count("CreateMultipartUpload") == 0

    # Same bytes again (any name, explicit extension): same address, HEAD only, no upload.
    again = store.put(_file(tmp_path / "work" / "other.bin", data), ext=".png")
    assert again == (uri, sha, len(data))
    assert counter.count("PutObject") == 1 and counter.count("HeadObject") == 2
    assert _keys(bucket, "team/a/") == [f"team/a/media/{sha[:2]}/{sha}.png"]


def test_local_path_downloads_once_verifies_and_caches(bucket, tmp_path):
    counter = CallCounter()
    location = S3Location(bucket, "p", counter.client)
    store = S3MediaStore(location, tmp_path / "s3cache")
    data = bytes(range(256)) * 4096  # 1 MiB: more than one read block
    uri, sha, size = store.put(_file(tmp_path / "clip.mp4", data))

    shutil.rmtree(tmp_path / "s3cache")  # as on another machine
    path = store.local_path(uri)
    assert path == tmp_path / "s3cache" / f"{sha}.mp4" and path.read_bytes() == data
    assert store.local_path(uri) == path and counter.count("GetObject") == 1  # read-through cache
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left

    # A corrupt object at a content address is refused and not cached.
    bad_sha = hashlib.sha256(b"the real bytes").hexdigest()
    bad_key = location.key("media", bad_sha[:2], f"{bad_sha}.mp4")
    boto3.client("s3").put_object(Bucket=bucket, Key=bad_key, Body=b"other bytes")
    with pytest.raises(OSError, match="corrupt"):
        store.local_path(location.uri(bad_key))
    assert not (tmp_path / "s3cache" / f"{bad_sha}.mp4").exists()

    with pytest.raises(FileNotFoundError):
        store.local_path(location.uri(location.key("media", "00", "0" * 64 + ".mp4")))
    with pytest.raises(ValueError):
        store.local_path("file:///tmp/x.mp4")


def test_has_checks_the_object_with_one_head(bucket, tmp_path):
    store = S3MediaStore(S3Location(bucket, ""), tmp_path / "s3cache")
    uri, sha, size = store.put(_file(tmp_path / "a.wav", b"RIFF" + b"\0" * 100))
    assert uri == f"s3://{bucket}/media/{sha[:2]}/{sha}.wav"
    assert store.has(uri, sha, size)
    assert not store.has(uri, sha, size + 1)
    assert not store.has(uri, "f" * 64, size)
    assert not store.has(uri.replace(sha, "0" * 64), "0" * 64, size)
    assert not store.has(f"file:///x/{sha}.wav", sha, size)


def test_generation_cache_index_lives_in_s3(bucket, tmp_path):
    location = S3Location(bucket, "shared")
    store = S3MediaStore(location, tmp_path / "s3cache")
    cache = GenerationCache(location.child("cache").text_objects(), store)
    uri, sha, size = store.put(_file(tmp_path / "x.png", b"png-ish bytes"))
    manifest = MediaManifest(media_type="image", uri=uri, sha256=sha, bytes=size, provider="local", model="m")
    assert cache.get("ab" * 32) is None
    cache.put("ab" * 32, manifest)
    assert f"shared/cache/ab/{'ab' * 32}.json" in _keys(bucket, "shared/cache/")
    assert cache.get("ab" * 32) == manifest
    boto3.client("s3").delete_object(Bucket=bucket, Key=location.key("media", sha[:2], f"{sha}.png"))
    assert cache.get("ab" * 32) is None  # an entry whose media is gone is a miss


_PROVIDER: list[S3ClientProvider] = []


def _child_client_id(bucket: str) -> tuple[int, bool]:
    client = _PROVIDER[0]()
    return id(client), client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_client_provider_makes_one_client_per_process(bucket):
    provider = S3ClientProvider(lambda: boto3.session.Session().client("s3"))
    parent = provider()
    assert provider() is parent
    _PROVIDER[:] = [provider]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child_id, ok = pool.apply(_child_client_id, (bucket,))
    assert ok and child_id != id(parent)  # the parent's client is still alive in the child: a new one was made
    plain = S3ClientProvider.of(parent)
    assert plain() is parent


# --- a whole render with S3 configured ----------------------------------------------------------

def _media(obj) -> list[MediaManifest]:
    """Every MediaManifest inside a manifest (recursively)."""
    if isinstance(obj, MediaManifest):
        return [obj]
    if isinstance(obj, dict):
        return [m for v in obj.values() for m in _media(v)]
    if isinstance(obj, (list, tuple)):
        return [m for v in obj for m in _media(v)]
    if hasattr(obj, "model_fields"):
        return [m for name in type(obj).model_fields for m in _media(getattr(obj, name))]
    return []


def test_render_with_s3_media_cache_and_manifests(bucket, tmp_path, monkeypatch):
    prefix = "renders/test"
    monkeypatch.setenv("DAGSTER_HOME", str(make_dagster_home(tmp_path / "dagster_home")))
    monkeypatch.setenv("PIPELINE_S3_BUCKET", bucket)
    monkeypatch.setenv("PIPELINE_S3_PREFIX", prefix)
    data = tmp_path / "data"
    spec = write_spec(tmp_path / "s3.yaml", video_id="s3-video", duration=10,
                      beats=[{"prompt": "A paper boat on a puddle", "duration_s": 5},
                             {"prompt": "Rain stops and the sun comes out", "duration_s": 5, "motion": "push in"}])
    s3 = boto3.client("s3")
    with dg.DagsterInstance.get() as instance:
        defs = build_definitions(str(data))
        assert defs.resources["pipeline"].s3.bucket == bucket and defs.resources["io_manager"].s3.prefix == prefix
        report = render_video(spec, defs=defs, instance=instance, max_parallel=2)
        assert report.final is not None, [r.error for r in report.failed]

        # Manifests are in S3 (none locally), and every medium they name is an object there.
        manifest_keys = _keys(bucket, f"{prefix}/manifests/")
        assets = {key[len(prefix) + 1:].split("/")[1] for key in manifest_keys}
        assert assets == {"video_spec", "characters", "narration", "beats", "storyboard_images", "chunk_videos",
                          "stitched_video", "music", "soundtrack", "final_video"}
        stored = [load_manifest(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in manifest_keys]
        media_refs = [m for manifest in stored for m in _media(manifest)]
        assert len(media_refs) >= 2 * 3 + 3  # storyboards, chunks + last frames, stitched, music, final
        for m in media_refs:
            assert m.uri.startswith(f"s3://{bucket}/{prefix}/media/{m.sha256[:2]}/{m.sha256}"), m.uri
            assert s3.head_object(Bucket=bucket, Key=m.uri.split("/", 3)[3])["ContentLength"] == m.bytes
        manifests = defs.resources["pipeline"].manifests_dir
        final = read_manifest(manifests, "final_video", "s3-video")
        assert isinstance(final, FinalManifest) and final == report.final
        assert read_manifest(f"s3://{bucket}/{prefix}/manifests", "final_video", "s3-video") == final
        for local in ("manifests", "media", "cache", "specs", "videos"):
            assert not (data / local).exists(), local
        assert _keys(bucket, f"{prefix}/specs/") == [f"{prefix}/specs/s3-video.json"]

        # The cache index is in S3: one entry per generation that was not a cache hit.
        calls = read_call_log(Workspace.at(data))
        assert len(_keys(bucket, f"{prefix}/cache/")) == len(calls) > 0

        # The final video downloads from S3 and decodes to the right length, with audio.
        download = tmp_path / "final.mp4"
        download.write_bytes(s3.get_object(Bucket=bucket, Key=final.video.uri.split("/", 3)[3])["Body"].read())
        info = media.probe(download)
        assert abs(info.duration_s - 10) <= 1 / 24 and info.has_audio
        # Published as videos/<id>.mp4 in S3 (a server-side copy), its URI in the manifest.
        assert final.published_uri == final.path == f"s3://{bucket}/{prefix}/videos/s3-video.mp4"
        assert s3.get_object(Bucket=bucket, Key=f"{prefix}/videos/s3-video.mp4")["Body"].read() == download.read_bytes()

        # Forced rerun with an empty local read-through cache: everything from S3, all cache hits.
        shutil.rmtree(data / "s3cache")
        again = render_video(spec, defs=defs, instance=instance, max_parallel=2, force=True)
        assert again.final is not None, [r.error for r in again.failed]
        assert read_call_log(Workspace.at(data)) == calls  # no generation ran
        assert again.final.video.cache_hit and again.final.video.sha256 == final.video.sha256
        for chunk_set in again.chunk_sets:
            assert chunk_set.storyboard.cache_hit
            assert all(c.video.cache_hit and c.last_frame.cache_hit for c in chunk_set.chunks)
        assert again.final.published_uri == final.published_uri and not (data / "videos").exists()
