"""Generation providers, looked up by name: ``local`` (offline, free; the default) and ``replicate``."""

from __future__ import annotations

from pipeline.providers.base import Provider, ProviderError

PROVIDERS = ("local", "replicate")


def get_provider(name: str, **options) -> Provider:
    """The provider called ``name``. Raises ValueError for an unknown name."""
    if name == "local":
        from pipeline.providers.local import LocalProvider

        return LocalProvider(**options)
    if name == "replicate":
        from pipeline.providers.replicate import ReplicateProvider

        return ReplicateProvider(**options)
    raise ValueError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}")


__all__ = ["PROVIDERS", "Provider", "ProviderError", "get_provider"]
