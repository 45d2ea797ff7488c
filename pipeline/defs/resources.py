"""Resources: where the pipeline keeps its data, and which providers it generates with."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from pipeline.generation import Generator
from pipeline.providers import Provider, get_provider
from pipeline.store import Workspace


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
    def manifests_dir(self) -> Path:
        """Where the manifest IO manager keeps asset outputs."""
        return self.workspace.manifests

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = Generator(self.workspace)
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
