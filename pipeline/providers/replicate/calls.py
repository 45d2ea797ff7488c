"""One request of the provider as a paid call: the model input, what to do with a succeeded
prediction (download, verify, price), and the result the Generator stores -- for media
(``run_media``) and for the planner's text (``run_text``). The call itself is ``jobs.Jobs.obtain``.

A request at a ratio the model cannot generate (1:1 on Wan, which makes 16:9 or 9:16) is generated
at ``ModelInput.aspect_ratio`` and centre-cropped to the request's (``media.centre_crop``), the result
saying ``cropped_from``. Chaining: the start image (the storyboard, or the previous chunk's last frame,
both at the request's ratio) is padded, centred, to the generated ratio (``pad_to_ratio``), so the
model's frame holds all of it and the crop of its output continues from it exactly.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image, ImageFilter, ImageOps

from pipeline import media
from pipeline.generation import GenerationRequest, ProviderResult
from pipeline.ledger import Job
from pipeline.models import ReplicateModel, choose_ratio, request_ratio
from pipeline.providers.replicate.client import Transient
from pipeline.providers.replicate.download import OutputUnusable, fetch_output, output_urls
from pipeline.providers.replicate.jobs import Call, Used
from pipeline.providers.replicate.planner import PLANNER_SYSTEM
from pipeline.spec import sha256_json

if TYPE_CHECKING:
    from pipeline.providers.replicate.provider import ReplicateProvider

log = logging.getLogger("pipeline.providers.replicate")


def min_budget(*values: float | None) -> float | None:
    """The lowest of the budgets given (USD), None if none is."""
    given = [v for v in values if v is not None]
    return min(given) if given else None


def may_rebuy(provider: "ReplicateProvider", kind: str) -> Callable[[str, dict[str, Any]], bool]:
    """Whether a recorded deterministic unusable cause no longer applies to ``provider`` (its size cap
    was raised, the refused host is allowed now): then the request may be bought again."""

    def may(cause: str, details: dict[str, Any]) -> bool:
        if cause == "too_large":
            return details.get("limit") is not None and provider.max_download_bytes[kind] > int(details["limit"])
        if cause == "refused_host":
            return bool(details.get("origin")) and provider.downloader.allows(f"{details['origin']}/")
        return False

    return may


def pad_to_ratio(image: Path, ratio: str, out: Path) -> Path:
    """``image`` centred on a ``ratio`` ("W:H") canvas at its own short side, the borders filled with
    a blurred, scaled-to-cover copy of it; written to ``out`` (PNG) and returned. For a start frame
    at the request's ratio (e.g. 1:1) sent to a model that generates at another (Wan: 16:9): the
    model fills its frame with the image (centre crop), so padding keeps the whole image in the
    middle of the frame, and the centre crop of the output (``ModelInput.crop_to``) continues it."""
    rw, rh = (int(v) for v in ratio.split(":"))
    with Image.open(image) as im:
        src = im.convert("RGB")
    w, h = src.size
    if w * rh == h * rw:
        return image
    cw, ch = (max(w, round(h * rw / rh)), max(h, round(w * rh / rw)))
    canvas = ImageOps.fit(src, (cw, ch), method=Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(24))
    canvas.paste(src, ((cw - w) // 2, (ch - h) // 2))
    canvas.save(out, "PNG")
    return out


def run_media(provider: "ReplicateProvider", request: GenerationRequest, model: ReplicateModel, scratch: Path, *,
              image: Path | None = None, references: list[Path] | None = None) -> ProviderResult:
    """One media request as a paid call through the ledger (``Jobs.obtain``): its input (``image``
    as a data URI or an uploaded file; ``references``, character reference images, the same way),
    download and verification of the output into ``scratch``,
    the price of what came back. Raises ProviderError / BudgetExceededError.

    ``extra["timings_s"]`` says where the call's wall time went, seconds (those that happened):
    ``pad_s`` (start image padded to the generated ratio), ``upload_s`` (start image to model input:
    PNG read, hashed, inlined or uploaded), ``create_s`` (in sync mode with the held answer's
    wait), ``poll_s`` (~0 when the create's answer had ended), ``seen_late_s``
    (``Predictions.create`` / ``poll``), ``download_s``, ``verify_s``, ``crop_s``, and ``total_s`` (the whole
    call; the rest is ledger work). The Generator logs them in ``logs/provider_calls.jsonl``."""
    began = time.monotonic()
    timings: dict[str, float] = {}
    extra: dict[str, Any] = {}
    if image is not None:
        generated = choose_ratio(request_ratio(request.params), model.ratios) if model.ratios else None
        if generated and generated != request_ratio(request.params):  # e.g. 1:1 on Wan: framed at 16:9
            started = time.monotonic()
            image = pad_to_ratio(image, generated, scratch / f"start-{generated.replace(':', 'x')}.png")
            timings["pad_s"] = time.monotonic() - started
        started = time.monotonic()
        extra["image"] = provider.uploads.image_input(image)
        timings["upload_s"] = time.monotonic() - started
    if references:  # character reference images, as lossless PNG (inline or uploaded once per content)
        started = time.monotonic()
        extra["references"] = [provider.uploads.image_input(p) for p in references]
        timings["upload_s"] = timings.get("upload_s", 0.0) + time.monotonic() - started
    plan = model.model_input(request, **extra)
    inp = plan.input
    verified: dict[Path, Any] = {}  # file -> its MediaInfo, decoded once here (the Generator reuses it)

    def use(pred: dict[str, Any]) -> Used:
        try:
            path, facts = fetch_output(pred, model, request, scratch, provider.downloader,
                                       max_bytes=provider.max_download_bytes[model.kind], timings=timings)
        except Transient as exc:
            raise provider.api.error(f"could not download the output of {model.id} prediction {pred.get('id')} "
                                     f"({exc}); a rerun fetches it again", retryable=True) from None
        if plan.crop_to and model.kind == "video":  # generated at another ratio: keep the requested frame
            started = time.monotonic()
            try:
                facts["verified"] = media.centre_crop(path, scratch / f"cropped{path.suffix or '.mp4'}", plan.crop_to)
            except media.MediaError as exc:
                raise OutputUnusable("undecodable", f"could not centre-crop it to {plan.crop_to}: {exc}") from None
            finally:
                timings["crop_s"] = time.monotonic() - started
            path = scratch / f"cropped{path.suffix or '.mp4'}"
        if facts.get("verified") is not None:
            verified[path] = facts["verified"]
        cost = model.cost(request.params, output_seconds=facts.get("seconds"), metrics=pred.get("metrics") or {})
        return Used(value=path, cost_usd=cost.usd, output={"urls": output_urls(pred.get("output"))}, info={
            "billed_units": cost.units, "billed_unit": cost.unit, "price_usd": cost.price.usd,
            "price_source": cost.price.source, "predict_time_s": (pred.get("metrics") or {}).get("predict_time"),
            **facts.get("extra", {})})

    call = Call(key=request.cache_key(), model=model, inp=inp, estimate_usd=model.estimate_usd(request),
                max_cost_usd=min_budget(request.max_cost_usd, provider.max_cost_usd),
                video_id=request.labels.get("video_id"), labels=request.labels, input_sha256=sha256_json(inp),
                use=use, may_rebuy=may_rebuy(provider, model.kind), params=dict(request.params), timings=timings)
    got = provider.jobs.obtain(call)
    timings["total_s"] = time.monotonic() - began
    info = dict(got.info)
    if "price_source" not in info:  # adopted from the ledger without a fetch: the registry's price facts
        price = model.price(request.params)
        info.update(price_usd=price.usd, price_source=price.source)
    return ProviderResult(path=got.value, model=model.id, prediction_id=got.prediction_id, cost_usd=got.cost_usd,
                          reused_cost_usd=got.reused_cost_usd, paid_by=got.paid_by, verified=verified.get(got.value),
                          extra={
                              "replicate_model": model.ref, "replicate_version": model.version,
                              "obtained_by": got.how, "create_attempts": got.creates, **info,
                              **(plan.metadata() if model.kind == "video" else {}),
                              "timings_s": {k: round(v, 4) for k, v in sorted(timings.items())}})


def run_text(provider: "ReplicateProvider", prompt: str, *, video_id: str | None = None,
             max_cost_usd: float | None = None) -> str:
    """The planner model's answer to ``prompt`` (one paid call through the ledger, or free when
    the same prompt was answered before). Adds what it paid to ``planner_cost_usd``."""
    model = provider.planner
    # A GenerationRequest only to carry the prompt to the registry (plans are not media; no Generator).
    request = GenerationRequest(media_type="image", provider=provider.name, model=model.id, prompt=prompt,
                                params={"task": "plan_beats"})
    inp = model.build_input(request, system_prompt=PLANNER_SYSTEM, max_tokens=2048)
    key = sha256_json({"task": "plan_beats", "provider": provider.name, "model": model.id, "input": inp})

    def use(pred: dict[str, Any]) -> Used:
        out = pred.get("output")
        text = "".join(out) if isinstance(out, list) else str(out or "")
        cost = model.cost({}, metrics=pred.get("metrics") or {}, prompt_chars=len(prompt), output_chars=len(text))
        return Used(value=text, cost_usd=cost.usd, output={"text": text}, info={"billed_units": cost.units})

    def reuse(job: Job) -> str | None:
        return job.output["text"] if isinstance(job.output, dict) and "text" in job.output else None

    labels = {"stage": "plan_beats", **({"video_id": video_id} if video_id else {})}
    call = Call(key=key, model=model, inp=inp, video_id=video_id, labels=labels, input_sha256=key,
                estimate_usd=model.estimate_usd(request, prompt_chars=len(prompt), max_tokens=2048),
                max_cost_usd=min_budget(max_cost_usd, provider.max_cost_usd), use=use, reuse=reuse)
    got = provider.jobs.obtain(call)
    provider.planner_cost_usd += got.cost_usd
    log.info("planner %s prediction %s (%s): $%.5f paid, $%.5f reused", model.id, got.prediction_id, got.how,
             got.cost_usd, got.reused_cost_usd)
    return got.value
