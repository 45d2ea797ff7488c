"""Characters on the local provider's cards: the same character looks the same on every card.

- A character's reference image (``draw_character_sheet``, for a request with ``params["role"]``
  == ``pipeline.characters.REFERENCE_ROLE``): a square sheet with one standing figure on a light
  background, coloured from the description (the first two colour words it uses, "a grey hare in a
  red scarf" -> grey body, red scarf; otherwise colours drawn from the description's hash) and the
  name under it. Deterministic: the same description, style and seed give the same pixels.
- A storyboard card with references (``add_characters``): for each character, in slot order,
  a *badge* (the reference image fitted into a square, with the name on a strip:
  ``badge_image``, the same pixels on every card of one size) at ``badge_box(slot, ...)`` in the
  top-left corner, and a standing figure in the scene, drawn in the reference's two dominant
  colours (``dominant_colours``), so the figure's colours are the same on every card too.

Works from any reference image (a generated sheet or a user's picture). Pillow only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps

from pipeline.generation import GenerationRequest

REFERENCE_ROLE = "character_reference"
"""``params["role"]`` of a character reference request (``pipeline.characters.REFERENCE_ROLE`` is this)."""

SHEET_BACKGROUND = (244, 241, 232)
RGB = tuple[int, int, int]

# Colour words Pillow knows that describe characters' looks (CSS names); "grey"/"gray" both work.
_COLOUR_WORDS = {name for name in ImageColor.colormap if name.isalpha() and len(name) <= 12}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _hash_colour(*parts: object) -> RGB:
    d = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return (40 + d[0] % 180, 40 + d[1] % 180, 40 + d[2] % 180)


def description_colours(description: str, seed: int | None) -> tuple[RGB, RGB]:
    """(body, accent) colours of a character: the first two colour words of ``description``
    (Pillow's CSS colour names), else colours from the description's hash and ``seed``."""
    found: list[RGB] = []
    for word in re.findall(r"[a-z]+", description.lower()):
        if word in _COLOUR_WORDS:
            rgb = ImageColor.getrgb(word)[:3]
            if rgb not in found:
                found.append(rgb)  # type: ignore[arg-type]
        if len(found) == 2:
            break
    while len(found) < 2:
        found.append(_hash_colour(description, seed, len(found)))
    return found[0], found[1]


def _figure(draw: ImageDraw.ImageDraw, cx: float, feet: float, height: float, body: RGB, accent: RGB) -> None:
    """A standing figure ``height`` pixels tall, centred on ``cx``, feet at ``feet``: head, body,
    a band (scarf) in ``accent``, legs; dark outlines."""
    h = height
    ink = (30, 30, 36)
    head_r = h * 0.14
    head_cy = feet - h + head_r
    body_top, body_bottom = head_cy + head_r * 0.9, feet - h * 0.22
    half = h * 0.17
    line = max(1, round(h / 90))
    for dx in (-half * 0.45, half * 0.45):  # legs
        draw.rectangle((cx + dx - h * 0.05, body_bottom - 1, cx + dx + h * 0.05, feet), fill=body, outline=ink,
                       width=line)
    draw.rounded_rectangle((cx - half, body_top, cx + half, body_bottom), radius=h * 0.06, fill=body, outline=ink,
                           width=line)
    draw.rectangle((cx - half, body_top + h * 0.03, cx + half, body_top + h * 0.12), fill=accent, outline=ink,
                   width=line)
    draw.ellipse((cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r), fill=body, outline=ink, width=line)
    eye = max(1.0, h * 0.018)
    for dx in (-head_r * 0.4, head_r * 0.4):
        draw.ellipse((cx + dx - eye, head_cy - eye, cx + dx + eye, head_cy + eye), fill=ink)


def draw_character_sheet(request: GenerationRequest, scratch: Path) -> Path:
    """A character's reference image for ``request`` (params width/height in pixels; the prompt of
    ``pipeline.characters.reference_prompt``), written as ``scratch/character.png``."""
    width, height = int(request.params["width"]), int(request.params["height"])
    m = re.match(r"Character reference sheet of (.+?): (.*)\. A single full-body figure", request.prompt, re.S)
    name, description = (m.group(1), m.group(2)) if m else ("", request.prompt)
    body, accent = description_colours(description, request.seed)
    img = Image.new("RGB", (width, height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(img)
    _figure(draw, width / 2, height * 0.84, height * 0.72, body, accent)
    if name:
        font = _font(max(10, height // 16))
        draw.text((width / 2, height * 0.93), name, font=font, fill=(30, 30, 36), anchor="mm")
    out = scratch / "character.png"
    img.save(out, "PNG")
    return out


def dominant_colours(reference: str | Path, count: int = 2) -> list[RGB]:
    """The ``count`` most common colours of a reference image, ignoring its background (the most
    common colour of its border) and near-black ones (outlines) when there are others.

    The image is sampled on a 64x64 grid (nearest pixel, so flat colours stay exact), colours are
    grouped into bins of 48 levels per channel, and each of the most populated bins gives its most
    common exact colour. Deterministic."""
    with Image.open(reference) as im:
        small = im.convert("RGB").resize((64, 64), Image.Resampling.NEAREST)
    px = small.load()
    border = [px[x, y] for x in range(64) for y in (0, 63)] + [px[x, y] for y in range(64) for x in (0, 63)]
    background = max(sorted(set(border)), key=border.count)
    bins: dict[tuple[int, ...], dict[RGB, int]] = {}
    for n, colour in small.getcolors(64 * 64) or []:
        if colour == background:
            continue
        bins.setdefault(tuple(v // 48 for v in colour), {})[colour] = n
    ranked = sorted(bins.values(), key=lambda b: (-sum(b.values()), min(b)))
    colours = [max(sorted(b), key=b.__getitem__) for b in ranked]
    vivid = [c for c in colours if max(c) >= 60]  # outlines and shadows are not the character's colours
    colours = vivid or colours or [background]
    while len(colours) < count:
        colours.append(colours[-1])
    return colours[:count]


def badge_size(width: int, height: int) -> tuple[int, int]:
    """(side, margin) of a card's character badges, pixels."""
    short = min(width, height)
    return max(24, round(short * 0.2)), max(4, round(short * 0.025))


def badge_box(slot: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Where the badge of the character in ``slot`` (0-based) goes on a ``width`` x ``height`` card:
    (left, top, right, bottom) pixels; rows of badges from the top-left corner."""
    side, margin = badge_size(width, height)
    per_row = max(1, (width - margin) // (side + margin))
    row, col = divmod(slot, per_row)
    x0, y0 = margin + col * (side + margin), margin + row * (side + margin)
    return x0, y0, x0 + side, y0 + side


def badge_image(reference: str | Path, name: str, side: int) -> Image.Image:
    """A character's badge: its reference image fitted (centre crop) into a ``side`` square, a dark
    strip with its name along the bottom, a white frame. The same inputs give the same pixels."""
    with Image.open(reference) as im:
        img = ImageOps.fit(im.convert("RGB"), (side, side), method=Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(img)
    strip = max(10, side // 6)
    draw.rectangle((0, side - strip, side, side), fill=(20, 20, 24))
    draw.text((side / 2, side - strip / 2), name[:14], font=_font(max(8, strip - 4)), fill=(255, 255, 255),
              anchor="mm")
    draw.rectangle((0, 0, side - 1, side - 1), outline=(255, 255, 255), width=max(1, side // 40))
    return img


def add_characters(card: Path, references: list[tuple[str, Path]]) -> None:
    """Draw the characters of ``references`` (``(name, reference image)`` in slot order) onto the
    card image at ``card`` in place: a figure in the scene and a badge in the corner for each."""
    with Image.open(card) as im:
        img = im.convert("RGB")
    width, height = img.size
    draw = ImageDraw.Draw(img)
    n = len(references)
    for slot, (name, ref) in enumerate(references):
        body, accent = dominant_colours(ref)
        _figure(draw, width * (slot + 1) / (n + 1), height * 0.62, height * 0.32, body, accent)
    side, _ = badge_size(width, height)
    for slot, (name, ref) in enumerate(references):
        x0, y0, _, _ = badge_box(slot, width, height)
        img.paste(badge_image(ref, name, side), (x0, y0))
    img.save(card, "PNG")
