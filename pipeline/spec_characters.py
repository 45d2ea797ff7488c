"""Characters in specs: ``characters: {name: {description, reference_image}}`` and which beats name them.

A spec may describe up to MAX_CHARACTERS recurring characters. Each has a ``description`` (text,
at most 1,000 characters) and optionally a ``reference_image``: a PNG or JPEG the character must
look like. In a spec file it is written as a path relative to the spec's own folder
(``reference_image: refs/hare.png``); ``load_spec`` reads it (``ingest_reference_images``) and
the registered spec carries the image itself (``ReferenceImage``: file name, media type, sha256
and base64 bytes), so a run on any machine, months later, uses exactly the image that was
submitted, and a changed image is a new version of the spec.

The rules for a reference image file are a spec file's (``pipeline.spec_file``): a regular file
(a FIFO, device, socket or directory is refused before a byte is read), inside the spec's folder
(no absolute path, no ``..``; a symbolic link is followed only to a file inside that folder; a
message never shows a link's target), at most MAX_REFERENCE_IMAGE_BYTES (2 MB), and it must
decode with Pillow as PNG or JPEG of at most MAX_REFERENCE_SIDE (4096) pixels a side and at
least 16.

**Which beats name a character.** A beat's optional ``characters: [names]`` list is exact: those
characters and no others (``[]``: none, even if the prompt mentions one). Without it, a beat
names every character whose name appears in its prompt as a whole word, case-insensitively
(``hare`` in "The Hare's nap" and "HARE", not in "hares" or "share"); names may have spaces
("Old Owl"). ``beat_characters`` decides; spec validation refuses an unknown name in a list.

Nothing here imports Dagster or a provider.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import warnings
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from pipeline.printable import clip, quoted
from pipeline.spec_file import SpecInputError, read_spec_bytes

MAX_CHARACTERS = 10
"""Most characters a spec may describe (also the most reference images one storyboard gets: the
reference model of the registry takes up to 10)."""
MAX_NAME_CHARS = 60
MAX_DESCRIPTION_CHARS = 1000
MAX_REFERENCE_IMAGE_BYTES = 2_000_000
"""Largest reference image file, in bytes (2 MB; the registered spec carries it base64-encoded)."""
MAX_REFERENCE_SIDE = 4096
"""Largest reference image width or height, pixels (decompression bombs are refused by this first)."""
MIN_REFERENCE_SIDE = 16
MAX_PATH_CHARS = 255

NAME_PATTERN = r"^[^\W\d_](?:[\w' -]*[\w'])?$"
"""A character name: starts with a letter, then letters, digits, '_', '-', "'" and single spaces."""

_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_reference_image(data: bytes) -> tuple[str, int, int]:
    """(media type, width, height) of reference image bytes. Raises ValueError saying what is
    wrong: too large (MAX_REFERENCE_IMAGE_BYTES), not PNG or JPEG, undecodable, a side over
    MAX_REFERENCE_SIDE or under MIN_REFERENCE_SIDE pixels. The size is read from the header before
    any pixel is decoded, so a decompression bomb never allocates."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_REFERENCE_IMAGE_BYTES:
        raise ValueError(f"is {len(data):,} bytes, larger than the {MAX_REFERENCE_IMAGE_BYTES:,}-byte limit "
                         "for a reference image")
    if not data:
        raise ValueError("is empty, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
                if fmt not in _FORMATS:
                    raise ValueError(f"is a {fmt or 'unknown'} image; a reference image must be PNG or JPEG")
                if max(w, h) > MAX_REFERENCE_SIDE or min(w, h) < MIN_REFERENCE_SIDE:
                    raise ValueError(f"is {w}x{h} pixels; a reference image is {MIN_REFERENCE_SIDE}-"
                                     f"{MAX_REFERENCE_SIDE} pixels a side")
                im.load()  # decode every pixel: a truncated or corrupt file fails here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"has far more pixels than a reference image may ({MAX_REFERENCE_SIDE}x"
                         f"{MAX_REFERENCE_SIDE} at most); refused before decoding") from None
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"is not a readable PNG or JPEG image ({type(exc).__name__})") from None
    return _FORMATS[fmt], w, h


class ReferenceImage(_Strict):
    """A reference image carried in the spec: ``file`` (the path as the user wrote it, for
    messages), ``media_type`` (image/png or image/jpeg), ``sha256`` of the bytes and ``data``, the
    bytes base64-encoded. Validated: the data decodes, its sha256 matches, and it is a PNG/JPEG
    within the limits (``check_reference_image``)."""

    file: Annotated[str, Field(strict=True), StringConstraints(min_length=1, max_length=MAX_PATH_CHARS)]
    media_type: Literal["image/png", "image/jpeg"]
    sha256: Annotated[str, Field(strict=True), StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    data: Annotated[str, Field(strict=True, repr=False),
                    StringConstraints(max_length=4 * (MAX_REFERENCE_IMAGE_BYTES // 3 + 1))]

    @field_validator("data")
    @classmethod
    def _decodes(cls, data: str, info) -> str:
        raw = _b64(data)
        sha = info.data.get("sha256")
        if sha is not None and hashlib.sha256(raw).hexdigest() != sha:
            raise ValueError("the image data does not match its sha256 (edited or truncated)")
        media_type, _, _ = check_reference_image(raw)
        if info.data.get("media_type") not in (None, media_type):
            raise ValueError(f"the image data is {media_type}, not {info.data.get('media_type')}")
        return data

    def image_bytes(self) -> bytes:
        """The image file's bytes."""
        return _b64(self.data)

    @property
    def suffix(self) -> str:
        """The file extension of its media type: ".png" or ".jpg"."""
        return ".png" if self.media_type == "image/png" else ".jpg"


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the image data is not valid base64") from None


def _relative_path(value: str) -> str:
    """``value`` if it is a relative path that stays inside the spec's folder; ValueError otherwise."""
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{quoted(value, 80)} is an absolute path; give a path relative to the spec's folder "
                         "(reference images must be inside it)")
    if ".." in path.parts:
        raise ValueError(f"{quoted(value, 80)} leaves the spec's folder ('..'); reference images must be inside it")
    return value


RelativePath = Annotated[str, Field(strict=True),
                         StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PATH_CHARS)]


class CharacterSpec(_Strict):
    """One recurring character: ``description`` (1-1,000 characters: what it looks like, used in
    the storyboard prompts of beats naming it and to generate its reference image) and an optional
    ``reference_image`` (a path relative to the spec's folder in a spec file; the ingested
    ``ReferenceImage`` once loaded)."""

    description: Annotated[str, Field(strict=True),
                           StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_DESCRIPTION_CHARS)]
    reference_image: ReferenceImage | RelativePath | None = None

    @field_validator("reference_image", mode="before")
    @classmethod
    def _one_form(cls, value: Any) -> Any:
        """A path (text) or an ingested image (a mapping), with one clear message for anything else."""
        if value is None or isinstance(value, (str, ReferenceImage)):
            return value
        if isinstance(value, dict):
            try:
                return ReferenceImage.model_validate(value)
            except ValidationError as exc:
                raise ValueError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'image'}: "
                                           f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())) from None
        from pipeline.spec_yaml import describe_value

        raise ValueError(f"should be the path of a PNG or JPEG file inside the spec's folder (text), "
                         f"got {describe_value(value)}")

    @field_validator("reference_image")
    @classmethod
    def _inside_folder(cls, value: ReferenceImage | str | None) -> ReferenceImage | str | None:
        return _relative_path(value) if isinstance(value, str) else value


CharacterName = Annotated[str, Field(strict=True),
                          StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_CHARS,
                                            pattern=NAME_PATTERN)]
Characters = Annotated[dict[CharacterName, CharacterSpec], Field(strict=True, min_length=1,
                                                                 max_length=MAX_CHARACTERS)]
BeatCharacters = Annotated[list[CharacterName], Field(strict=True, max_length=MAX_CHARACTERS)]


def check_character_names(characters: dict[str, CharacterSpec] | None,
                          beat_lists: list[list[str] | None]) -> None:
    """Spec-level checks: names unique ignoring case, and every name in a beat's ``characters``
    list defined. Raises ValueError naming the beat and the name."""
    known = {n.casefold(): n for n in (characters or {})}
    if characters and len(known) != len(characters):
        dupes = sorted({n for n in characters if list(map(str.casefold, characters)).count(n.casefold()) > 1})
        raise ValueError(f"characters: names differ only in case ({', '.join(map(quoted, dupes))}); a beat "
                         "names a character case-insensitively, so they would be the same")
    for i, names in enumerate(beat_lists):
        for name in names or []:
            if name.casefold() not in known:
                defined = ", ".join(map(quoted, characters or {})) or "none"
                raise ValueError(f"beats[{i}].characters: {quoted(name, 80)} is not a character of this spec "
                                 f"(defined: {defined})")


def _pattern(name: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(w) for w in name.split())
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def beat_characters(prompt: str, listed: list[str] | None, characters: dict[str, Any] | None) -> list[str]:
    """The characters a beat names, as spelled in the spec's ``characters``, in the spec's order:
    exactly ``listed`` when the beat gives a list (matched ignoring case), else every character
    whose name is a whole word (or words) of ``prompt``, ignoring case (see the module doc)."""
    if not characters:
        return []
    if listed is not None:
        wanted = {n.casefold() for n in listed}
        return [n for n in characters if n.casefold() in wanted]
    return [n for n in characters if _pattern(n).search(prompt)]


# --- reading reference image files -------------------------------------------------------------

def read_reference_file(folder: str | os.PathLike, relative: str) -> bytes:
    """The bytes of the reference image ``relative`` (a path inside ``folder``, the spec's folder),
    read with a spec file's rules (``pipeline.spec_file.read_spec_bytes``: regular file only, never
    blocking, at most MAX_REFERENCE_IMAGE_BYTES) after checking that the path, with every link
    resolved, stays inside ``folder``. Raises SpecInputError (one line, no link target shown)."""
    _relative_path(relative)
    base = os.path.realpath(folder)
    path = os.path.join(base, relative.replace("\\", "/"))
    parent = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([base, parent]) != base:
        raise SpecInputError("is inside a folder that is a symbolic link out of the spec's folder; refusing to "
                             "follow it (copy the image into the spec's folder)")
    if os.path.islink(path):
        target = os.path.realpath(path)
        if os.path.commonpath([base, target]) != base:
            raise SpecInputError("is a symbolic link to a file outside the spec's folder; refusing to follow it "
                                 "(copy the image into the spec's folder)")
    try:
        return read_spec_bytes(path, max_bytes=MAX_REFERENCE_IMAGE_BYTES)
    except SpecInputError as exc:  # the rules are a spec file's; the words are the image's
        raise SpecInputError(str(exc).replace("a spec must", "a reference image must")
                             .replace("limit for a spec", "limit for a reference image")) from None


def ingest_reference(folder: str | os.PathLike, relative: str) -> ReferenceImage:
    """The ``ReferenceImage`` of the file ``relative`` inside ``folder``. Raises ValueError
    (SpecInputError for the file, ValueError for the image) saying what is wrong."""
    data = read_reference_file(folder, relative)
    media_type, _, _ = check_reference_image(data)
    return ReferenceImage(file=relative, media_type=media_type, sha256=hashlib.sha256(data).hexdigest(),
                          data=base64.b64encode(data).decode("ascii"))


def ingest_raw(raw: dict[str, Any], folder: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """A parsed spec mapping with every ``characters.<name>.reference_image`` path replaced by its
    ingested form (``ReferenceImage`` as JSON), and the problems found ("<field>: <what>"). Values
    that are not paths are left for validation to judge."""
    chars = raw.get("characters")
    if not isinstance(chars, dict):
        return raw, []
    problems, out = [], {}
    for name, char in chars.items():
        ref = char.get("reference_image") if isinstance(char, dict) else None
        if isinstance(ref, str) and ref.strip():
            try:
                char = {**char, "reference_image": ingest_reference(folder, ref.strip()).model_dump(mode="json")}
            except ValueError as exc:
                problems.append(f"characters.{clip(name, 40)}.reference_image: {quoted(ref.strip(), 80)} {exc}")
        out[name] = char
    return {**raw, "characters": out}, problems


def has_reference_paths(raw: Any) -> bool:
    """Whether a parsed spec mapping names any character reference image by path (which a copy of
    the spec elsewhere, e.g. in the inbox, could not resolve: ``ingest_raw`` it first)."""
    chars = raw.get("characters") if isinstance(raw, dict) else None
    return isinstance(chars, dict) and any(isinstance(c, dict) and isinstance(c.get("reference_image"), str)
                                           for c in chars.values())


def folder_of(spec_path: str | os.PathLike) -> Path:
    """The folder a spec file's reference images are relative to: the folder of the path as given
    (a link to a spec is not followed for this: the images are beside the name the user gave)."""
    return Path(os.path.abspath(os.fspath(spec_path))).parent
