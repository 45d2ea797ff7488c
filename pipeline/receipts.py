"""Render receipts: how ``pipeline render`` of an up-to-date video answers in well under a second.

Finding that a video is up to date the Dagster way (``orchestration.render.up_to_date_report``)
means importing Dagster and the whole pipeline and opening the instance: about 4 s of a 4.1 s
cached rerun on a 2-core machine (BENCHMARKS.md section 9). A receipt lets the CLI skip all of it
when nothing it would look at has changed.

``write_receipt`` is called by ``pipeline render`` after a render that ended with a final video
(rendered now, or found up to date). It records, under ``<data>/receipts/<request key>.json``:

- the *request key*: sha256 of the spec file's bytes, the command's options that choose what is
  rendered (provider, models), the resolved data directory and Dagster home, and every
  ``PIPELINE_*`` / ``REPLICATE_*`` / ``AWS_*`` environment variable except the API token (hashed
  together: no value is stored);
- sha256 of every manifest of the video (``manifests/<asset>/<video>[/<segment>].json``: the
  plan, every segment's beats, storyboards and chunk videos, the stitch, the music, the final) and
  of its registry entry (``specs/<video>.json``);
- sha256 of the other files the spec reads (``spec_input_files``: its characters' reference images);
- the published file's path, size and modification time (ns).

A receipt is written only when the final video's manifest is the newest of the video's manifests
(every input was materialized before the final video was made: Dagster's own up-to-date rule,
``planner.up_to_date``, in file times).

``fresh_receipt`` finds the receipt of a request and checks every recorded file again. Any
difference (a segment re-materialized from the UI, a new spec version registered by the inbox, a
deleted or replaced published file, another environment) and the CLI takes the Dagster path, which
decides as before. With S3 configured (``PIPELINE_S3_BUCKET``) manifests and the registry are not
local files, and receipts are neither written nor used.

No Dagster import here, nor anything that imports it: this module is on the CLI's fast path.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pipeline.manifests import ChunkVideosManifest, FinalManifest, VideoPlan, load_manifest
from pipeline.store import atomic_write_text

RECEIPT_VERSION = 1
"""Bumped when the receipt's content or the request key's recipe changes (old receipts are ignored)."""

_ENV_PREFIXES = ("PIPELINE_", "REPLICATE_", "AWS_", "DAGSTER_")
_ENV_SECRETS = {"REPLICATE_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def receipts_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Receipts need local manifests and registry: False when S3 is configured (``PIPELINE_S3_BUCKET``)."""
    env = os.environ if env is None else env
    return not env.get("PIPELINE_S3_BUCKET")


def request_key(spec_bytes: bytes, *, data_dir: str | Path, dagster_home: str, options: Mapping[str, object],
                env: Mapping[str, str] | None = None) -> str:
    """sha256 (hex) naming one render request: the spec file's bytes, ``options`` (the command
    line's provider and model choices), the resolved ``data_dir`` and ``dagster_home``, and the
    deployment's environment (``PIPELINE_*``, ``REPLICATE_*``, ``AWS_*``, ``DAGSTER_*``; secrets
    left out). Two requests with the same key render the same video the same way."""
    env = os.environ if env is None else env
    config = {k: v for k, v in sorted(env.items()) if k.startswith(_ENV_PREFIXES) and k not in _ENV_SECRETS}
    payload = json.dumps({"v": RECEIPT_VERSION, "spec": hashlib.sha256(spec_bytes).hexdigest(),
                          "data_dir": str(Path(data_dir).resolve()), "dagster_home": str(dagster_home),
                          "options": {k: options[k] for k in sorted(options)}, "env": config},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def dagster_home_for(data_dir: str | Path) -> str:
    """The Dagster instance directory the CLI uses (absolute; nothing created): $DAGSTER_HOME if
    set, else the working directory if it holds a dagster.yaml (the repository root), else
    ``<data_dir>/dagster_home``. ``pipeline.cli.ensure_dagster_home`` creates the last one."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        return str(Path(home).expanduser().resolve())
    if Path("dagster.yaml").exists():
        return str(Path.cwd())
    return str(Path(data_dir).resolve() / "dagster_home")


def _video_files(data_dir: Path, video_id: str) -> list[Path]:
    """The video's manifests (every asset, every segment) and its registry entry, sorted."""
    manifests = data_dir / "manifests"
    files = [*manifests.glob(f"*/{video_id}.json"), *manifests.glob(f"*/{video_id}/*.json")]
    return sorted(files) + [data_dir / "specs" / f"{video_id}.json"]


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _receipt_path(data_dir: Path, key: str) -> Path:
    return data_dir / "receipts" / f"{key}.json"


def spec_input_files(spec_path: str | Path, spec) -> list[Path]:
    """The files besides ``spec_path`` that the loaded ``spec`` (a VideoSpec) was read from: each
    character's ``reference_image`` (relative to the spec's folder). A change to one of them is a
    new version of the spec although the spec file's bytes are the same."""
    from pipeline.spec_characters import folder_of

    folder = folder_of(spec_path)
    return [folder / c.reference_image.file for c in (getattr(spec, "characters", None) or {}).values()
            if getattr(c, "reference_image", None) is not None]


def write_receipt(data_dir: str | Path, key: str, video_id: str, inputs: list[Path] | tuple = ()) -> Path | None:
    """Record that request ``key`` is satisfied by ``video_id``'s current manifests and published
    file (module doc). Returns the receipt's path, or None when nothing was written: receipts are
    off (S3), the final manifest or published file is missing, or an input manifest is newer than
    the final video's (something re-materialized since: the next render takes the Dagster path).
    Never raises for a missing or unreadable file (the receipt is an optimisation)."""
    if not receipts_enabled():
        return None
    data_dir = Path(data_dir)
    files = _video_files(data_dir, video_id)
    final_path = data_dir / "manifests" / "final_video" / f"{video_id}.json"
    try:
        final = load_manifest(final_path.read_bytes())
        published = Path(final.path).stat()
        final_mtime = final_path.stat().st_mtime_ns
        if any(f.stat().st_mtime_ns > final_mtime for f in files[:-1]):  # the manifests (not the registry)
            return None
    except (OSError, ValueError, AttributeError):
        return None
    digests = {str(f.relative_to(data_dir)): _digest(f) for f in files}
    outside = {str(Path(f).resolve()): _digest(Path(f)) for f in inputs}
    if None in digests.values() or None in outside.values():
        return None
    receipt = {"version": RECEIPT_VERSION, "video_id": video_id, "files": digests, "inputs": outside,
               "published": {"path": str(final.path), "size": published.st_size, "mtime_ns": published.st_mtime_ns}}
    path = _receipt_path(data_dir, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(receipt, indent=1))
    except OSError:
        return None
    return path


@dataclass(frozen=True)
class FreshReceipt:
    """A receipt whose every recorded file is unchanged: the video's plan, final manifest and the
    chunk_videos manifests of its beats (timeline order), read from the files just checked."""

    video_id: str
    plan: VideoPlan
    final: FinalManifest
    chunk_sets: list[ChunkVideosManifest]


def fresh_receipt(data_dir: str | Path, key: str) -> FreshReceipt | None:
    """The receipt of request ``key`` if every file it recorded is byte-for-byte the same and the
    published video has the recorded size and modification time; else None (no receipt, receipts
    off, anything changed or unreadable). Never raises."""
    if not receipts_enabled():
        return None
    data_dir = Path(data_dir)
    try:
        receipt = json.loads(_receipt_path(data_dir, key).read_text(encoding="utf-8"))
        if receipt.get("version") != RECEIPT_VERSION:
            return None
        video_id = receipt["video_id"]
        recorded: dict[str, str] = receipt["files"]
        if sorted(recorded) != sorted(str(f.relative_to(data_dir)) for f in _video_files(data_dir, video_id)):
            return None  # a manifest appeared or vanished
        texts = {}
        for rel, digest in recorded.items():
            data = (data_dir / rel).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                return None
            texts[rel] = data
        for path, digest in receipt.get("inputs", {}).items():
            if _digest(Path(path)) != digest:
                return None  # a reference image changed: a new version of the spec
        published = receipt["published"]
        info = Path(published["path"]).stat()
        if (info.st_size, info.st_mtime_ns) != (published["size"], published["mtime_ns"]):
            return None
        plan = load_manifest(texts[f"manifests/video_spec/{video_id}.json"])
        final = load_manifest(texts[f"manifests/final_video/{video_id}.json"])
        sets = [load_manifest(texts[f"manifests/chunk_videos/{video_id}/{b.segment}.json"]) for b in plan.beats]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not (isinstance(plan, VideoPlan) and isinstance(final, FinalManifest)
            and all(isinstance(s, ChunkVideosManifest) for s in sets)):
        return None
    return FreshReceipt(video_id, plan, final, sorted(sets, key=lambda s: s.index))
