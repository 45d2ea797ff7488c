"""Previews of a finished video for the Dagster UI: a poster frame (JPEG), an animated strip of a
few frames (WebP) and the storyboard contact sheet (JPEG), each small enough to inline in asset
metadata as a data URI (``data_uri``).

They are derived media like a stitch or a mux: made through ``Generator.generate`` with a cache
key over the source media's sha256, stored in the media store and verified by decoding, so a rerun
reuses them (cache hits, nothing decoded again). Nothing here imports Dagster.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image

from pipeline import media
from pipeline.generation import GenerationRequest, Generator, ProviderResult
from pipeline.manifests import MediaManifest
from pipeline.media import MediaError
from pipeline.stages import FFMPEG

MAX_INLINE_BYTES = 96_000
"""Upper bound of each preview file (bytes; about 128 KB as base64): Dagster keeps metadata in the
event log, and every materialization of final_video stores the three previews again."""

STRIP = {"frames": 8, "width": 480, "frame_ms": 600}
"""The animated strip: frames, width in pixels (the height for a portrait video), milliseconds per frame."""

POSTER_WIDTH = 480
"""Width of the poster frame in pixels (the height for a portrait video)."""

SHEET_WIDTHS = (192, 160, 128, 96, 64)
"""Thumbnail widths (pixels) tried for the contact sheet, largest first, until it fits MAX_INLINE_BYTES."""

_MIME = {".webp": "image/webp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@dataclass(frozen=True)
class Previews:
    """A final video's previews, stored media: ``poster`` (JPEG, the middle frame), ``strip``
    (animated WebP of ``STRIP["frames"]`` frames) and ``sheet`` (the storyboard contact sheet,
    JPEG; None when no storyboard image was found)."""

    poster: MediaManifest
    strip: MediaManifest
    sheet: MediaManifest | None


def video_preview(video: str | Path, out: str | Path, *, frames: int = 8, width: int = 320, frame_ms: int = 600,
                  quality: int = 60, max_bytes: int = 96_000) -> tuple[int, int, int]:
    """A small preview of ``video`` at ``out``: ``frames`` frames taken at the middles of equal
    slices of the video, scaled to ``width`` pixels (height keeps the aspect ratio, rounded to
    even). With ``frames`` > 1 an animated WebP looping every ``frame_ms`` milliseconds per frame;
    with 1 a still (the poster frame, the video's middle) in the format ``out``'s suffix names
    (.jpg, .png, .webp). Quality, then width, are lowered until the file is at most ``max_bytes``
    bytes (for inlining as a data URI). Returns (width, height, bytes). Raises MediaError when the
    video cannot be decoded, ValueError for ``frames`` < 1."""
    if frames < 1:
        raise ValueError(f"a preview needs at least one frame (got {frames})")
    out = Path(out)
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / av.time_base
            fps = float(stream.average_rate or 24)
            images = []
            for i in range(frames):
                target = duration * (i + 0.5) / frames
                container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
                picked = None
                for frame in container.decode(stream):
                    picked = frame
                    if frame.time is not None and frame.time >= target - 0.5 / fps:
                        break
                if picked is None:
                    raise MediaError(f"{video}: no frame near {target:.3f} s")
                images.append(picked.to_image())
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise MediaError(f"{video}: cannot decode frames for a preview: {exc}") from None
    fmt = "WEBP" if frames > 1 else {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(out.suffix.lower(), "WEBP")
    data, size = b"", (0, 0)
    while True:
        height = max(2, round(images[0].height * width / images[0].width / 2) * 2)
        size = (width, height)
        scaled = [im.convert("RGB").resize(size, Image.Resampling.LANCZOS) for im in images]
        buf = io.BytesIO()
        if frames > 1:
            scaled[0].save(buf, format=fmt, save_all=True, append_images=scaled[1:], duration=frame_ms, loop=0,
                           quality=quality, method=4)
        else:
            scaled[0].save(buf, format=fmt, **({} if fmt == "PNG" else {"quality": quality}))
        data = buf.getvalue()
        if len(data) <= max_bytes or width <= 64:
            break
        if quality > 40:
            quality -= 10
        else:
            width = max(64, int(width * 0.8))
    out.write_bytes(data)
    return size[0], size[1], len(data)


def render_previews(video_id: str, video: MediaManifest, storyboards: list[MediaManifest], labels: list[str],
                    generator: Generator) -> Previews:
    """The poster, the animated strip (both from ``video``) and the contact sheet of
    ``storyboards`` (labelled with ``labels``, e.g. segment keys), each made once per source
    media and then reused from the store. Raises MediaError when a source cannot be decoded."""
    tags = {"video_id": video_id, "stage": "final_video"}

    def still(name: str, suffix: str, params: dict, make) -> MediaManifest:
        request = GenerationRequest(media_type="image", provider=FFMPEG, model=f"{name}-v1",
                                    params={**params, "max_bytes": MAX_INLINE_BYTES},
                                    inputs=({"video": video.sha256} if name != "contact-sheet" else
                                            {f"board{i}": b.sha256 for i, b in enumerate(storyboards)}),
                                    labels={**tags, "item": name})

        def call(scratch: Path) -> ProviderResult:
            out = scratch / f"{name}{suffix}"
            make(out)
            return ProviderResult(path=out, model=f"{name}-v1")

        return generator.generate(request, call)

    source = generator.local_path(video)

    def across(longest: int) -> int:  # the width that makes the longer side ``longest`` pixels
        w, h = video.width or 1, video.height or 1
        return longest if w >= h else max(2, round(longest * w / h))

    poster_w, strip_w = across(POSTER_WIDTH), across(STRIP["width"])
    poster = still("poster", ".jpg", {"width": poster_w},
                   lambda out: video_preview(source, out, frames=1, width=poster_w, quality=75,
                                             max_bytes=MAX_INLINE_BYTES))
    strip = still("preview-strip", ".webp", {**STRIP, "width": strip_w},
                  lambda out: video_preview(source, out, **{**STRIP, "width": strip_w}, max_bytes=MAX_INLINE_BYTES))
    sheet = None
    if storyboards:
        paths = [generator.local_path(b) for b in storyboards]

        def make_sheet(out: Path) -> None:
            for width in SHEET_WIDTHS:
                data = contact_sheet(paths, labels=labels, thumb_width=width)
                if len(data) <= MAX_INLINE_BYTES:
                    break
            out.write_bytes(data)

        sheet = still("contact-sheet", ".jpg", {"labels": labels, "widths": list(SHEET_WIDTHS)}, make_sheet)
    return Previews(poster=poster, strip=strip, sheet=sheet)


def data_uri(path: str | Path) -> str:
    """``path`` (a .webp, .jpg or .png file) as a ``data:`` URI (base64) for markdown metadata.
    Raises ValueError for another suffix or a file over MAX_INLINE_BYTES bytes (too big for the
    event log), OSError when it cannot be read."""
    path = Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: not an image type that can be inlined")
    data = path.read_bytes()
    if len(data) > MAX_INLINE_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes is too big to inline (at most {MAX_INLINE_BYTES})")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def contact_sheet(images: list[str | Path], *, columns: int = 4, thumb_width: int = 192,
                  labels: list[str] | None = None) -> bytes:
    """A JPEG grid of ``images`` (``thumb_width`` pixels wide each, ``columns`` per row), each
    optionally labelled, for showing a video's storyboard at a glance. Returns the JPEG bytes."""
    from PIL import ImageDraw

    thumbs = []
    for path in images:
        with Image.open(path) as im:
            im = im.convert("RGB")
            h = max(1, round(im.height * thumb_width / im.width))
            thumbs.append(im.resize((thumb_width, h), Image.Resampling.LANCZOS))
    if not thumbs:
        raise ValueError("contact_sheet needs at least one image")
    cell_h = max(t.height for t in thumbs)
    rows = (len(thumbs) + columns - 1) // columns
    cols = min(columns, len(thumbs))
    pad = 4
    sheet = Image.new("RGB", (cols * (thumb_width + pad) + pad, rows * (cell_h + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, thumb in enumerate(thumbs):
        x, y = pad + (i % columns) * (thumb_width + pad), pad + (i // columns) * (cell_h + pad)
        sheet.paste(thumb, (x, y))
        if labels:
            draw.rectangle((x, y, x + 34, y + 14), fill=(0, 0, 0))
            draw.text((x + 3, y + 1), labels[i], fill=(255, 255, 255))
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=72)
    return out.getvalue()
