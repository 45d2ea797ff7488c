"""What each registry model costs on Replicate, where that was checked, and how Replicate bills a
prediction that did not finish. Data only (``pipeline.models`` uses it); no network call.

Every :class:`Price` names ``source``: the replicate.com page where Replicate publishes the price
(the model page's "Pricing" section, or https://replicate.com/pricing for hardware time), which is the
authority to re-check. The registry was written offline, so that page itself could not be read;
``evidence`` lists the copies that *were* read (public docs, registries of Replicate prices in public
repositories) with what they say, ``checked`` the date they were read and ``confidence``:

- "published": read on a replicate.com page (docs, a version's API page);
- "corroborated": Replicate's figure as stated by independent public sources that agree;
- "estimate": sources disagree, or the figure is derived (the note says how). Re-check before
  relying on it.

Canceled and aborted predictions (https://replicate.com/docs/topics/predictions/lifecycle):
"Aborted (never started): No charge. Canceled (started running): You pay for the time the prediction
ran before it was canceled." That is how *time-billed* public models bill. Official models are
"priced by predictable metrics, like the number of output images, seconds of video output, number of
input and output tokens" (https://replicate.com/docs/topics/models/official-models), so a canceled
prediction with no output has no billed units. :class:`Billing` records the rule per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PriceUnit = Literal["image", "video", "video_second", "audio", "audio_second", "gpu_second", "token"]
Confidence = Literal["published", "corroborated", "estimate"]
BillsCanceled = Literal["time_run", "nothing", "full", "tokens_so_far"]

CHECKED = "2026-11-21"
"""The date (ISO 8601) the prices and billing rules below were checked against the evidence."""

P = "https://replicate.com/"
LIFECYCLE = "https://replicate.com/docs/topics/predictions/lifecycle"
BILLING_DOC = "https://replicate.com/docs/billing"
OFFICIAL_DOC = "https://replicate.com/docs/topics/models/official-models"
NODETOOL = "https://github.com/nodetool-ai/nodetool-replicate/blob/d21aa02/src/nodetool/nodes/replicate/"
"""nodetool-replicate: node classes generated from Replicate's own model API (``openapi_schema``,
``is_official``, pinned versions), snapshot of 2026-04-23. Used for input schemas."""


@dataclass(frozen=True)
class Price:
    """``usd`` per ``unit``: "image" (per output image), "video"/"audio" (per output file),
    "video_second"/"audio_second" (per second of output), "gpu_second" (per second of the
    prediction's ``metrics.predict_time``), "token" (``usd`` per input token, ``usd_out`` per output
    token). ``source``: the replicate.com page that publishes it; ``checked``: ISO date checked;
    ``evidence``: what was read, URL first; ``confidence``: see the module doc; ``note``: caveats."""

    usd: float
    unit: PriceUnit
    source: str
    usd_out: float = 0.0
    checked: str = CHECKED
    evidence: tuple[str, ...] = ()
    confidence: Confidence = "corroborated"
    note: str = ""


@dataclass(frozen=True)
class Billing:
    """How Replicate bills a prediction that ends ``canceled`` (or ``failed``) after starting:
    "time_run" (the seconds it ran x the hardware price), "nothing" (output-priced: no output, no
    units), "full" (the whole price), "tokens_so_far" (the tokens its metrics report). ``aborted``
    (deadline before start) is always free. ``source``/``checked``: where the rule is stated, when."""

    canceled: BillsCanceled
    source: str
    checked: str = CHECKED
    note: str = ""


def _official(ref: str) -> Billing:
    return Billing("nothing", OFFICIAL_DOC, note=f"{ref} is an official model priced by output (is_official in its "
                   f"API record, {NODETOOL}); a canceled or failed prediction returns no output, so no billed units")


PRICES: dict[str, dict[str, Price]] = {
    "black-forest-labs/flux-schnell": {
        "default": Price(0.003, "image", P + "black-forest-labs/flux-schnell", evidence=(
            "https://www.workflowlab.dev/cost/flux-schnell-replicate: 'Replicate charges $0.0030 per Flux Schnell "
            "image' (verified May 2026, citing https://replicate.com/pricing)",
            "https://www.workflowlab.dev/cost/flux-api-options-compared: Replicate $0.003/image")),
    },
    "black-forest-labs/flux-1.1-pro": {
        "default": Price(0.04, "image", P + "black-forest-labs/flux-1.1-pro", evidence=(
            "https://docs.bfl.ml/quick_start/pricing: FLUX1.1 [pro] 4 credits = $0.04 per image (the author's price)",
            "https://www.runflow.io/models/black-forest-labs/flux-1-1-pro: $0.040 per image"),
            note="not flux-pro (1.0), which Replicate prices at $0.055 per image (https://replicate.com/"
                 "black-forest-labs/flux-pro)"),
    },
    "bytedance/seedream-4": {
        "default": Price(0.03, "image", P + "bytedance/seedream-4", evidence=(
            "https://github.com/dwaipayanbanerjee/qwen-image-editor/blob/ad9f9146e235336039d4b46057036474900e6a46/"
            "bytedance_seedream-4.md (a copy of the model's replicate.com page): 'Model pricing for "
            "bytedance/seedream-4 ... $0.03 per output image or around 33 images for $1'",
            "https://llm-stats.com/models/seedream-4: 'Seedream 4 starts at $0.0300 per generated image via "
            "Replicate'"),
            note="per output image whatever the number of reference images (max_images 1 is sent)"),
    },
    "wan-video/wan-2.2-i2v-fast": {
        # Per output video by resolution x interpolate_output; see models.py (the Wan entry) for why
        # num_frames and frames_per_second do not enter the price.
        "480p": Price(0.05, "video", P + "wan-video/wan-2.2-i2v-fast", evidence=(
            "https://github.com/pollinations/pollinations/pull/11762: 'wan-fast -> wan-2.2-fast: 480p, silent, ~5s "
            "-> flat $0.05/clip' on Replicate",
            "https://github.com/basketikun/infinite-canvas (backend pricing of Replicate wan-2.2-i2v-fast: per output, "
            "tiers base:480p, interpolate:480p, base:720p, interpolate:720p)")),
        "480p+interpolate": Price(0.065, "video", P + "wan-video/wan-2.2-i2v-fast", confidence="estimate", evidence=(
            "https://github.com/basketikun/infinite-canvas: interpolate:480p is 230/180 of base:480p",),
            note="derived: $0.05 x 230/180 = $0.064; no source states it in USD"),
        "720p": Price(0.11, "video", P + "wan-video/wan-2.2-i2v-fast", confidence="estimate", evidence=(
            "a public app registry of Replicate video prices (found by content search, repository not named): "
            "480p $0.05, 720p $0.11, 720p + interpolate_output $0.145 per video",
            "another registry found by content search: cost_720p 0.10",
            "https://github.com/basketikun/infinite-canvas: base:720p is 390/180 of base:480p (= $0.108)"),
            note="sources disagree ($0.10 / $0.11); the higher is kept (estimates are for budgets)"),
        "720p+interpolate": Price(0.145, "video", P + "wan-video/wan-2.2-i2v-fast", confidence="estimate", evidence=(
            "the registry above: 720p + interpolate_output $0.145 per video",
            "https://github.com/basketikun/infinite-canvas: interpolate:720p is 510/390 of base:720p (= $0.144)")),
    },
    "kwaivgi/kling-v2.1": {
        "720p": Price(0.05, "video_second", P + "kwaivgi/kling-v2.1", evidence=(
            "https://github.com/DaWe35/image-router/blob/073567e89b639301eb90f50c4d7dc6c000e9f1cf/src/shared/"
            "videoModels/kwaivgi/kling-2.1-standard.js: replicate kwaivgi/kling-v2.1 calcVideoPrice(params, 0.05), "
            "$0.25-$0.50 for 5-10 s",),
            note="standard mode (720p, 24 fps)"),
        "1080p": Price(0.09, "video_second", P + "kwaivgi/kling-v2.1", evidence=(
            "https://github.com/DaWe35/image-router/blob/d8279a8fbbe14bb3f1369d04f3cfc055299082f3/src/shared/"
            "videoModels/kwaivgi/kling-2.1-pro.js: replicate kwaivgi/kling-v2.1 pro mode '0.45 per 5-second video "
            "(0.09 $/sec)'",),
            note="pro mode (1080p). Other hosts' measured figures differ (fal.ai standard $0.28 per 5 s = "
                 "$0.056/s, https://fal.ai/models/fal-ai/kling-video/v2.1/standard/image-to-video/llms.txt; "
                 "Runpod pro $0.45 per 5 s, https://docs.runpod.io/public-endpoints/models/kling-v2-1): "
                 "those are not Replicate's prices"),
    },
    "bytedance/seedance-1-lite": {
        tier: Price(usd, "video_second", P + "bytedance/seedance-1-lite", evidence=(
            "https://github.com/pollinations/pollinations/blob/main/gen.pollinations.ai/src/image/models/"
            "seedanceReplicateVideoModel.ts (its 2026 history): 'Replicate prices 480p / 720p / 1080p differently "
            "($0.018 / $0.036 / $0.072 per sec for lite)'",),
            note="third-party hosts' per-clip prices (WaveSpeed seedance-v1-lite $0.15 per 5 s clip) are other "
                 "hosts'. The same source retired lite in May 2026: 'reproducibly broken (E004 ... at all "
                 "resolutions)' on Replicate")
        for tier, usd in (("480p", 0.018), ("720p", 0.036), ("1080p", 0.072))
    },
    "stability-ai/stable-audio-2.5": {
        "default": Price(0.20, "audio", P + "stability-ai/stable-audio-2.5", confidence="estimate", evidence=(
            "https://github.com/api-evangelist/stability-audio: 'Stable Audio 2.5: $0.20 per generation (20 credits, "
            "regardless of duration)' on Stability's own API",),
            note="Replicate's per-file price was not readable offline; the author's own API price is used"),
    },
    "meta/musicgen": {
        "default": Price(0.0014, "gpu_second", P + "meta/musicgen", confidence="estimate", evidence=(
            BILLING_DOC + ": 'Nvidia A100 (80GB) GPU $0.001400/sec'",),
            note="billed by metrics.predict_time on the model's hardware; A100 (80GB) as last seen on the model "
                 "page (not readable offline)"),
    },
    "jaaari/kokoro-82m": {
        "default": Price(0.000225, "gpu_second", P + "jaaari/kokoro-82m", confidence="estimate", evidence=(
            "https://replicate.com/pricing: 'Nvidia T4 GPU $0.000225/sec' (public models bill predict_time on "
            "their hardware)",
            "https://www.eachlabs.ai/kokoro/kokoro/kokoro-82m/llms.txt: 'Per-second pricing based on provider "
            "predict_time. Rate: $0.0002475/sec from GPU tier' (a reseller of Replicate models: T4 plus 10 %)"),
            note="a public, time-billed model; T4 as last seen on the model page (not readable offline). A "
                 "sentence takes about a second of predict_time"),
    },
    "meta/meta-llama-3-70b-instruct": {
        "default": Price(0.65e-6, "token", P + "meta/meta-llama-3-70b-instruct", usd_out=2.75e-6, evidence=(
            NODETOOL + "cost_calculation.py: 'meta/meta-llama-3-70b-instruct': (0.65, 2.75) USD per million input / "
                       "output tokens",)),
    },
}
"""Price per tier ("default", or "480p"/"720p"/"1080p", "+interpolate" for Wan's interpolated output)
of every registry model, by ``ref``."""

BILLING: dict[str, Billing] = {
    **{ref: _official(ref) for ref in ("black-forest-labs/flux-schnell", "black-forest-labs/flux-1.1-pro",
                                       "bytedance/seedream-4",
                                       "wan-video/wan-2.2-i2v-fast", "kwaivgi/kling-v2.1", "bytedance/seedance-1-lite",
                                       "stability-ai/stable-audio-2.5")},
    "jaaari/kokoro-82m": Billing("time_run", LIFECYCLE, note="a public, time-billed model (is_official: false): "
                                 "'Canceled (started running): You pay for the time the prediction ran before it "
                                 "was canceled'"),
    "meta/musicgen": Billing("time_run", LIFECYCLE, note="a public, time-billed model (is_official: false): "
                             "'Canceled (started running): You pay for the time the prediction ran before it was "
                             f"canceled'; {BILLING_DOC}: public models bill the time 'active processing your requests'"),
    "meta/meta-llama-3-70b-instruct": Billing("tokens_so_far", BILLING_DOC, note="priced per input and output token, "
                                              "counted 'once it's finished' (a canceled prediction is finished): the "
                                              "token counts its metrics report, none when it reports none"),
}
"""How each model bills a canceled or failed prediction, by ``ref``."""
