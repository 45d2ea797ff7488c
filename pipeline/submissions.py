"""The spec registry: a submitted spec, per video_id, that the ``video_spec`` asset materializes.

Submitting (CLI ``render``/``submit``, the inbox sensor) validates the spec, resolves the provider
and models it renders with, and writes ``specs/<video_id>.json`` atomically. Re-submitting an
identical spec with the same provider and models changes nothing; a changed one replaces the entry.

**Which provider.** An explicit choice (``pipeline render/submit --provider``) > the spec's
``provider`` > the deployment default (``ProviderDefaults``, from ``PipelineResource``) >
``local``. **Which models** (replicate only), per kind: an explicit choice (``--video-model``) >
the spec's ``models`` > the deployment default > the registry default (``pipeline.models.DEFAULTS``).
The registered submission records the *resolved* provider and every model, so whatever re-reads it
later (a backfill from the UI months later, ``pipeline retry``, the retry schedule) renders the
same way even after the deployment defaults changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from pipeline.manifests import utc_now
from pipeline.procs import file_lock
from pipeline.providers import PROVIDERS
from pipeline.spec import MODEL_KINDS, SpecError, VideoSpec, check_model_ref, load_spec, parse_spec, sha256_json
from pipeline.store import Workspace, atomic_write_text

PROVIDER_TAG = "pipeline/provider"
"""Run tag naming the provider a video renders with (``Submission.run_tags``, ``provider_tags``)."""

SPEC_TAG = "pipeline/spec"
"""Run tag: the first 12 hex digits of the registered version (``Submission.spec_sha256``)."""


@dataclass(frozen=True)
class ProviderDefaults:
    """A deployment's defaults (``PipelineResource.provider_defaults``): ``provider`` ("local" or
    "replicate") for specs that name none, and ``models`` ``{kind: registry ref}`` (kinds image,
    video, music) for the replicate kinds a spec leaves open. ``sources`` says where each default
    came from (e.g. ``{"video": "REPLICATE_VIDEO_MODEL"}``), for error messages."""

    provider: str = "local"
    models: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


class Submission(BaseModel):
    """A registered spec: the validated spec as JSON (as written), where it came from, and the
    resolved ``provider`` and ``models`` (``{kind: registry ref}`` for image, video and music;
    empty for local) it renders with. ``spec_sha256`` is the version of all three
    (``registration_sha256``): a new provider or model is a new version, and re-plans the video."""

    video_id: str
    provider: str
    models: dict[str, str] = Field(default_factory=dict)
    """Empty in entries registered before models were recorded: the deployment's defaults apply."""
    source: str
    spec: dict
    spec_sha256: str
    submitted_at: str

    def video_spec(self) -> VideoSpec:
        """Re-validate the stored spec (raises SpecError naming the registry file)."""
        return parse_spec(self.spec, f"{self.source} (registered as specs/{self.video_id}.json)")

    def run_tags(self) -> dict[str, str]:
        """Tags for runs of this video: ``video``, ``pipeline/spec`` (version) and ``pipeline/provider``."""
        return {"video": self.video_id, SPEC_TAG: self.spec_sha256[:12], PROVIDER_TAG: self.provider}


class UnknownVideoError(LookupError):
    """No spec is registered for a video_id."""


def provider_tags(provider: str) -> dict[str, str]:
    """``{"pipeline/provider": provider}``: the tag every run of a video carries (sensors add it
    from ``VideoPlan.provider`` or ``Submission.provider``)."""
    return {PROVIDER_TAG: provider}


def registration_sha256(spec: VideoSpec, provider: str, models: dict[str, str]) -> str:
    """The version of a registration: the spec's own fingerprint for ``local`` (so specs registered
    before providers were recorded keep their version), else sha256 of the fingerprint, the
    provider and the models."""
    if provider == "local" and not models:
        return spec.fingerprint()
    return sha256_json({"spec": spec.fingerprint(), "provider": provider, "models": models})


def resolve_provider(spec: VideoSpec, *, provider: str | None = None, models: dict[str, str] | None = None,
                     defaults: ProviderDefaults | None = None, source: str = "<spec>") -> tuple[str, dict[str, str]]:
    """The provider and models ``spec`` renders with (precedence in the module doc).

    ``provider`` / ``models``: explicit choices (``--provider``, ``--image-model`` ...; None: none).
    Returns ``(provider, {kind: ref})`` with every kind (image, video, music) for replicate and
    ``{}`` for local. Raises SpecError naming ``source`` and the field (``models.video``, or
    ``--video-model``) for a model that is not a registry model of its kind, and for model
    overrides on a video that renders with ``local``; ValueError for an unknown provider.
    """
    defaults = defaults or ProviderDefaults()
    name = provider or spec.provider or defaults.provider or "local"
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}")
    from_spec = spec.models.chosen() if spec.models is not None else {}
    explicit = {k: v for k, v in (models or {}).items() if v}
    if name == "local":
        given = [f"--{k}-model" for k in explicit] + [f"models.{k}" for k in from_spec if k not in explicit]
        if given:
            why = "--provider local" if provider else ("provider: local" if spec.provider else
                                                        f"the deployment default {defaults.sources.get('provider', '')}".strip())
            raise SpecError(source, [f"{given[0]}: model overrides apply to the replicate provider only, and this "
                                     f"video renders with the local provider ({why}); use --provider replicate or "
                                     "drop the model choice"])
        return "local", {}
    from pipeline.models import DEFAULTS

    resolved, problems = {}, []
    for kind, registry_kind in MODEL_KINDS.items():
        for ref, where in ((explicit.get(kind), f"--{kind}-model"), (from_spec.get(kind), f"models.{kind}"),
                           (defaults.models.get(kind), defaults.sources.get(kind, f"deployment default {kind} model")),
                           (DEFAULTS[registry_kind], None)):
            if not ref:
                continue
            try:
                resolved[kind] = check_model_ref(ref, kind)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
            break
    if problems:
        raise SpecError(source, problems)
    return name, resolved


def _path(workspace: Workspace, video_id: str) -> Path:
    return workspace.specs / f"{video_id}.json"


def submit_spec(workspace: Workspace, spec: VideoSpec, *, source: str, provider: str | None = None,
                models: dict[str, str] | None = None,
                defaults: ProviderDefaults | None = None) -> tuple[Submission, bool]:
    """Register ``spec`` with the provider and models ``resolve_provider`` picks from the explicit
    ``provider`` / ``models``, the spec and the deployment ``defaults``. Returns (submission, changed).

    ``changed`` is False when the identical spec, provider and models were already registered
    (the old entry is kept untouched). A caller that knows no deployment (``models`` and
    ``defaults`` both None) and re-submits the registered spec with its registered provider keeps
    the registered models. Check and write happen under a per-video file lock
    (``specs/.<video_id>.lock``), so of several processes registering the same spec at once
    exactly one sees ``changed``. Raises ValueError for an unknown provider and SpecError for a
    model choice that is not valid (see ``resolve_provider``).
    """
    name, chosen = resolve_provider(spec, provider=provider, models=models, defaults=defaults, source=source)
    with file_lock(workspace.specs / f".{spec.video_id}.lock"):
        try:
            current = load_submission(workspace, spec.video_id)
        except UnknownVideoError:
            current = None
        if (current is not None and models is None and defaults is None and current.provider == name
                and current.spec == spec.model_dump(mode="json", exclude_none=True)):
            return current, False
        sha = registration_sha256(spec, name, chosen)
        if current is not None and current.spec_sha256 == sha and current.provider == name and current.models == chosen:
            return current, False
        submission = Submission(video_id=spec.video_id, provider=name, models=chosen, source=source,
                                spec=spec.model_dump(mode="json", exclude_none=True), spec_sha256=sha,
                                submitted_at=utc_now())
        atomic_write_text(_path(workspace, spec.video_id), submission.model_dump_json(indent=2))
    return submission, True


def submit_file(workspace: Workspace, path: str | Path, *, provider: str | None = None,
                models: dict[str, str] | None = None,
                defaults: ProviderDefaults | None = None) -> tuple[Submission, bool]:
    """Load, validate and register a spec file (``submit_spec``). Raises SpecError / ValueError."""
    spec = load_spec(path)
    return submit_spec(workspace, spec, source=str(path), provider=provider, models=models, defaults=defaults)


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
