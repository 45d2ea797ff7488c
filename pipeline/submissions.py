"""The spec registry: a submitted spec, per video_id, that the ``video_spec`` asset materializes.

Submitting (CLI ``render``/``submit``, the inbox sensor) validates the spec and writes
``specs/<video_id>.json`` atomically with the provider chosen for that video. Re-submitting an
identical spec changes nothing; a changed one replaces the entry.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from pipeline.manifests import utc_now
from pipeline.procs import file_lock
from pipeline.providers import PROVIDERS
from pipeline.spec import VideoSpec, load_spec, parse_spec
from pipeline.store import Workspace, atomic_write_text


class Submission(BaseModel):
    """A registered spec: the validated spec as JSON, where it came from, and its provider."""

    video_id: str
    provider: str
    source: str
    spec: dict
    spec_sha256: str
    submitted_at: str

    def video_spec(self) -> VideoSpec:
        """Re-validate the stored spec (raises SpecError naming the registry file)."""
        return parse_spec(self.spec, f"{self.source} (registered as specs/{self.video_id}.json)")


class UnknownVideoError(LookupError):
    """No spec is registered for a video_id."""


def _path(workspace: Workspace, video_id: str) -> Path:
    return workspace.specs / f"{video_id}.json"


def submit_spec(workspace: Workspace, spec: VideoSpec, *, source: str, provider: str = "local") -> tuple[Submission, bool]:
    """Register ``spec`` for rendering with ``provider``. Returns (submission, changed).

    ``changed`` is False when the identical spec and provider were already registered (the old
    entry is kept untouched). Check and write happen under a per-video file lock
    (``specs/.<video_id>.lock``), so of several processes registering the same spec at once
    exactly one sees ``changed``. Raises ValueError for an unknown provider.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    sha = spec.fingerprint()
    with file_lock(workspace.specs / f".{spec.video_id}.lock"):
        try:
            current = load_submission(workspace, spec.video_id)
        except UnknownVideoError:
            current = None
        if current is not None and current.spec_sha256 == sha and current.provider == provider:
            return current, False
        submission = Submission(video_id=spec.video_id, provider=provider, source=source,
                                spec=spec.model_dump(mode="json", exclude_none=True), spec_sha256=sha,
                                submitted_at=utc_now())
        atomic_write_text(_path(workspace, spec.video_id), submission.model_dump_json(indent=2))
    return submission, True


def submit_file(workspace: Workspace, path: str | Path, *, provider: str = "local") -> tuple[Submission, bool]:
    """Load, validate and register a spec file. Raises SpecError / FileNotFoundError."""
    spec = load_spec(path)
    return submit_spec(workspace, spec, source=str(path), provider=provider)


def load_submission(workspace: Workspace, video_id: str) -> Submission:
    """The registered submission of ``video_id``. Raises UnknownVideoError if there is none."""
    path = _path(workspace, video_id)
    try:
        return Submission.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnknownVideoError(
            f"no spec is registered for video {video_id!r} (expected {path}); submit one with "
            f"`pipeline submit SPEC` or `pipeline render SPEC`") from None


def list_submissions(workspace: Workspace) -> list[Submission]:
    """Every registered submission, by video_id. Unreadable entries are skipped (and reported by
    ``load_submission`` when that video is materialized)."""
    out = []
    for path in sorted(workspace.specs.glob("*.json")):
        try:
            out.append(Submission.model_validate_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out
