"""The manifest IO manager: asset outputs are pydantic manifests stored as JSON files.

Layout: ``<base_dir>/<asset>/<video>.json`` for video assets and
``<base_dir>/<asset>/<video>/<segment>.json`` for per-segment assets. Files are written atomically.
Loading a partition that was never materialized gives ``None`` (the asset decides whether that is
a phantom segment or an error); an input with ``fan_in`` metadata loads every upstream partition
that exists as ``{segment: manifest}``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import BaseModel

from pipeline.defs.partitions import split_key
from pipeline.manifests import dump_manifest, load_manifest
from pipeline.store import atomic_write_text


def manifest_path(base_dir: str | Path, asset: str | dg.AssetKey, partition_key: str | None) -> Path:
    """Where the manifest of ``asset`` at ``partition_key`` lives under ``base_dir``."""
    asset_key = asset if isinstance(asset, dg.AssetKey) else dg.AssetKey(asset)
    root = Path(base_dir).joinpath(*asset_key.path)
    if partition_key is None:
        return root / "_unpartitioned.json"
    if "|" in str(partition_key):
        video, segment = split_key(partition_key)
        return root / video / f"{segment}.json"
    return root / f"{partition_key}.json"


def read_manifest(base_dir: str | Path, asset: str, partition_key: str | None) -> BaseModel | None:
    """The stored manifest of ``asset`` at ``partition_key``, or None if it was never materialized."""
    path = manifest_path(base_dir, asset, partition_key)
    try:
        return load_manifest(path.read_bytes())
    except FileNotFoundError:
        return None


class ManifestIOManager(dg.ConfigurableIOManager):
    """Stores manifests as JSON under ``base_dir`` (see module doc)."""

    base_dir: str

    def _path(self, asset_key: dg.AssetKey, partition_key: str | None) -> Path:
        return manifest_path(self.base_dir, asset_key, partition_key)

    def handle_output(self, context: dg.OutputContext, obj: BaseModel | None) -> None:
        if obj is None:
            return
        key = context.partition_key if context.has_partition_key else None
        path = self._path(context.asset_key, key)
        atomic_write_text(path, dump_manifest(obj))
        context.add_output_metadata({"manifest": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext):
        asset_key = context.asset_key
        if context.definition_metadata.get("fan_in"):
            loaded = {}
            for key in context.asset_partition_keys:
                path = self._path(asset_key, key)
                if path.exists():
                    loaded[split_key(key)[1]] = load_manifest(path.read_bytes())
            return loaded
        key = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(asset_key, key)
        if not path.exists():
            return None
        return load_manifest(path.read_bytes())
