"""The CLI commands that take a spec in: ``validate`` and ``submit`` (``pipeline.cli`` wires them up;
``render`` registers through ``pipeline.orchestration.render.render_video``). Each resolves the
provider and models the way a submission does (``pipeline.submissions``): ``--provider`` /
``--<kind>-model`` (explicit choices) > the spec's ``provider`` / ``models`` > the deployment's
defaults > ``local`` and the registry defaults. Nothing here writes an environment variable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from pipeline.cli_output import cell, console, say
from pipeline.providers import PROVIDERS


def _definitions(args):
    """The Definitions for this command's values (data directory); nothing written to the environment."""
    from pipeline.cli import _data_dir
    from pipeline.definitions import build_definitions

    return build_definitions(_data_dir(args))


MODEL_OPTIONS = ("image", "video", "music")
"""Kinds with a ``--<kind>-model`` option (the spec's ``models`` keys)."""


def provider_options(p: argparse.ArgumentParser) -> None:
    """``--provider`` and ``--image-model`` / ``--video-model`` / ``--music-model``: explicit choices."""
    p.add_argument("--provider", choices=PROVIDERS, default=None,
                   help="generation provider; beats the spec's `provider` and the deployment default "
                        "($PIPELINE_DEFAULT_PROVIDER, else local)")
    for kind in MODEL_OPTIONS:
        p.add_argument(f"--{kind}-model", metavar="REF",
                       help=f"replicate {kind} model (pipeline/models.py); beats the spec's models.{kind}, "
                            f"$REPLICATE_{kind.upper()}_MODEL and the registry default")


def chosen_models(args) -> dict[str, str]:
    """The model choices given on the command line, ``{kind: ref}`` (``--image-model`` ...)."""
    return {kind: getattr(args, f"{kind}_model") for kind in MODEL_OPTIONS if getattr(args, f"{kind}_model", None)}


def cmd_validate(args) -> int:
    """Validate a spec, resolve its provider and models as a submission would, and print the plan
    (a brief is planned by that provider's planner). Registers nothing."""
    from pipeline import stages
    from pipeline.spec import load_spec
    from pipeline.submissions import Submission, registration_sha256, resolve_provider

    spec = load_spec(args.spec)
    pipeline = _definitions(args).resources["pipeline"]
    name, models = resolve_provider(spec, provider=args.provider, models=chosen_models(args),
                                    defaults=pipeline.provider_defaults(), source=args.spec)
    provider = pipeline.provider(name, models)
    sub = Submission(video_id=spec.video_id, provider=name, models=models, source=args.spec,
                     spec=spec.model_dump(mode="json", exclude_none=True),
                     spec_sha256=registration_sha256(spec, name, models), submitted_at="")
    plan = stages.plan_video(sub, provider)  # no voicer: narrated lengths are estimated, nothing is voiced
    approx = "~" if any(b.duration_from != "spec" for b in plan.beats) else ""
    say(("valid", "green"), f" {args.spec}: video ", (plan.video_id, "bold"),
        f", {len(plan.beats)} beats, {approx}{plan.duration_s:g} s, {plan.width}x{plan.height} @ {plan.fps} fps "
        f"({plan.planned_by})")
    say(f"provider {name}" + "".join(f", {kind} {ref}" for kind, ref in models.items()))
    applied = spec.applied_defaults()
    if applied:
        say(("defaults applied", "cyan"), ": " + "; ".join(applied))
    if plan.narration is not None:
        n = plan.narration
        say(f"narration: voice {n.voice} with {n.model}, pause {n.pause_s:g} s, captions {n.captions}; voices "
            f"this provider has: {', '.join(provider.voices()) or 'none'}")
        if approx:
            say("  ~ lengths from narration are estimated here (nothing is voiced); rendering measures the clips")
    for warning in narration_warnings(plan, provider.fps):
        say(("warning", "yellow"), ": ", warning)
    if plan.truncation:
        say(("warning", "yellow"), ": ", stages.truncation_message(plan, plan.truncation))
    table = Table("segment", "start_s", "duration_s", "chunks", "motion")
    table.add_column("prompt", no_wrap=True, overflow="ellipsis", max_width=60)
    if plan.narration is not None:
        table.add_column("narration", no_wrap=True, overflow="ellipsis", max_width=40)
    for b in plan.beats:
        mark = "~" if b.duration_from != "spec" else ""
        row = [b.segment, f"{b.start_s:g}", f"{mark}{b.duration_s:g}",
               str(len(stages.chunk_plan(b.duration_s, provider.chunk_seconds))), cell(b.motion or ""), cell(b.prompt)]
        table.add_row(*row, *([cell(b.narration or "")] if plan.narration is not None else []))
    console.print(table)
    # --- characters (issue 13): who appears where, and where each reference image comes from ---
    for name, char in plan.characters.items():
        where = ", ".join(b.segment for b in plan.beats if name in b.characters) or "no beat"
        source = f"reference image {char.reference_file}" if char.reference_file else "generated from its description"
        say(f"character {name} ({source}): beats ", (where, "bold"))
    return 0


def narration_warnings(plan, fps: int) -> list[str]:
    """Beats with an explicit duration whose narration looks too long for it (estimated: a render
    measures the clip and fails the segment, naming the beat, if it really is)."""
    from pipeline import narration

    out = []
    for b in plan.beats:
        if plan.narration is None or not b.narration or b.duration_from != "spec":
            continue
        need = narration.beat_length(narration.estimate_speech_s(b.narration), plan.narration.pause_s, fps)
        if need > b.duration_s + 1e-6:
            out.append(f"beats[{b.index}]: its narration takes about {need:g} s with the pause, longer than its "
                       f"duration_s {b.duration_s:g} (estimated; use duration_s: auto)")
    return out


def submit_target(args, pipeline):
    """Where ``pipeline submit`` puts the spec (a ``pipeline.inbox.InboxSource``): ``--to
    s3://bucket/prefix`` (a cluster's bucket and prefix: its ``inbox/``), else the deployment's inbox
    (``PipelineResource.inbox``: the S3 inbox prefix when S3 is configured, else the inbox folder).
    Raises ValueError for a ``--to`` that is not an ``s3://`` location."""
    if not args.to:
        return pipeline.inbox
    from pipeline.inbox_s3 import S3Inbox

    if not args.to.startswith("s3://") or not args.to[len("s3://"):].split("/")[0]:
        raise ValueError(f"--to {args.to!r}: expected s3://bucket[/prefix], the bucket and prefix the cluster keeps "
                         "its data under (PIPELINE_S3_BUCKET / PIPELINE_S3_PREFIX there); the spec goes to its inbox/")
    client = pipeline.s3_location.client if pipeline.s3_location is not None else None
    return S3Inbox.at(args.to.rstrip("/") + "/inbox", client)


def cmd_submit(args) -> int:
    """Put a valid spec into the inbox the spec_inbox_sensor scans: the inbox folder, or with S3
    configured (or ``--to s3://bucket/prefix``) the S3 prefix ``<prefix>/inbox/`` a cluster's sensor
    scans (one PUT). Without choices on the command line, the bytes that were validated are the
    bytes written (read once, safely), named ``<video_id>.yaml`` or ``.json``. With ``--provider``
    or a model option, the choices are written into the spec (``provider``, ``models``; they replace
    the spec's own) and the result is written as ``<video_id>.json``, so the sensor registers exactly
    what was chosen here. So is a spec whose characters name reference images by path: the copy
    carries the images themselves. Exit 2 for a bad spec or ``--to``, 1 if the upload fails."""
    import json

    from botocore.exceptions import BotoCoreError, ClientError

    from pipeline.cli_output import error
    from pipeline.spec import decode_spec_text, load_spec_bytes, parse_spec, read_spec_file
    from pipeline.spec_characters import folder_of, has_reference_paths, ingest_raw
    from pipeline.spec_yaml import load_yaml
    from pipeline.submissions import resolve_provider

    data = read_spec_file(args.spec)
    spec = load_spec_bytes(data, args.spec, folder=folder_of(args.spec))  # fail here, not in the inbox
    suffix = ".json" if Path(args.spec).suffix.lower() == ".json" else ".yaml"
    paths = has_reference_paths(load_yaml(decode_spec_text(data)))  # character images by path: carry them
    if args.provider or chosen_models(args) or paths:
        raw, _ = ingest_raw(load_yaml(decode_spec_text(data)), folder_of(args.spec))
        if args.provider:
            raw["provider"] = args.provider
        if chosen_models(args):
            raw["models"] = {**(raw.get("models") or {}), **chosen_models(args)}
        spec = parse_spec(raw, args.spec)
        data, suffix = (json.dumps(raw, ensure_ascii=False, indent=2) + "\n").encode("utf-8"), ".json"
    pipeline = _definitions(args).resources["pipeline"]
    name, models = resolve_provider(spec, defaults=pipeline.provider_defaults(), source=args.spec)
    try:
        inbox = submit_target(args, pipeline)
    except ValueError as exc:
        error(exc)
        return 2
    try:
        where = inbox.put(f"{spec.video_id}{suffix}", data)
    except (BotoCoreError, ClientError) as exc:
        error(f"cannot upload the spec to {inbox}: {type(exc).__name__}: {exc}")
        return 1
    if args.to:
        chosen = f" (provider {args.provider or spec.provider or 'of the cluster default'})"
        follow = "the cluster's spec_inbox_sensor registers and plans it within seconds"
    else:
        chosen = f" (provider {name}{''.join(f', {kind} {ref}' for kind, ref in models.items())})"
        follow = ("with the Dagster daemon running (`make dev`, or a cluster's), spec_inbox_sensor plans it "
                  "within seconds")
    say(f"submitted {spec.video_id}{chosen} to {where}; {follow}. Follow it with `pipeline status {spec.video_id}`.")
    return 0
