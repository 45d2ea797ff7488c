"""The spec registry: a submitted spec, per video_id, that the ``video_spec`` asset materializes.

Submitting (CLI ``render``/``submit``, the inbox sensor) validates the spec, resolves the provider
and models it renders with, and writes ``specs/<video_id>.json`` atomically through the configured
``TextObjects`` (``PipelineResource.specs``): the local ``<data>/specs/`` folder, or
``s3://<bucket>/<prefix>/specs/`` when S3 is configured, so every machine of a cluster sees every
registration. Re-submitting an identical spec with the same provider and models changes nothing;
a changed one replaces the entry (compare-and-swap, so concurrent submitters never both change it).

**Which provider.** An explicit choice (``pipeline render/submit --provider``) > the spec's
``provider`` > the deployment default (``ProviderDefaults``, from ``PipelineResource``) >
``local``. **Which models** (replicate only), per kind: an explicit choice (``--video-model``) >
the spec's ``models`` > the deployment default > the registry default (``pipeline.models.DEFAULTS``).
The registered submission records the *resolved* provider and every model, so whatever re-reads it
later (a backfill from the UI months later, ``pipeline retry``, the retry schedule) renders the
same way even after the deployment defaults changed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Union

from pydantic import BaseModel, Field

from pipeline.manifests import utc_now
from pipeline.procs import ProcessIdentity
from pipeline.providers import PROVIDERS
from pipeline.spec import MODEL_KINDS, SpecError, VideoSpec, check_model_ref, load_spec, parse_spec, sha256_json
from pipeline.store import Workspace
from pipeline.text_objects import TextObjects, text_objects

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
    registered_by: str | None = None
    """``host:pid:start`` of the ``pipeline render`` process that registered this version and renders
    it itself (``procs.ProcessIdentity``); None for the inbox and ``pipeline submit``. The inbox
    sensor leaves such a registration to that process (``spec_inbox_sensor``)."""

    def video_spec(self) -> VideoSpec:
        """Re-validate the stored spec (raises SpecError naming the registry file)."""
        return parse_spec(self.spec, f"{self.source} (registered as specs/{self.video_id}.json)")

    def run_tags(self) -> dict[str, str]:
        """Tags for runs of this video: ``video``, ``pipeline/spec`` (version) and ``pipeline/provider``."""
        return {"video": self.video_id, SPEC_TAG: self.spec_sha256[:12], PROVIDER_TAG: self.provider}


class UnknownVideoError(LookupError):
    """No spec is registered for a video_id."""


RENDER_CLAIM_S = 600.0
"""How long (seconds after registering) a ``pipeline render`` on another machine is left to plan
its registration before the inbox sensor plans it (a render that died before planning)."""


def render_claim(submission: Submission, now: float | None = None) -> str | None:
    """The ``pipeline render`` process on another machine that registered ``submission`` and may
    still be planning it: its ``host:pid:start`` while the registration is under RENDER_CLAIM_S
    seconds old, else None. None too for a registration without ``registered_by`` and for one made
    on this machine (there the render lock says whether it is still rendering:
    ``orchestration.render_lock``). ``now``: Unix seconds (default: the current time)."""
    owner = ProcessIdentity.parse(submission.registered_by)
    if owner is None or owner.is_local:
        return None
    try:
        registered = datetime.fromisoformat(submission.submitted_at).timestamp()
    except ValueError:
        return None
    return str(owner) if (time.time() if now is None else now) - registered < RENDER_CLAIM_S else None


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


Registry = Union[Workspace, str, Path, TextObjects]
"""Where the registry is: a ``Workspace`` (its ``specs/`` folder), a local folder, an
``s3://bucket/prefix`` string, or any ``TextObjects`` (``PipelineResource.specs``: the local
``<data>/specs`` folder, or ``s3://<bucket>/<prefix>/specs`` when S3 is configured)."""

MAX_REGISTER_ATTEMPTS = 20
"""Compare-and-swap attempts of one registration before giving up (each lost one means another
writer registered this video in between)."""


def registry_objects(registry: Registry) -> TextObjects:
    """The registry's ``TextObjects`` (keys ``<video_id>.json``)."""
    return text_objects(registry.specs if isinstance(registry, Workspace) else registry)


def _key(video_id: str) -> str:
    return f"{video_id}.json"


def _parse(text: str) -> Submission | None:
    try:
        return Submission.model_validate_json(text)
    except ValueError:
        return None


def submit_spec(registry: Registry, spec: VideoSpec, *, source: str, provider: str | None = None,
                models: dict[str, str] | None = None, defaults: ProviderDefaults | None = None,
                registered_by: str | None = None) -> tuple[Submission, bool]:
    """Register ``spec`` in ``registry`` with the provider and models ``resolve_provider`` picks
    from the explicit ``provider`` / ``models``, the spec and the deployment ``defaults``. Returns
    (submission, changed).

    ``changed`` is False when the identical spec, provider and models were already registered
    (the old entry is kept untouched). A caller that knows no deployment (``models`` and
    ``defaults`` both None) and re-submitting the registered spec with its registered provider keeps
    the registered models. ``registered_by``: the identity of a ``pipeline render`` process that
    renders this registration itself (recorded when it changes the entry). An unreadable entry is
    replaced. The entry is read and replaced by compare-and-swap (``TextObjects.write_if``: a file lock locally, a conditional PUT on S3), so of
    several processes or machines registering the same spec at once exactly one sees ``changed``.
    Raises ValueError for an unknown provider, SpecError for a model choice that is not valid (see
    ``resolve_provider``), RuntimeError if other writers kept replacing the entry
    (MAX_REGISTER_ATTEMPTS times), and the store's errors (OSError, S3 client errors).
    """
    name, chosen = resolve_provider(spec, provider=provider, models=models, defaults=defaults, source=source)
    objects, key = registry_objects(registry), _key(spec.video_id)
    dumped = spec.model_dump(mode="json", exclude_none=True)
    sha = registration_sha256(spec, name, chosen)
    for _ in range(MAX_REGISTER_ATTEMPTS):
        found = objects.read_versioned(key)
        current, version = (_parse(found[0]), found[1]) if found is not None else (None, None)
        if current is not None:
            if models is None and defaults is None and current.provider == name and current.spec == dumped:
                return current, False
            if current.spec_sha256 == sha and current.provider == name and current.models == chosen:
                return current, False
        submission = Submission(video_id=spec.video_id, provider=name, models=chosen, source=source, spec=dumped,
                                spec_sha256=sha, submitted_at=utc_now(), registered_by=registered_by)
        if objects.write_if(key, submission.model_dump_json(indent=2), version):
            return submission, True
    raise RuntimeError(f"could not register {spec.video_id} at {objects.location(key)}: other writers replaced it "
                       f"{MAX_REGISTER_ATTEMPTS} times in a row; submit it again")


def submit_file(registry: Registry, path: str | Path, *, provider: str | None = None,
                models: dict[str, str] | None = None,
                defaults: ProviderDefaults | None = None) -> tuple[Submission, bool]:
    """Load, validate and register a spec file (``submit_spec``). Raises SpecError / ValueError."""
    spec = load_spec(path)
    return submit_spec(registry, spec, source=str(path), provider=provider, models=models, defaults=defaults)


def load_submission(registry: Registry, video_id: str) -> Submission:
    """The registered submission of ``video_id``. Raises UnknownVideoError if there is none,
    pydantic's ValidationError (a ValueError) for an unreadable entry."""
    objects = registry_objects(registry)
    text = objects.read(_key(video_id))
    if text is None:
        raise UnknownVideoError(
            f"no spec is registered for video {video_id!r} (expected {objects.location(_key(video_id))}); submit "
            f"one with `pipeline submit SPEC` or `pipeline render SPEC`")
    return Submission.model_validate_json(text)


_LISTED: dict[tuple[str, str], tuple[str, Submission]] = {}
"""``{(registry, name): (version, submission)}``: entries parsed before, reused while the listing
shows the same version (S3: the ETag), so a sensor tick costs one LIST plus a GET per changed entry."""
_LISTED_LOCK = threading.Lock()


def list_submissions(registry: Registry) -> list[Submission]:
    """Every registered submission, by video_id. Unreadable entries are skipped (and reported by
    ``load_submission`` when that video is materialized)."""
    objects = registry_objects(registry)
    out = []
    for name, listed_version in objects.listing().items():
        if not name.endswith(".json"):
            continue
        cache_key = (str(objects), name)
        with _LISTED_LOCK:
            cached = _LISTED.get(cache_key)
        if listed_version is not None and cached is not None and cached[0] == listed_version:
            out.append(cached[1])
            continue
        found = objects.read_versioned(name)
        submission = _parse(found[0]) if found is not None else None
        if submission is None:
            continue
        if listed_version is not None:
            with _LISTED_LOCK:
                _LISTED[cache_key] = (found[1], submission)
        out.append(submission)
    return out
