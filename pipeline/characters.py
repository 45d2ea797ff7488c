"""Consistent characters: one reference image per character, and storyboards generated from them.

A spec's ``characters`` (``pipeline.spec_characters``) become the plan's ``PlannedCharacter``s.
The video-level ``characters`` asset makes one reference image per character (``render_references``):

- with a user reference image: that image, ingested into the media store as it is (converted to an
  RGB PNG of at most REFERENCE_MAX_SIDE pixels a side; free, provider "spec");
- without: generated from the description with the provider's image model (a square
  REFERENCE_SIZE image; prompt ``reference_prompt``: name, description, style; the video's seed).

Each is a cached generation (``pipeline.generation``), so its cache key is its identity:
``reference_request`` builds it from the description, the style, the image model, the seed and
the user image's sha256. A beat naming characters (``PlannedBeat.characters``) records
``{name: reference cache key}`` in its ``BeatManifest.characters`` (and so in its fingerprint),
gets the descriptions in its image prompt (``storyboard_prompt``), and its storyboard request
carries each reference's sha256 as an input ``character:<name>``: so every storyboard of such a
beat was generated from those references (its cache key says so), and changing one character
changes exactly the cache keys of the beats that name it; the others stay cache hits (free).

``beat_references`` gives a storyboard its references: from the ``characters`` manifest when it
holds the expected key, else generated on the spot through the same cached request (a segment run
that starts before its video's ``characters`` step finished, e.g. from the fan-out sensor, then
makes or waits for the same output; the ledger makes a paid one be paid once). Nothing here
imports Dagster.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from PIL import Image

from pipeline.generation import GenerationRequest, Generator, ProviderResult
from pipeline.manifests import (
    BeatManifest,
    CharacterReference,
    CharactersManifest,
    MediaManifest,
    PlannedCharacter,
    VideoPlan,
)
from pipeline.progress import Progress, ProgressCallback, report
from pipeline.providers import Provider, ProviderError, local_characters
from pipeline.spec import VideoSpec
from pipeline.spec_characters import ReferenceImage

if TYPE_CHECKING:
    from pipeline.submissions import Registry

SPEC_PROVIDER = "spec"
"""Provider name recorded for media taken from the spec itself (a user's reference image; free)."""
USER_REFERENCE_MODEL = "user-reference-v1"
"""The ingestion of a user's reference image: decoded, converted to RGB PNG, at most REFERENCE_MAX_SIDE a side."""
REFERENCE_SIZE = 512
"""Side of a generated character reference image, pixels (square)."""
REFERENCE_MAX_SIDE = 1024
"""Longest side of an ingested user reference image, pixels."""
REFERENCE_ROLE = local_characters.REFERENCE_ROLE
"""``params["role"]`` of a reference image request (the local provider draws a character sheet)."""

ImageBytes = Callable[[str], bytes]
"""Gives the bytes of the spec's reference image with this sha256 (from the registered spec)."""


class CharacterError(ProviderError):
    """A character's reference cannot be made from what the spec holds (permanent: not retryable)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


def plan_characters(spec: VideoSpec) -> dict[str, PlannedCharacter]:
    """The spec's characters as the plan carries them (description, reference image sha256 and file)."""
    out = {}
    for name, char in (spec.characters or {}).items():
        ref = char.reference_image
        out[name] = PlannedCharacter(description=char.description,
                                     reference_sha256=ref.sha256 if isinstance(ref, ReferenceImage) else None,
                                     reference_file=ref.file if isinstance(ref, ReferenceImage) else ref)
    return out


def style_text(style: str | None) -> str:
    """The style sentence appended to prompts: " Style: <style>." or "" for a spec without a style."""
    return f" Style: {style}." if style else ""


def reference_prompt(name: str, description: str, style: str | None) -> str:
    """The prompt a character's reference image is generated from."""
    return (f"Character reference sheet of {name}: {description}. A single full-body figure facing the viewer, "
            f"neutral pose, plain light background, no text.{style_text(style)}")


def storyboard_prompt(prompt: str, style: str | None, names: list[str],
                      characters: dict[str, PlannedCharacter]) -> str:
    """A storyboard image prompt: the beat's prompt, the characters it names with their descriptions,
    numbered in the order of the reference images sent with it, and the style (none without one).
    Without characters it is the prompt every beat had before."""
    if not names:
        return f"{prompt}.{style_text(style)}"
    cast = "; ".join(f"image {i} is {n}: {characters[n].description}" for i, n in enumerate(names, start=1))
    return f"{prompt}. Characters, as they look in the reference images ({cast}).{style_text(style)}"


def reference_request(plan: VideoPlan, name: str, provider: Provider) -> GenerationRequest:
    """The cached request of ``name``'s reference image (see the module doc). Raises
    CharacterError when the spec names a reference image path that was never read (a spec that
    was not loaded from its file)."""
    char = plan.characters[name]
    labels = {"video_id": plan.video_id, "stage": "characters", "character": name}
    if char.reference_file is not None and char.reference_sha256 is None:
        raise CharacterError(f"characters.{name}.reference_image: the path {char.reference_file!r} was never read "
                             "(the spec was registered without its file's folder); submit the spec file with "
                             "`pipeline submit` / `pipeline render`, which carry the image in the spec")
    if char.reference_sha256 is not None:
        return GenerationRequest(media_type="image", provider=SPEC_PROVIDER, model=USER_REFERENCE_MODEL,
                                 params={"max_side": REFERENCE_MAX_SIDE}, inputs={"user_image": char.reference_sha256},
                                 labels=labels)
    return GenerationRequest(media_type="image", provider=provider.name, model=provider.image_model,
                             prompt=reference_prompt(name, char.description, plan.style), seed=plan.seed,
                             params={"width": REFERENCE_SIZE, "height": REFERENCE_SIZE, "role": REFERENCE_ROLE},
                             labels=labels, max_cost_usd=plan.max_cost_usd)


def beat_reference_keys(plan: VideoPlan, names: list[str], provider: Provider) -> dict[str, str]:
    """``{name: reference cache key}`` for the characters a beat names."""
    return {n: reference_request(plan, n, provider).cache_key() for n in names}


def _ingest(data: bytes, scratch: Path) -> ProviderResult:
    out = scratch / "reference.png"
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    rgb.thumbnail((REFERENCE_MAX_SIDE, REFERENCE_MAX_SIDE), Image.Resampling.LANCZOS)
    rgb.save(out, "PNG")
    return ProviderResult(path=out, model=USER_REFERENCE_MODEL)


def ensure_reference(plan: VideoPlan, name: str, provider: Provider, generator: Generator,
                     image_bytes: ImageBytes | None) -> CharacterReference:
    """``name``'s reference image: a cache hit, or made now (generated, or the user image ingested
    through ``image_bytes``). Raises CharacterError, ProviderError, media.MediaError."""
    request = reference_request(plan, name, provider)
    char = plan.characters[name]
    if request.provider == SPEC_PROVIDER:
        sha = request.inputs["user_image"]

        def call(scratch: Path) -> ProviderResult:
            if image_bytes is None:
                raise CharacterError(f"characters.{name}.reference_image: the image {sha[:12]} is not at hand")
            return _ingest(image_bytes(sha), scratch)

        image = generator.generate(request, call)
        return CharacterReference(name=name, description=char.description, source="user", image=image)
    image = generator.generate(request, lambda scratch: provider.render_image(request, scratch))
    return CharacterReference(name=name, description=char.description, source="generated", image=image)


def render_references(plan: VideoPlan, provider: Provider, generator: Generator, image_bytes: ImageBytes | None,
                      progress: ProgressCallback | None = None) -> CharactersManifest:
    """One reference image per character of ``plan`` (spec order); ``progress`` gets a started and a
    done report per character. Raises CharacterError, ProviderError, media.MediaError."""
    refs = {}
    for i, name in enumerate(plan.characters, start=1):
        item = dict(stage="characters", kind="character reference", index=i, count=len(plan.characters))
        report(progress, Progress("started", **item, detail=name))
        started = time.monotonic()
        refs[name] = ensure_reference(plan, name, provider, generator, image_bytes)
        report(progress, Progress("done", **item, medium=refs[name].image, elapsed_s=time.monotonic() - started))
    return CharactersManifest(video_id=plan.video_id, spec_sha256=plan.spec_sha256, references=refs)


def beat_references(plan: VideoPlan, beat: BeatManifest, manifest: CharactersManifest | None, provider: Provider,
                    generator: Generator, image_bytes: ImageBytes | None) -> dict[str, MediaManifest]:
    """The reference images of the characters ``beat`` names, ``{name: medium}``: from ``manifest``
    (the ``characters`` asset's) when it holds the key the beat expects, else made now through the
    same cached request. Raises CharacterError when the beat names a character the plan does not
    have, and what ``ensure_reference`` raises."""
    out = {}
    for name, key in beat.characters.items():
        if name not in plan.characters:
            raise CharacterError(f"beat {beat.segment} names character {name!r}, which the plan does not have")
        have = manifest.references.get(name) if manifest is not None else None
        if have is not None and have.image.cache_key == key:
            out[name] = have.image
            continue
        made = ensure_reference(plan, name, provider, generator, image_bytes)
        if made.image.cache_key != key:
            raise ProviderError(f"character {name!r}: the reference made has cache key {made.image.cache_key[:12]}, "
                                f"the beat expects {key[:12]} (the plan changed during the run); run it again")
        out[name] = made.image
    return out


def submission_image_bytes(spec: VideoSpec) -> ImageBytes:
    """``image_bytes`` over a registered spec: the bytes of its reference image with that sha256.
    Raises CharacterError when the spec holds no such image (it was changed since the plan)."""
    images = {c.reference_image.sha256: c.reference_image for c in (spec.characters or {}).values()
              if isinstance(c.reference_image, ReferenceImage)}

    def get(sha: str) -> bytes:
        if sha not in images:
            raise CharacterError(f"the registered spec has no reference image {sha[:12]} any more (it changed "
                                 "since this video was planned); plan it again")
        return images[sha].image_bytes()

    return get


def registered_image_bytes(registry: Registry, video_id: str) -> ImageBytes:
    """``ImageBytes`` over the video's registered spec in ``registry`` (``PipelineResource.specs``:
    the data directory's ``specs/`` or S3; a ``Workspace`` works too; ``pipeline.submissions``), read
    only when a user image is needed. Raises (when called) UnknownVideoError, SpecError, CharacterError."""
    loaded: list[ImageBytes] = []

    def get(sha: str) -> bytes:
        if not loaded:
            from pipeline.submissions import load_submission

            loaded.append(submission_image_bytes(load_submission(registry, video_id).video_spec()))
        return loaded[0](sha)

    return get
