"""What the fake server says about its models: ``GET /v1/models/{owner}/{name}`` (with
``latest_version`` and ``is_official``), ``.../versions`` and ``.../versions/{id}``, each version with
a Cog ``openapi_schema`` whose ``Input`` lists the fields the fake model knows (required ones marked)."""

from __future__ import annotations

import hashlib
from typing import Any

from pipeline_tests.fake_replicate.state import FAKE_MODELS, is_official

VERSION_CREATED_AT = "2024-01-01T00:00:00.000000Z"


def versions(ref: str) -> list[str]:
    """The version ids of a fake model, newest first: its pinned ones, or for an official model one
    64-hex id derived from its name (official models are run by name, not by version)."""
    return list(FAKE_MODELS[ref].get("versions") or [hashlib.sha256(f"version of {ref}".encode()).hexdigest()])


def input_schema(ref: str) -> dict[str, Any]:
    """The Cog ``Input`` schema of a fake model: its required fields and the optional ones the fake
    reads (image, frames, fps, resolution, duration, output format, seed)."""
    spec = FAKE_MODELS[ref]
    props: dict[str, Any] = {k: {"type": "string", "title": k.replace("_", " ").title()} for k in spec["required"]}
    for key in ("frames", "fps", "duration"):
        if key in spec:
            props[spec[key][0]] = {"type": "integer", "default": spec[key][1]}
    if "resolution" in spec:
        props[spec["resolution"][0]] = {"type": "string", "default": spec["resolution"][1]}
    if spec.get("format_field"):
        props[spec["format_field"]] = {"type": "string", "default": spec["format"]}
    if spec["kind"] == "speech":
        props.update({"voice": {"type": "string", "default": "af_bella"}, "speed": {"type": "number", "default": 1}})
    if spec["kind"] == "image":
        props.update({"aspect_ratio": {"type": "string", "default": "1:1"},
                      "output_format": {"type": "string", "default": spec.get("format", "webp")}})
    if "references" in spec:
        props[spec["references"][0]] = {"type": "array", "items": {"type": "string", "format": "uri"},
                                        "maxItems": spec["references"][1]}
    props.setdefault("seed", {"type": "integer"})
    return {"type": "object", "title": "Input", "required": list(spec["required"]), "properties": props}


def version_json(ref: str, version: str) -> dict[str, Any]:
    """A model version's JSON (``schemas_version_response``)."""
    return {"id": version, "created_at": VERSION_CREATED_AT, "cog_version": "0.9.4",
            "openapi_schema": {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"},
                               "components": {"schemas": {"Input": input_schema(ref), "Output": {}}}}}


def model_json(ref: str) -> dict[str, Any]:
    """``GET /v1/models/{owner}/{name}`` of a fake model (``schemas_model_response``)."""
    owner, name = ref.split("/", 1)
    return {"url": f"https://replicate.com/{ref}", "owner": owner, "name": name, "description": f"Fake {ref}",
            "visibility": "public", "github_url": None, "paper_url": None, "license_url": None, "run_count": 1000,
            "cover_image_url": None, "default_example": None, "is_official": is_official(ref),
            "latest_version": version_json(ref, versions(ref)[0])}
