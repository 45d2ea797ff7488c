"""Generation providers, looked up by name: ``local`` (offline, free; the default) and ``replicate``."""

from __future__ import annotations

from pipeline.providers.base import Provider, ProviderError

PROVIDERS = ("local", "replicate")


def get_provider(name: str, **options) -> Provider:
    """The provider called ``name``, constructed with ``options`` (``LocalProvider`` /
    ``ReplicateProvider`` keyword arguments). Providers read no environment variable: every setting
    is an option, which ``PipelineResource.provider`` fills from the deployment's configuration.
    Raises ValueError for an unknown name (or an option value the provider refuses)."""
    if name == "local":
        from pipeline.providers.local import LocalProvider

        return LocalProvider(**options)
    if name == "replicate":
        from pipeline.providers.replicate import ReplicateProvider

        return ReplicateProvider(**options)
    raise ValueError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}")


__all__ = ["PROVIDERS", "Provider", "ProviderError", "get_provider"]
