"""Resources: where the pipeline keeps its data, and which providers it generates with.

One resource, ``PipelineResource``, with typed sections: ``ReplicateSettings`` (token, API root,
output hosts, model defaults, polling, lease), ``LocalSettings`` (the fault-injection drill) and
``S3Settings`` (media store, cache index, manifests, specs, published videos, inbox).
``pipeline.definitions`` fills them per deployment, reading the environment there and only there
(the token and other variables as ``dg.EnvVar``, so run config and the UI show the variable's name,
never its value).

The sections are ``dg.Config`` objects, not nested ``dg.ConfigurableResource``s, on purpose: a
resource with a nested resource becomes a context-manager resource in Dagster, so every
``dg.build_sensor_context(resources=...)`` would have to be opened with ``with`` (the sensor and
inbox tests build them without), and the CLI's out-of-Dagster uses of ``defs.resources["pipeline"]``
(workspace, manifests, status) would see un-initialized nested resources. Config sections keep one
plain resource with the same typing and EnvVar support.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr, field_validator

if TYPE_CHECKING:
    from dagster_aws.s3 import S3Resource

    from pipeline.inbox import InboxSource

from pipeline.generation import Generator
from pipeline.ledger import DEFAULT_LEASE_S
from pipeline.manifests import FinalManifest
from pipeline.providers import PROVIDERS, Provider, get_provider
from pipeline.store import GenerationCache, TextObjects, Workspace
from pipeline.submissions import ProviderDefaults, Submission, submit_spec


CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
              "AWS_ACCESS_KEY_ID", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
"""Environment variables boto3 reads when it makes a client (not the secret: the key id names it)."""


class S3Settings(dg.Config):
    """Where and how to reach the S3 side of the pipeline (media store, cache index, manifests,
    spec registry, published videos, inbox).

    ``bucket`` (required) and ``prefix`` ("" for the bucket root): objects live under
    ``s3://<bucket>/<prefix>/{media,cache,manifests,specs,videos,inbox}/``. ``endpoint_url``,
    ``region_name``, ``profile_name``: optional overrides for dagster-aws ``S3Resource``, which makes
    the clients; left None, boto3 reads its environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_PROFILE,
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, instance roles, ...).

    A plain config object rather than a nested S3Resource on purpose: a resource with a nested
    resource is a context-manager resource in Dagster, which would change how PipelineResource
    must be built (e.g. ``build_sensor_context`` only inside ``with``) even with S3 off.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None
    profile_name: str | None = None

    def s3_resource(self) -> S3Resource:
        """The dagster-aws S3Resource for these settings (its ``get_client`` makes a new client).
        dagster-aws is imported here, not with the module: it pulls in boto3 and more of Dagster,
        0.4 s of CPU in every process that loads the definitions, S3 or not (measured 2026-11-22)."""
        from dagster_aws.s3 import S3Resource

        return S3Resource(endpoint_url=self.endpoint_url, region_name=self.region_name,
                          profile_name=self.profile_name)

    def location(self):
        """A ``pipeline.s3_store.S3Location`` for bucket + prefix. Its clients are made lazily, one
        per process for all locations with the same settings (boto3 clients are not fork-safe,
        and making one takes 0.3 s or more), by ``S3Resource.get_client``. The settings include
        the boto3 environment the client would read (CLIENT_ENV), so a process whose environment
        changes (another endpoint) gets a client for the new one."""
        from pipeline.s3_store import S3Location, shared_client_provider

        key = json.dumps([self.endpoint_url, self.region_name, self.profile_name,
                          *(os.environ.get(name) for name in CLIENT_ENV)])
        return S3Location(self.bucket, self.prefix, shared_client_provider(key, self.s3_resource().get_client))


def configured(value):
    """``value`` with a ``dg.EnvVar`` read (None if the variable is unset). Inside a Dagster run,
    sensor or schedule the resource's EnvVars are already resolved; outside one (the CLI reading
    ``defs.resources["pipeline"]``) this resolves them, so the value is never the variable's name."""
    if isinstance(value, dg.EnvVar):
        return value.get_value()
    return value


class ReplicateSettings(dg.Config):
    """How the ``replicate`` provider reaches Replicate (``pipeline.providers.replicate``).

    ``api_token``: set it from ``dg.EnvVar("REPLICATE_API_TOKEN")`` (``pipeline.definitions``
    does), never a literal, so it never appears in run config; repr and str hide it.
    ``base_url``: the API root (default https://api.replicate.com; tests point it at a loopback
    fake). ``output_hosts``: hosts (https) or exact origins (http://127.0.0.1:PORT) outputs may be
    downloaded from; default Replicate's delivery hosts. ``image_model`` / ``video_model`` /
    ``music_model``: the deployment's default registry refs (pipeline/models.py) for specs that
    choose none; None: the registry defaults. ``poll_interval_s``: first polling interval,
    seconds; ``max_poll_interval_s``: the interval's cap, seconds (2 s: a 45 s chunk is seen done about
    1 s late on average instead of 5 s at a 10 s cap; reads are not billed; BENCHMARKS.md section 1).
    ``sync_wait_s``: sync mode, whole seconds (``Prefer: wait=n``, 0 off, at most 60): a create is
    held until its prediction ends or n seconds pass, so one that ends sooner is seen at once.
    ``lease_s``: ledger ownership lease, seconds (renewed every third of it).
    ``deadline_s``: polling deadline per model kind, seconds (``{"video": 900}``; kinds image,
    video, audio, speech, text; the others keep the provider's defaults: image 600, video 1800, audio 1200,
    speech 600, text 600). A prediction still running then is canceled, and every create sends it as
    ``Cancel-After`` (at least 5 s, the API's minimum) so Replicate cancels it by itself if the
    process dies. ``max_reads_per_minute``: the reads (polls, lookups, file checks) one process may
    send a minute, default 1500: Replicate allows 3000 a minute per account for everything but
    creates, and several processes (concurrent renders, the daemon's run workers) share the
    account, each with its own budget; lower it when more than two poll at once. One process
    batches its polls (``pipeline.providers.replicate.poller``), so this bounds its reads whatever
    the number of predictions in flight.
    """

    api_token: str | None = None
    base_url: str | None = None
    output_hosts: list[str] | None = None
    image_model: str | None = None
    video_model: str | None = None
    music_model: str | None = None
    poll_interval_s: float = 1.0
    max_poll_interval_s: float = 2.0
    sync_wait_s: int = 60
    lease_s: float = DEFAULT_LEASE_S
    deadline_s: dict[str, float] | None = None
    max_reads_per_minute: float = 1500.0

    @field_validator("deadline_s")
    @classmethod
    def _known_kinds(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        kinds = ("image", "video", "audio", "speech", "text")
        for kind, seconds in (value or {}).items():
            if kind not in kinds:
                raise ValueError(f"deadline_s: unknown kind {kind!r}; kinds are {', '.join(kinds)}")
            if not seconds > 0:
                raise ValueError(f"deadline_s.{kind}: a deadline is positive seconds, not {seconds}")
        return value

    @field_validator("max_reads_per_minute")
    @classmethod
    def _positive_budget(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"max_reads_per_minute must be positive, not {value}")
        return value

    def __repr_args__(self):
        for name, value in super().__repr_args__():
            yield (name, "<set>" if name == "api_token" and value else value)

    def model_defaults(self) -> dict[str, str]:
        """``{kind: ref}`` of the model defaults that are set (EnvVars read)."""
        refs = {kind: configured(getattr(self, f"{kind}_model")) for kind in ("image", "video", "music")}
        return {kind: ref for kind, ref in refs.items() if ref}


class LocalSettings(dg.Config):
    """The ``local`` provider. ``faults_file``: the fault-injection drill, a JSON file
    ``{"fail": ["<video_id>/<segment>", ...], "retryable": false}`` (``pipeline.definitions`` sets
    it from ``dg.EnvVar("PIPELINE_LOCAL_FAULTS")`` when that is set); None: no faults."""

    faults_file: str | None = None


class PipelineResource(dg.ConfigurableResource):
    """The pipeline's data directory and provider settings.

    ``data_dir``: root of media store, cache, manifests, spec registry and logs (see data/README.md).
    ``inbox_dir``: where the inbox sensor looks for spec files: a folder, or an ``s3://bucket/prefix``
    inbox prefix (default: ``<prefix>/inbox`` in the S3 bucket when ``s3`` is set, else ``<data_dir>/inbox``).
    ``default_provider``: the deployment's provider for specs that name none ("local" or
    "replicate"; an explicit ``--provider`` and a spec's ``provider`` win, see
    ``pipeline.submissions``). ``replicate``: ``ReplicateSettings``. ``local``: ``LocalSettings``.
    ``s3``: keep media, the generation cache index and manifests in S3 (``S3Settings``; give the
    IO manager the same settings); the spec registry (``specs``), the published videos and the
    inbox then live there too. None (default): everything is local under ``data_dir``. Logs,
    locks and the media read-through cache stay local either way.
    ``ledger_url``: the prediction ledger's database, a SQLAlchemy URL (PostgreSQL in a cluster,
    ``postgresql+psycopg2://user:password@host/db``, so every machine pays once per cache key and
    shares the budgets: ``pipeline.ledger``); None (default): ``<data_dir>/ledger.sqlite``.
    """

    data_dir: str = "data"
    inbox_dir: str | None = None
    default_provider: str = "local"
    replicate: ReplicateSettings = ReplicateSettings()
    local: LocalSettings = LocalSettings()
    s3: S3Settings | None = None
    ledger_url: str | None = None

    _s3_location: object = PrivateAttr(default=None)
    _manifests: TextObjects | None = PrivateAttr(default=None)
    _specs: TextObjects | None = PrivateAttr(default=None)
    _generator: Generator | None = PrivateAttr(default=None)
    _providers: dict = PrivateAttr(default_factory=dict)

    @property
    def workspace(self) -> Workspace:
        return Workspace.at(self.data_dir)

    @property
    def ledger_target(self) -> str | None:
        """``ledger_url`` with its EnvVar read (``configured``), or None: the data directory's SQLite ledger."""
        return configured(self.ledger_url) or None

    @property
    def inbox_path(self) -> Path:
        """The local inbox folder: ``inbox_dir``, default ``<data_dir>/inbox`` (see ``inbox`` for
        where the sensor looks when S3 is configured)."""
        return Path(self.inbox_dir) if self.inbox_dir and not self.inbox_dir.startswith("s3://") \
            else self.workspace.root / "inbox"

    @property
    def inbox(self) -> "InboxSource":
        """Where the inbox sensor looks for spec files and ``pipeline submit`` puts them
        (``pipeline.inbox.InboxSource``): ``inbox_dir`` if set (a folder, or an ``s3://`` inbox
        prefix), else the S3 prefix ``<prefix>/inbox`` when S3 is configured, else ``<data_dir>/inbox``."""
        from pipeline.inbox import LocalInbox, inbox_source

        if self.inbox_dir:
            return inbox_source(self.inbox_dir)
        if self.s3_location is not None:
            from pipeline.inbox_s3 import S3Inbox

            return S3Inbox(self.s3_location.child("inbox"))
        return LocalInbox(self.inbox_path)

    @property
    def specs(self) -> Path | TextObjects:
        """The spec registry (``pipeline.submissions``), like ``manifests_dir``: ``<data_dir>/specs``
        (a Path), or the S3 text objects under ``<prefix>/specs`` when S3 is configured, so every
        machine (sensor, CLI, run worker) reads and writes the same registry."""
        if self.s3_location is None:
            return self.workspace.specs
        if self._specs is None:
            self._specs = self.s3_location.child("specs").text_objects()
        return self._specs

    @property
    def s3_location(self):
        """The configured ``pipeline.s3_store.S3Location`` (bucket + prefix), or None (local)."""
        if self._s3_location is None and self.s3 is not None:
            self._s3_location = self.s3.location()
        return self._s3_location

    @property
    def manifests_dir(self) -> Path | TextObjects:
        """Where the manifest IO manager keeps asset outputs: ``<data_dir>/manifests`` (a Path), or
        the S3 text objects under ``<prefix>/manifests`` when S3 is configured. Either one is a
        valid ``base`` for ``pipeline.defs.io_manager.read_manifest``."""
        if self.s3_location is None:
            return self.workspace.manifests
        if self._manifests is None:
            self._manifests = self.s3_location.child("manifests").text_objects()
        return self._manifests

    @property
    def generator(self) -> Generator:
        """The generator over the configured media store and cache (local, or S3 with a local
        read-through cache in ``<data_dir>/s3cache``)."""
        if self._generator is None:
            location = self.s3_location
            if location is None:
                self._generator = Generator(self.workspace)
            else:
                from pipeline.s3_store import S3MediaStore

                store = S3MediaStore(location, self.workspace.s3cache)
                cache = GenerationCache(location.child("cache").text_objects(), store)
                self._generator = Generator(self.workspace, store, cache)
        return self._generator

    def provider_defaults(self) -> ProviderDefaults:
        """The deployment's provider and replicate model defaults, for ``pipeline.submissions``.
        Raises ValueError if ``default_provider`` is not a provider."""
        name = configured(self.default_provider) or "local"
        if name not in PROVIDERS:
            raise ValueError(f"unknown default provider {name!r} (PipelineResource.default_provider, "
                             f"$PIPELINE_DEFAULT_PROVIDER); choose one of {', '.join(PROVIDERS)}")
        sources = {kind: f"the deployment default {kind} model" for kind in ("image", "video", "music")}
        for kind in sources:
            field = getattr(self.replicate, f"{kind}_model")
            if isinstance(field, dg.EnvVar):
                sources[kind] = f"${field.env_var_name} (the deployment default)"
        if isinstance(self.default_provider, dg.EnvVar):
            sources["provider"] = f"${self.default_provider.env_var_name}"
        return ProviderDefaults(provider=name, models=self.replicate.model_defaults(), sources=sources)

    def submit_spec(self, spec, *, source: str, provider: str | None = None,
                    models: dict[str, str] | None = None,
                    registered_by: str | None = None) -> tuple[Submission, bool]:
        """Register ``spec`` in ``specs`` (``pipeline.submissions.submit_spec``) with this
        deployment's defaults: an explicit ``provider`` / ``models`` > the spec's >
        ``provider_defaults()``; ``registered_by``: a ``pipeline render`` process's identity.
        Returns (submission, changed); raises SpecError for a bad model choice, ValueError for an
        unknown provider."""
        return submit_spec(self.specs, spec, source=source, provider=provider, models=models,
                           defaults=self.provider_defaults(), registered_by=registered_by)

    def is_published(self, final: FinalManifest) -> bool:
        """Whether ``final``'s published video is there (``pipeline.publish.is_published``: the S3
        object with its size and sha256, or the local file), checkable from any machine."""
        from pipeline.publish import is_published

        return is_published(final, self.generator.store)

    def provider(self, name: str, models: dict[str, str] | None = None) -> Provider:
        """The provider called ``name``, with ``models`` (``{kind: registry ref}``, kinds image,
        video, music; e.g. ``Submission.models`` / ``VideoPlan.models``) over the deployment's
        model defaults; ``local`` has no models to choose. One instance per (name, models) and
        resource. Raises ValueError for an unknown provider or model."""
        models = {k: v for k, v in (models or {}).items() if v} if name == "replicate" else {}
        key = (name, tuple(sorted(models.items())))
        if key not in self._providers:
            if name == "replicate":
                settings = self.replicate
                chosen = {**settings.model_defaults(), **models}
                hosts = configured(settings.output_hosts)
                self._providers[key] = get_provider(
                    "replicate", api_token=configured(settings.api_token), base_url=configured(settings.base_url),
                    workspace=self.workspace, ledger_path=self.ledger_target,
                    allowed_hosts=list(hosts) if hosts else None,
                    poll_interval_s=settings.poll_interval_s,
                    max_poll_interval_s=settings.max_poll_interval_s, sync_wait_s=settings.sync_wait_s,
                    lease_s=settings.lease_s,
                    deadline_s=dict(settings.deadline_s) if settings.deadline_s else None,
                    max_reads_per_minute=settings.max_reads_per_minute,
                    **{f"{kind}_model": ref for kind, ref in chosen.items()})
            elif name == "local":
                self._providers[key] = get_provider("local", faults_file=configured(self.local.faults_file),
                                                   voices_dir=str(self.workspace.root / "voices"))
            else:
                self._providers[key] = get_provider(name)  # raises ValueError naming the providers
        return self._providers[key]
