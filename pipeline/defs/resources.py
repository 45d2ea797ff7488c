"""Resources: where the pipeline keeps its data, and which providers it generates with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from pipeline.generation import Generator
from pipeline.providers import Provider, get_provider
from pipeline.store import GenerationCache, TextObjects, Workspace


class S3Settings(dg.Config):
    """Where and how to reach the S3 side of the pipeline (media store, cache index, manifests).

    ``bucket`` (required) and ``prefix`` ("" for the bucket root): objects live under
    ``s3://<bucket>/<prefix>/{media,cache,manifests}/``. ``endpoint_url``, ``region_name``,
    ``profile_name``: optional overrides for dagster-aws ``S3Resource``, which makes the clients;
    left None, boto3 reads its environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_PROFILE,
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
        """The dagster-aws S3Resource for these settings (its ``get_client`` makes a new client)."""
        return S3Resource(endpoint_url=self.endpoint_url, region_name=self.region_name,
                          profile_name=self.profile_name)

    def location(self):
        """A ``pipeline.s3_store.S3Location`` for bucket + prefix. Its clients are made lazily, one
        per process for all locations with the same settings (boto3 clients are not fork-safe,
        and making one takes 0.3 s or more), by ``S3Resource.get_client``."""
        from pipeline.s3_store import S3Location, shared_client_provider

        key = json.dumps([self.endpoint_url, self.region_name, self.profile_name])
        return S3Location(self.bucket, self.prefix, shared_client_provider(key, self.s3_resource().get_client))


class PipelineResource(dg.ConfigurableResource):
    """The pipeline's data directory and provider settings.

    ``data_dir``: root of media store, cache, manifests, spec registry and logs (see data/README.md).
    ``inbox_dir``: the folder the inbox sensor watches (default ``<data_dir>/inbox``).
    ``replicate_api_token``: the Replicate token; set it from ``dg.EnvVar("REPLICATE_API_TOKEN")``
    (``pipeline.definitions`` does) so it never appears in run config. ``replicate_base_url``:
    the API root (tests point it at a loopback fake). ``replicate_output_hosts``: hosts (https)
    or exact origins (http://127.0.0.1:PORT) outputs may be downloaded from; default Replicate's
    delivery hosts. ``replicate_poll_interval_s``: first polling interval, seconds.
    ``replicate_image_model`` / ``_video_model`` / ``_music_model``: registry refs (pipeline/models.py)
    replacing the defaults; the video model's chunk length drives the chunk plan.

    ``s3``: keep media, the generation cache index and manifests in S3 (``S3Settings``; give the
    IO manager the same settings). None (default): everything is local under ``data_dir``. Specs,
    the ledger, logs and the published ``videos/`` copies stay local either way.
    """

    data_dir: str = "data"
    inbox_dir: str | None = None
    replicate_api_token: str | None = None
    replicate_base_url: str | None = None
    replicate_output_hosts: list[str] | None = None
    replicate_poll_interval_s: float = 1.0
    replicate_image_model: str | None = None
    replicate_video_model: str | None = None
    replicate_music_model: str | None = None
    s3: S3Settings | None = None

    _s3_location: object = PrivateAttr(default=None)
    _manifests: TextObjects | None = PrivateAttr(default=None)
    _generator: Generator | None = PrivateAttr(default=None)
    _providers: dict = PrivateAttr(default_factory=dict)

    @property
    def workspace(self) -> Workspace:
        return Workspace.at(self.data_dir)

    @property
    def inbox_path(self) -> Path:
        """Where the inbox sensor looks for spec files: ``inbox_dir``, default ``<data_dir>/inbox``."""
        return Path(self.inbox_dir) if self.inbox_dir else self.workspace.root / "inbox"

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

    def provider(self, name: str) -> Provider:
        """The provider called ``name`` (one instance per resource). Raises ValueError if unknown."""
        if name not in self._providers:
            options: dict = {}
            if name == "replicate":
                options = {"workspace": self.workspace, "poll_interval_s": self.replicate_poll_interval_s}
                for kind in ("image", "video", "music"):
                    ref = getattr(self, f"replicate_{kind}_model")
                    if ref:
                        options[f"{kind}_model"] = ref
                if self.replicate_output_hosts:
                    options["allowed_hosts"] = list(self.replicate_output_hosts)
                if self.replicate_api_token:
                    options["api_token"] = self.replicate_api_token
                if self.replicate_base_url:
                    options["base_url"] = self.replicate_base_url
            self._providers[name] = get_provider(name, **options)
        return self._providers[name]


def default_data_dir() -> str:
    """$PIPELINE_DATA_DIR, else ``data`` (relative to the working directory)."""
    return os.environ.get("PIPELINE_DATA_DIR", "data")
