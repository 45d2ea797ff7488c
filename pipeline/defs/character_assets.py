"""The ``characters`` asset: one reference image per character of a video (``pipeline.characters``).

    video_spec [videos] ─> characters [videos] ─┐
                beats [video × segment] ────────┴─> storyboard_images [video × segment]

Partitioned like ``video_spec``, materialized with it by the ``plan_video`` job (after it), so the
segment runs the fan-out starts find it. It declares no pool: pools are held per run, and a plan
run must never queue behind other videos' segment runs for an ``image_api`` slot (it makes at most
one image per character, once per spec version; everything else is a cache hit). ``storyboard_images`` takes it as an input (per video,
like ``video_spec``) and gives the beats that name characters their references; a segment run
that starts before this asset is done for the current plan makes (or waits for) the same cached
reference itself (``characters.beat_references``). A video without characters gets an empty
manifest (no call). Thin glue: the work is ``pipeline.characters.render_references``.
"""


import base64

import dagster as dg

from pipeline import characters as domain
from pipeline import previews
from pipeline.defs import metadata, run_log
from pipeline.defs.assets import PROVIDER_RETRY, _require, permanent_errors
from pipeline.defs.partitions import videos
from pipeline.defs.resources import PipelineResource
from pipeline.manifests import CharactersManifest, VideoPlan
from pipeline.progress import run_cost


def _sheet(manifest: CharactersManifest, pipeline: PipelineResource) -> dict:
    """The references as an inline contact sheet (markdown), when it is small enough for the event log."""
    refs = list(manifest.references.values())
    if not refs:
        return {}
    data = previews.contact_sheet([pipeline.generator.local_path(r.image) for r in refs], columns=5,
                                  thumb_width=128, labels=[r.name[:6] for r in refs])
    if len(data) > previews.MAX_INLINE_BYTES:
        return {}
    uri = f"data:image/jpeg;base64,{base64.b64encode(data).decode()}"
    return {"references": dg.MetadataValue.md(f"![character references]({uri})")}


@dg.asset(partitions_def=videos, group_name="video", kinds={"png"}, retry_policy=PROVIDER_RETRY)
def characters(context: dg.AssetExecutionContext, pipeline: PipelineResource,
               video_spec: VideoPlan | None) -> dg.Output[CharactersManifest]:
    """One reference image per character of the spec: the user's reference image ingested into the
    media store, or one generated from the description (and the style) with the image model;
    each cached by that request (``pipeline.characters.reference_request``). Metadata: a table of
    the characters (source, model, cache hit, cost, sha256, cache key, the segments naming them)
    and the references as a contact sheet."""
    plan = _require(video_spec, "video_spec", context)
    with permanent_errors(), run_log.provider_logs(context):
        manifest = domain.render_references(plan, pipeline.provider(plan.provider, plan.models), pipeline.generator,
                                            domain.registered_image_bytes(pipeline.specs, plan.video_id),
                                            progress=run_log.progress_logger(context))
    images = [r.image for r in manifest.references.values()]
    return dg.Output(manifest, metadata={
        "characters": len(manifest.references),
        "character_table": metadata.md_table([
            {"name": r.name, "source": r.source, "model": r.image.model, "cache_hit": "yes" if r.image.cache_hit else "no",
             "cost_usd": r.image.cost_usd, "sha256": r.image.sha256[:12], "cache_key": (r.image.cache_key or "")[:12],
             "segments": ", ".join(b.segment for b in plan.beats if r.name in b.characters)}
            for r in manifest.references.values()]),
        **_sheet(manifest, pipeline),
        **run_log.tag_run_cost(context, *run_cost(images)),
    })
