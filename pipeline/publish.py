"""Publishing the final video where people (and other machines) find it, and checking it is there.

- Local store (no S3): a copy at ``<data>/videos/<video_id>.mp4`` (``publish``: a reflink where the
  filesystem can, never a hard link), URI ``file://...``.
- S3 store: the object ``s3://<bucket>/<prefix>/videos/<video_id>.mp4``, a server-side copy of the
  content-addressed media object (``S3MediaStore.publish``: one CopyObject, no bytes through the
  worker that assembled it, so the video does not depend on which machine that was).

``FinalManifest.published_uri`` records where it went (``path`` too: the local path, or the same
``s3://`` URI), and ``is_published`` is the up-to-date check every machine can make: the local file
exists, or the S3 object exists with the final video's size and sha256. Nothing here imports Dagster.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.manifests import FinalManifest, MediaManifest
from pipeline.store import MediaStore, Workspace


def publish(src: Path, dest: Path) -> Path:
    """Atomically place a copy of ``src`` at ``dest`` (the file people open, edit and share).

    A reflink (Linux ``FICLONE``: shared blocks, copy-on-write) where the filesystem supports it,
    else a byte copy; never a hard link, so editing the published file in place can never change
    the media store. Nothing is written when ``dest`` already is a separate file with identical
    bytes (same size, then same sha256). The temp file beside ``dest`` names its owner process
    (``pipeline.housekeeping``) and is removed on any error. Returns ``dest``; raises OSError if
    ``src`` cannot be read or ``dest`` written."""
    import fcntl

    from pipeline.housekeeping import owned_temp_path
    from pipeline.store import sha256_file

    ficlone = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if (not os.path.samefile(src, dest) and os.path.getsize(src) == os.path.getsize(dest)
                and sha256_file(src) == sha256_file(dest)):
            return dest
    except FileNotFoundError:
        pass
    tmp = owned_temp_path(dest)
    try:
        with open(src, "rb") as fsrc, open(tmp, "xb") as fdst:
            try:
                fcntl.ioctl(fdst.fileno(), ficlone, fsrc.fileno())
            except OSError:  # no reflinks here (ext4, tmpfs, another filesystem): copy the bytes
                shutil.copyfileobj(fsrc, fdst, 1 << 20)
            fdst.flush()
            os.fsync(fdst.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def publish_final(video: MediaManifest, video_id: str, store: MediaStore, workspace: Workspace) -> tuple[str, str]:
    """Publish the stored final ``video`` of ``video_id``: returns ``(path, uri)`` for the
    manifest. S3 store: both are ``s3://<bucket>/<prefix>/videos/<video_id>.mp4``. Local store:
    ``<data>/videos/<video_id>.mp4`` and its ``file://`` URI. Raises OSError (FileNotFoundError
    if the stored video is gone) or the S3 client's errors."""
    name = f"{video_id}.mp4"
    if store.scheme == "s3":
        uri = store.publish(video.uri, video.sha256, video.bytes, name)  # type: ignore[attr-defined]
        return uri, uri
    dest = publish(store.local_path(video.uri), workspace.videos / name)
    return str(dest), dest.as_uri()


def publish_text(text: str, name: str, store: MediaStore, workspace: Workspace) -> str:
    """Publish a small UTF-8 text file (subtitles: ``<video_id>.vtt`` / ``.srt``) beside the
    published videos: ``<data>/videos/<name>`` written atomically and readable by all (0644), or
    with the S3 store the object ``<prefix>/videos/<name>`` (one PUT). Returns the local path or
    the ``s3://`` URI. Raises OSError or the S3 client's errors."""
    if store.scheme == "s3":
        location = store.location  # type: ignore[attr-defined]
        key = location.key("videos", name)
        content_type = {".vtt": "text/vtt", ".srt": "application/x-subrip"}.get(Path(name).suffix, "text/plain")
        location.s3().put_object(Bucket=location.bucket, Key=key, Body=text.encode("utf-8"),
                                 ContentType=f"{content_type}; charset=utf-8")
        return location.uri(key)
    from pipeline.store import atomic_write_text

    dest = workspace.videos / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, text)
    dest.chmod(0o644)
    return str(dest)


def published_uri(final: FinalManifest) -> str:
    """Where ``final`` was published: ``published_uri``, or (manifests written before it was
    recorded) the ``file://`` URI of its ``path``."""
    if final.published_uri:
        return final.published_uri
    return final.path if final.path.startswith("s3://") else Path(final.path).resolve().as_uri()


def is_published(final: FinalManifest, store: MediaStore) -> bool:
    """Whether ``final``'s published video is where its manifest says, on any machine: an ``s3://``
    URI is checked with one HEAD (the object has the video's size and sha256; ``store`` must be the
    S3 store, which has the client), a local one by the file's existence. Raises ValueError for an
    ``s3://`` URI when ``store`` is not an S3 store."""
    uri = published_uri(final)
    if uri.startswith("s3://"):
        if store.scheme != "s3":
            raise ValueError(f"{final.video_id}'s final video was published to {uri}, but this deployment has no S3 "
                             "store configured (set PIPELINE_S3_BUCKET)")
        return store.published(uri, final.video.sha256, final.video.bytes)  # type: ignore[attr-defined]
    return Path(final.path).exists()
