"""The media store keeps its bytes: published videos are copies, cache hits re-hash what they
reuse, corrupt entries are quarantined (never deleted) and regenerated with a warning, and temp
files of dead processes are swept. Unit tests of the store, publish and the sweep, and a real
``pipeline render`` / ``render --force`` pair on decoded media."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import socket
import time
from pathlib import Path

import boto3
import pytest

from pipeline import media
from pipeline.housekeeping import owned_name, owned_temp_path, sweep_temp, temp_owner
from pipeline.manifests import MediaManifest, load_manifest
from pipeline.procs import ProcessIdentity
from pipeline.s3_store import S3Location, S3MediaStore
from pipeline.stages import publish
from pipeline.store import GenerationCache, LocalMediaStore, check_file, sha256_file
from pipeline_tests.cli_processes import ROOT, clean_env, start_cli
from pipeline_tests.conftest import make_dagster_home, write_spec
from pipeline_tests.test_s3_store import bucket, moto_endpoint  # noqa: F401  (fixtures)


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _scribble(path: Path, at: float = 0.5, data: bytes = b"\xde\xad\xbe\xef" * 16) -> None:
    """Overwrite bytes in the middle of ``path`` in place (same size, same inode), as an editor
    or a stray tool would. Works on read-only files too when running as root; otherwise makes
    the file writable first, as a user would have to."""
    if not os.access(path, os.W_OK):
        os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(int(path.stat().st_size * at))
        f.write(data)


# --- LocalMediaStore -----------------------------------------------------------------------------

def test_entries_are_read_only_and_check_rehashes_them(tmp_path):
    store = LocalMediaStore(tmp_path / "media")
    data = os.urandom(300_000)
    uri, sha, size = store.put(_file(tmp_path / "clip.mp4", data))
    path = store.local_path(uri)
    assert path.stat().st_mode & 0o777 == 0o444
    assert store.check(uri, sha, size) == "ok" and store.has(uri, sha, size)
    inode = path.stat().st_ino
    _scribble(path)
    assert path.stat().st_ino == inode and path.stat().st_size == size
    assert store.check(uri, sha, size) == "corrupt" and not store.has(uri, sha, size)
    assert store.check(uri.replace(sha, "0" * 64), "0" * 64, size) == "missing"
    assert store.check(uri, "f" * 64, size) == "missing"  # not this digest's address
    path.unlink()
    assert store.check(uri, sha, size) == "missing"


def test_put_over_a_corrupt_entry_quarantines_it_and_stores_the_good_bytes(tmp_path):
    store = LocalMediaStore(tmp_path / "media")
    data = os.urandom(10_000)
    uri, sha, size = store.put(_file(tmp_path / "a.png", data))
    _scribble(store.local_path(uri))
    bad = store.local_path(uri).read_bytes()
    assert store.put(_file(tmp_path / "b.png", data)) == (uri, sha, size)
    assert store.local_path(uri).read_bytes() == data
    moved = [p for p in store.quarantine_dir.iterdir() if p.name.startswith(sha) and not p.name.endswith(".json")]
    assert [p.read_bytes() for p in moved] == [bad]
    note = json.loads(moved[0].with_name(moved[0].name + ".json").read_text())
    assert note["expected"] == {"bytes": size, "sha256": sha} and note["found"]["sha256"] == hashlib.sha256(bad).hexdigest()


def _manifest(uri: str, sha: str, size: int, **extra) -> MediaManifest:
    return MediaManifest(media_type="video", uri=uri, sha256=sha, bytes=size, provider="local", model="m", **extra)


@pytest.mark.parametrize("paid", [False, True])
def test_a_corrupt_cache_hit_is_a_miss_quarantined_with_a_warning(tmp_path, caplog, paid):
    store = LocalMediaStore(tmp_path / "media")
    cache = GenerationCache(tmp_path / "cache", store)
    uri, sha, size = store.put(_file(tmp_path / "x.mp4", os.urandom(50_000)))
    extra = {"provider": "replicate", "model": "wan-video/wan-2.2-i2v-fast", "cost_usd": 0.05,
             "prediction_id": "p-123"} if paid else {}
    manifest = _manifest(uri, sha, size).model_copy(update=extra)
    cache.put("k" * 64, manifest)
    assert cache.get("k" * 64) == manifest
    _scribble(store.local_path(uri))
    with caplog.at_level(logging.WARNING, logger="pipeline.store"):
        assert cache.get("k" * 64) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is corrupted" in warnings[0] and "regenerating" in warnings[0]
    assert ("may pay again" in warnings[0]) == paid
    if paid:
        assert "re-download a succeeded prediction for free" in warnings[0] and "p-123" in warnings[0]
    assert check_file(Path(uri[len("file://"):]), sha, size) == "missing"  # moved aside ...
    assert len([p for p in store.quarantine_dir.iterdir() if p.name.startswith(sha)]) == 2  # ... with its note
    assert cache.get("k" * 64) is None  # and the next look is a plain miss


# --- publish -------------------------------------------------------------------------------------

def test_publish_copies_and_never_links_into_the_store(tmp_path):
    store = LocalMediaStore(tmp_path / "media")
    data = os.urandom(200_000)
    uri, sha, size = store.put(_file(tmp_path / "final.mp4", data))
    src = store.local_path(uri)
    dest = tmp_path / "videos" / "v.mp4"
    assert publish(src, dest) == dest
    assert dest.read_bytes() == data and dest.stat().st_ino != src.stat().st_ino and src.stat().st_nlink == 1
    assert dest.stat().st_mode & 0o200  # people may edit their copy ...
    _scribble(dest)
    assert store.check(uri, sha, size) == "ok"  # ... and the store does not change

    publish(src, dest)  # different bytes: published again
    assert dest.read_bytes() == data
    inode, mtime = dest.stat().st_ino, dest.stat().st_mtime_ns
    publish(src, dest)  # identical bytes: nothing written
    assert (dest.stat().st_ino, dest.stat().st_mtime_ns) == (inode, mtime)

    dest.unlink()
    os.link(src, dest)  # a hard link left by an older version is replaced by a copy
    publish(src, dest)
    assert dest.stat().st_ino != src.stat().st_ino and src.stat().st_nlink == 1 and dest.read_bytes() == data

    with pytest.raises(FileNotFoundError):
        publish(tmp_path / "missing.mp4", tmp_path / "videos" / "w.mp4")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["v.mp4"]  # no temp file left


# --- sweeping temp files of dead processes -------------------------------------------------------

def _identity(queue) -> None:
    queue.put(str(ProcessIdentity.current()))


def _dead_identity() -> str:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_identity, args=(queue,))
    child.start()
    identity = queue.get(timeout=60)
    child.join(timeout=60)
    assert ProcessIdentity.parse(identity).is_alive() is False
    return identity


def test_sweep_removes_only_what_dead_processes_left(tmp_path):
    root = tmp_path / "data"
    dead, live, remote = _dead_identity(), str(ProcessIdentity.current()), "elsewhere.example:4242:99"
    assert remote.split(":")[0] != socket.gethostname()
    made = {
        "dead scratch": root / "tmp" / f"gen-abc@{dead}@0123456789ab",
        "dead manifest tmp": root / "manifests" / "beats" / "v" / f".000.json@{dead}@x_y1z2ab.tmp",
        "dead media tmp": root / "media" / "ab" / f".abcd.mp4@{dead}@0123456789ab.tmp",
        "dead part": root / "s3cache" / f"abcd.mp4@{dead}@0123456789ab.part",
        "dead publish tmp": root / "videos" / f".v.mp4@{dead}@0123456789ab.tmp",
        "live scratch": root / "tmp" / owned_name("gen-live"),
        "live publish tmp": owned_temp_path(root / "videos" / "w.mp4"),
        "remote tmp": root / "videos" / f".r.mp4@{remote}@0123456789ab.tmp",
        "old unowned scratch": root / "tmp" / "gen-0123456789ab-0123456789ab",
        "old unowned tmp": root / "videos" / ".x.mp4.tmp",
        "new unowned tmp": root / "videos" / ".y.mp4.tmp",
        "a video": root / "videos" / "v.mp4",
        "a lock": root / "locks" / "v.lock",
    }
    for name, path in made.items():
        if "scratch" in name:
            (path / "sub").mkdir(parents=True)
            (path / "sub" / "file.bin").write_bytes(b"x")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    assert temp_owner(made["live scratch"].name) == ProcessIdentity.current()
    week_ago = time.time() - 7 * 24 * 3600
    for name in ("old unowned scratch", "old unowned tmp"):
        os.utime(made[name], (week_ago, week_ago))
    report = sweep_temp(root)
    removed = {name for name, path in made.items() if not path.exists()}
    assert removed == {"dead scratch", "dead manifest tmp", "dead media tmp", "dead part", "dead publish tmp",
                       "old unowned scratch", "old unowned tmp"}
    assert sorted(report.removed) == sorted(made[n] for n in removed) and report.errors == []


# --- S3 ------------------------------------------------------------------------------------------

def test_s3_store_detects_edited_local_copies_and_replaced_objects(bucket, tmp_path, caplog):  # noqa: F811
    location = S3Location(bucket, "p")
    store = S3MediaStore(location, tmp_path / "s3cache")
    cache = GenerationCache(location.child("cache").text_objects(), store)
    data = os.urandom(100_000)
    uri, sha, size = store.put(_file(tmp_path / "c.mp4", data))
    manifest = _manifest(uri, sha, size)
    cache.put("c" * 64, manifest)

    # The local read-through copy edited in place: set aside, downloaded again; still a hit.
    local = store.local_path(uri)
    _scribble(local)
    with caplog.at_level(logging.WARNING, logger="pipeline.store"):
        assert cache.get("c" * 64) == manifest
    assert any("local copy" in r.getMessage() and "corrupted" in r.getMessage() for r in caplog.records)
    assert not local.exists() and store.local_path(uri).read_bytes() == data

    # The object replaced by other bytes (no sha256 metadata of ours): corrupt, moved aside, a miss.
    key = uri.split("/", 3)[3]
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=os.urandom(size), Metadata={"sha256": "0" * 64})
    assert store.check(uri, sha, size) == "corrupt"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.store"):
        assert cache.get("c" * 64) is None
    assert any("is corrupted" in r.getMessage() for r in caplog.records)
    s3 = boto3.client("s3")
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount") == 0
    quarantined = s3.list_objects_v2(Bucket=bucket, Prefix="p/quarantine/").get("Contents", [])
    assert [o["Key"].split("/")[-1].split(".")[0] for o in quarantined] == [sha]

    # Putting the right bytes again restores the entry.
    assert store.put(_file(tmp_path / "again.mp4", data)) == (uri, sha, size)
    assert cache.get("c" * 64) == manifest


# --- a real render: edit the published video, corrupt a store entry, render --force --------------

def test_published_edits_leave_the_store_alone_and_corrupt_entries_are_regenerated(tmp_path):
    home = make_dagster_home(tmp_path / "dagster_home")
    data = tmp_path / "data"
    env = clean_env(DAGSTER_HOME=str(home), PIPELINE_DATA_DIR=str(data))
    spec = write_spec(tmp_path / "integrity.yaml", video_id="integrity", beats=[
        {"prompt": "A lighthouse at dusk", "duration_s": 5},
        {"prompt": "Waves crash on the rocks", "duration_s": 5, "motion": "slow pan"}])

    def render(*args: str, name: str) -> str:
        proc = start_cli(["render", str(spec), *args], env=env, cwd=ROOT, log_path=tmp_path / f"{name}.log")
        try:
            assert proc.wait(1200) == 0, proc.output()
        finally:
            proc.kill()
        return proc.output()

    render(name="first")
    final = load_manifest((data / "manifests" / "final_video" / "integrity.json").read_bytes())
    published, stored = Path(final.path), Path(final.video.uri[len("file://"):])
    assert published.stat().st_ino != stored.stat().st_ino and stored.stat().st_nlink == 1
    _scribble(published)
    assert sha256_file(stored) == final.video.sha256  # the store entry did not change

    chunks = load_manifest((data / "manifests" / "chunk_videos" / "integrity" / "000.json").read_bytes())
    chunk = chunks.chunks[0].video
    chunk_path = Path(chunk.uri[len("file://"):])
    _scribble(chunk_path, at=0.4)
    assert check_file(chunk_path, chunk.sha256, chunk.bytes) == "corrupt"

    output = render("--force", name="forced")
    assert "is corrupted" in output and chunk.sha256[:16] in output, output
    quarantine = data / "media" / "quarantine"
    assert [p for p in quarantine.iterdir() if p.name.startswith(chunk.sha256) and not p.name.endswith(".json")]

    again = load_manifest((data / "manifests" / "chunk_videos" / "integrity" / "000.json").read_bytes())
    regenerated = again.chunks[0].video
    assert not regenerated.cache_hit
    path = Path(regenerated.uri[len("file://"):])
    assert check_file(path, regenerated.sha256, regenerated.bytes) == "ok"
    info = media.verify_video(path)
    assert abs(info.duration_s - regenerated.duration_s) < 1e-6 and abs(info.duration_s - 5.0) <= 1 / info.fps
    final_info = media.verify_video(published)  # published again: the edited copy was replaced
    assert abs(final_info.duration_s - 10.0) <= 1 / final_info.fps and final_info.has_audio
    forced = load_manifest((data / "manifests" / "final_video" / "integrity.json").read_bytes())
    assert sha256_file(published) == forced.video.sha256
