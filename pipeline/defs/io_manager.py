"""The manifest IO manager: asset outputs are pydantic manifests stored as JSON text objects.

Layout: ``<base>/<asset>/<video>.json`` for video assets and ``<base>/<asset>/<video>/<segment>.json``
for per-segment assets, where ``<base>`` is a local directory (default ``<data>/manifests``) or,
when S3 is configured, ``s3://<bucket>/<prefix>/manifests``. Objects are written atomically (temp
file + rename locally, one PUT on S3). Loading a partition that was never materialized gives
``None`` (the asset decides whether that is a phantom segment or an error); an input with
``fan_in`` metadata loads every upstream partition that exists as ``{segment: manifest}``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import BaseModel, PrivateAttr

from pipeline.defs.partitions import split_key
from pipeline.defs.resources import S3Settings
from pipeline.manifests import dump_manifest, load_manifest
from pipeline.store import TextObjects, text_objects


def manifest_key(asset: str | dg.AssetKey, partition_key: str | None) -> str:
    """The relative key ("/"-separated) of the manifest of ``asset`` at ``partition_key``."""
    asset_key = asset if isinstance(asset, dg.AssetKey) else dg.AssetKey(asset)
    root = "/".join(asset_key.path)
    if partition_key is None:
        return f"{root}/_unpartitioned.json"
    if "|" in str(partition_key):
        video, segment = split_key(partition_key)
        return f"{root}/{video}/{segment}.json"
    return f"{root}/{partition_key}.json"


def manifest_path(base_dir: str | Path, asset: str | dg.AssetKey, partition_key: str | None) -> Path:
    """Where the manifest of ``asset`` at ``partition_key`` lives under the local ``base_dir``."""
    return Path(base_dir) / manifest_key(asset, partition_key)


def read_manifest(base: str | Path | TextObjects, asset: str, partition_key: str | None) -> BaseModel | None:
    """The stored manifest of ``asset`` at ``partition_key``, or None if it was never materialized.

    ``base``: a local manifests directory, an ``s3://<bucket>/<prefix>/manifests`` string (boto3
    configured by the environment), or any TextObjects (``PipelineResource.manifests_dir`` is a
    directory or S3 text objects, following the configuration). S3 errors other than a missing
    object propagate; a malformed manifest raises pydantic's ValidationError.
    """
    text = text_objects(base).read(manifest_key(asset, partition_key))
    return None if text is None else load_manifest(text)


class ManifestIOManager(dg.ConfigurableIOManager):
    """Stores manifests as JSON (see module doc).

    ``base_dir``: the local manifests directory. ``s3``: keep them in S3 instead, under
    ``s3://<bucket>/<prefix>/manifests/`` (the same ``S3Settings`` as ``PipelineResource.s3``).
    """

    base_dir: str
    s3: S3Settings | None = None

    _objects: TextObjects | None = PrivateAttr(default=None)

    @property
    def objects(self) -> TextObjects:
        """Where the manifests are: local files under ``base_dir``, or S3 objects."""
        if self._objects is None:
            self._objects = (text_objects(self.base_dir) if self.s3 is None
                             else self.s3.location().child("manifests").text_objects())
        return self._objects

    def handle_output(self, context: dg.OutputContext, obj: BaseModel | None) -> None:
        if obj is None:
            return
        key = manifest_key(context.asset_key, context.partition_key if context.has_partition_key else None)
        self.objects.write(key, dump_manifest(obj))
        context.add_output_metadata({"manifest": dg.MetadataValue.path(self.objects.location(key))})

    def load_input(self, context: dg.InputContext):
        asset_key = context.asset_key
        if context.definition_metadata.get("fan_in"):
            loaded = {}
            for key in context.asset_partition_keys:
                text = self.objects.read(manifest_key(asset_key, key))
                if text is not None:
                    loaded[split_key(key)[1]] = load_manifest(text)
            return loaded
        key = context.asset_partition_key if context.has_asset_partitions else None
        text = self.objects.read(manifest_key(asset_key, key))
        return None if text is None else load_manifest(text)
