"""The registry's self-check and its table: what ``pipeline models`` prints and verifies.

:func:`check_registry` finds entries that cannot be right (a price without a source or a check date,
a price <= 0, a default model that is not registered, a default aspect ratio a model cannot make,
a billing rule that does not fit the price's unit ...); :func:`registry_rows` lays the registry out
as one row per price tier. Pure functions over ``pipeline.models``; no network.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipeline.model_inputs import ratio_value
from pipeline.models import DEFAULTS, MODELS, REFERENCE_DEFAULT, ReplicateModel, parse_ref
from pipeline.spec_characters import MAX_CHARACTERS

DEFAULT_RATIO = "16:9"
"""The aspect ratio of a spec that names none (``pipeline.spec``): every image and video model must make it."""

UNITS_BY_KIND = {"image": {"image"}, "video": {"video", "video_second", "gpu_second"},
                 "audio": {"audio", "audio_second", "gpu_second"}, "speech": {"audio_second", "gpu_second"},
                 "text": {"token"}}
"""The price units that make sense for each kind of model."""

BILLING_RULES = {"time_run", "nothing", "full", "tokens_so_far"}


def _date_problem(value: str, today: dt.date) -> str | None:
    try:
        day = dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        return f"{value!r} is not an ISO date (YYYY-MM-DD)"
    return f"{value} is in the future" if day > today else None


def _model_problems(m: ReplicateModel, today: dt.date) -> list[str]:
    out: list[str] = []
    if not m.schema_source.startswith("https://"):
        out.append("schema_source: missing (where the input schema was checked)")
    if not m.prices:
        return out + ["prices: none"]
    for tier, p in m.prices.items():
        where = f"prices[{tier}]"
        if not p.usd > 0:
            out.append(f"{where}.usd: {p.usd} is not > 0")
        if p.unit == "token" and not p.usd_out > 0:
            out.append(f"{where}.usd_out: {p.usd_out} is not > 0")
        if p.unit not in UNITS_BY_KIND[m.kind]:
            out.append(f"{where}.unit: {p.unit!r} does not price a {m.kind} model")
        if not p.source.startswith("https://"):
            out.append(f"{where}.source: missing (the page that publishes the price)")
        if not p.evidence:
            out.append(f"{where}.evidence: none (what was read to check it)")
        if problem := _date_problem(p.checked, today):
            out.append(f"{where}.checked: {problem}")
    rule, units = m.billing.canceled, {p.unit for p in m.prices.values()}
    if rule not in BILLING_RULES:
        out.append(f"billing.canceled: {rule!r} is not one of {sorted(BILLING_RULES)}")
    elif (rule == "time_run") != (units == {"gpu_second"}):
        out.append(f"billing.canceled: {rule!r} does not fit prices in {sorted(units)} ('time_run' is for gpu_second)")
    elif (rule == "tokens_so_far") != (units == {"token"}):
        out.append(f"billing.canceled: {rule!r} does not fit prices in {sorted(units)} ('tokens_so_far' is for token)")
    if not m.billing.source.startswith("https://"):
        out.append("billing.source: missing")
    if problem := _date_problem(m.billing.checked, today):
        out.append(f"billing.checked: {problem}")
    if m.kind in ("image", "video"):
        try:
            [ratio_value(r) for r in m.ratios]
        except ValueError as exc:
            out.append(f"ratios: {exc}")
        if DEFAULT_RATIO not in m.ratios:
            out.append(f"ratios: the default ratio {DEFAULT_RATIO} is not supported ({', '.join(m.ratios) or 'none'})")
    if m.kind == "video":
        if not m.chunk_seconds or not m.fps:
            out.append("chunk_seconds/fps: missing")
        if "interpolate" in m.fields and m.interpolate_output is None:
            out.append("interpolate_output: not set (it is sent explicitly: it sets the price tier)")
        want = {f"{t}+interpolate" if m.interpolate_output else t for t in m.prices if t.endswith("p")}
        if "default" not in m.prices and not want <= set(m.prices):
            out.append(f"prices: no tier {sorted(want - set(m.prices))} for the resolutions it runs at")
    if m.max_reference_images and "references" not in m.fields:
        out.append("fields: no 'references' field for its max_reference_images")
    if m.kind == "audio" and not (m.max_duration_s or 0) > 0:
        out.append("max_duration_s: missing")
    return out


def check_registry(models: dict[str, ReplicateModel] | None = None, defaults: dict[str, str] | None = None,
                   *, today: dt.date | None = None) -> list[str]:
    """Problems of the registry (default ``pipeline.models.MODELS`` / ``DEFAULTS``), one line each,
    naming the model (or ``DEFAULTS[kind]``) and the field: "meta/musicgen: prices[default].usd: 0 is
    not > 0". Empty when it is consistent. ``today`` (default: the UTC date) bounds check dates."""
    models = MODELS if models is None else models
    defaults = DEFAULTS if defaults is None else defaults
    today = today or dt.datetime.now(dt.timezone.utc).date()
    out = []
    for kind in UNITS_BY_KIND:
        ref = defaults.get(kind)
        if ref is None:
            out.append(f"DEFAULTS[{kind!r}]: no default {kind} model")
        elif ref not in models:
            out.append(f"DEFAULTS[{kind!r}]: {ref}: not in the registry")
        elif models[ref].kind != kind:
            out.append(f"DEFAULTS[{kind!r}]: {ref}: is a {models[ref].kind} model")
    reference = REFERENCE_DEFAULT if models is MODELS else None
    if reference is not None and (reference not in models or models[reference].kind != "image"
                                  or models[reference].max_reference_images < MAX_CHARACTERS):
        out.append(f"REFERENCE_DEFAULT: {reference}: not an image model taking {MAX_CHARACTERS} reference images")
    for ref, m in models.items():
        if m.ref != ref:
            out.append(f"{ref}: ref: registered under another name ({m.ref})")
        try:
            parse_ref(f"{ref}:{m.version}" if m.version else ref)
        except ValueError as exc:
            out.append(f"{ref}: ref: {exc}")
        out += [f"{ref}: {p}" for p in _model_problems(m, today)]
    return out


def _duration(m: ReplicateModel) -> str:
    if m.kind == "video":
        return "chunks " + "/".join(f"{c:g}" for c in m.chunk_seconds) + f" s @ {m.fps} fps"
    return f"{m.max_duration_s:g} s" if m.max_duration_s else ""


def registry_rows(models: dict[str, ReplicateModel] | None = None) -> list[dict[str, Any]]:
    """One row per (model, price tier): model (``id``, short version), kind, tier, usd (text; token
    prices "in/out" per million), unit, ratios, max_duration, canceled (billing rule), confidence,
    source (the page publishing the price), checked (ISO date)."""
    rows = []
    for m in (MODELS if models is None else models).values():
        for tier, p in m.prices.items():
            token = p.unit == "token"
            usd = f"{p.usd * 1e6:g}/{p.usd_out * 1e6:g}" if token else f"{p.usd:g}"
            rows.append({"model": m.ref + (f":{m.version[:8]}" if m.version else ""), "kind": m.kind, "tier": tier,
                         "usd": usd, "unit": "M tokens in/out" if token else p.unit, "ratios": " ".join(m.ratios), "max_duration": _duration(m),
                         "canceled": m.billing.canceled, "confidence": p.confidence, "source": p.source,
                         "checked": p.checked})
    return rows
