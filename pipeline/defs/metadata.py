"""Metadata a person reads on an asset's page in the Dagster UI: markdown tables, the cost table,
and on ``final_video`` the published video (path and ``file://`` link, or its ``s3://`` URI) with
inline previews.

Previews are small stored images (``pipeline.previews``) inlined as ``data:`` URIs in markdown,
which the UI renders as images; each is at most ``previews.MAX_INLINE_BYTES`` bytes, because
Dagster keeps metadata in the event log.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from pipeline import costs, previews
from pipeline.generation import Generator
from pipeline.manifests import FinalManifest
from pipeline.publish import published_uri

COST_TABLE_COLUMNS = ["stage", "segment", "item", "provider", "model", "units", "unit", "paid_usd", "reused_usd",
                      "paid_by", "cache_hit", "note"]
"""The cost table's columns in final_video's markdown metadata (``costs`` has them all)."""


def md_table(rows: list[dict]) -> dg.MetadataValue:
    """``rows`` as a markdown table ("_none_" when empty)."""
    return dg.MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False) if rows else "_none_")


def cost_table(table: pd.DataFrame) -> dg.MetadataValue:
    """A cost table as Dagster table metadata: every column as text (empty when missing), money
    formatted, with a total row (``pipeline.costs.display_rows``)."""
    columns = [c for c in table.columns if c != "cache_key"]
    rows = costs.display_rows(table)
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: r[c] for c in columns}) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]))


def final_video_metadata(manifest: FinalManifest, shown: previews.Previews, generator: Generator) -> dict:
    """The published video's path and ``file://`` URL (opens the file from a browser on the same
    machine: paste it into the address bar, browsers do not follow file links from an http page),
    the animated preview, the poster frame and the storyboard contact sheet as inline images. With
    S3 the path and URL are the published object's ``s3://`` URI."""
    uri = published_uri(manifest)
    path = uri if uri.startswith("s3://") else str(Path(manifest.path).resolve())
    strip = shown.strip
    frames, shown_s = previews.STRIP["frames"], previews.STRIP["frame_ms"] / 1000
    every_s = (manifest.video.duration_s or 0) / frames
    out = {
        "path": dg.MetadataValue.path(path),
        "video_url": dg.MetadataValue.url(uri),
        "preview": dg.MetadataValue.md(
            f"![{manifest.video_id}: {frames} frames of the final video]"
            f"({previews.data_uri(generator.local_path(strip))})\n\n"
            f"{frames} frames, one every {every_s:.1f} s of video, shown {shown_s:g} s each "
            f"({strip.width}x{strip.height} animated WebP, {strip.bytes / 1000:.0f} KB). The video: `{path}`"),
        "poster": dg.MetadataValue.md(
            f"![{manifest.video_id}: poster frame]({previews.data_uri(generator.local_path(shown.poster))})"),
    }
    if shown.sheet is not None:
        out["storyboard"] = dg.MetadataValue.md(
            f"![storyboard contact sheet]({previews.data_uri(generator.local_path(shown.sheet))})")
    return out
