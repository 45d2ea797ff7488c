"""The ``replicate`` provider: real models through the Replicate HTTP API, with a durable ledger.

Every call follows DESIGN.md "Generation: cache, ledger, retries" (the Generator has already
checked the cache when a provider method runs). The modules of this package:

- ``client``: the HTTP client, request errors, JSON reads with retries, create with ``Cancel-After``.
- ``jobs``: the ledger protocol: claim the cache key (budget checked with the intent), wait for a
  live owner and adopt its result for free, or own the job under a renewed lease.
- ``predictions``: create (retried; looked up after an ambiguous failure), lookup, poll, cancel.
- ``download``: allow-listed, size-capped downloads and verification; causes of unusable outputs.
- ``files``: input images as data URIs or Files API uploads (once per content).
- ``planner``: the brief-to-beats prompt and the parsing of its answer.

Errors: ProviderError(retryable=False) for permanent failures (invalid input, content policy, a
failed prediction, a refused or oversized output, an output that was unusable twice);
ProviderError(retryable=True) for transient ones that exhausted their retries (rate limits, 5xx,
deadline, an expired or corrupt output bought once). The API token is never logged nor put in any
message, manifest or ledger row.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Iterable

import httpx

from pipeline.generation import GenerationRequest, ProviderResult
from pipeline.ledger import DEFAULT_LEASE_S, Job, Ledger, default_ledger_path
from pipeline.models import DEFAULTS, ReplicateModel, get_model
from pipeline.providers.base import Provider, ProviderError
from pipeline.providers.replicate.client import DEFAULT_BASE_URL, ReplicateApi, Transient
from pipeline.providers.replicate.download import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_OUTPUT_HOSTS,
    Downloader,
    fetch_output,
    output_urls,
)
from pipeline.providers.replicate.files import MAX_DATA_URI_PNG_BYTES, Uploads, image_data_uri
from pipeline.providers.replicate.jobs import Call, Jobs, Used
from pipeline.providers.replicate.planner import PLANNER_SYSTEM, parse_beats, plan_beats, planner_prompt
from pipeline.providers.replicate.predictions import TERMINAL_STATUSES, Predictions
from pipeline.spec import BeatSpec, sha256_json
from pipeline.store import Workspace

log = logging.getLogger(__name__)

DEFAULT_DEADLINES_S = {"image": 600.0, "video": 1800.0, "audio": 1200.0, "text": 600.0}
"""Polling deadline per call, seconds, by model kind (also sent as ``Cancel-After``)."""

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_DEADLINES_S", "DEFAULT_MAX_DOWNLOAD_BYTES", "DEFAULT_OUTPUT_HOSTS",
           "MAX_DATA_URI_PNG_BYTES", "PLANNER_SYSTEM", "TERMINAL_STATUSES", "ReplicateProvider", "image_data_uri",
           "parse_beats", "planner_prompt"]


def _min_budget(*values: float | None) -> float | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None


class ReplicateProvider(Provider):
    """Generates with real models on Replicate (see the package doc for the call protocol).

    Construct with ``get_provider("replicate", **options)``; every option has a default:

    The provider reads no environment variable: ``PipelineResource`` (configured in
    ``pipeline.definitions``, where $REPLICATE_API_TOKEN, $REPLICATE_BASE_URL and
    $REPLICATE_OUTPUT_HOSTS are read) passes everything it needs.

    - ``api_token``: Replicate API token. Needed only when a call is actually made (a fully cached
      rerun needs none; without one a call fails with a ProviderError). Never logged or stored in outputs.
    - ``base_url``: API root; default https://api.replicate.com.
    - ``workspace`` (a pipeline.store.Workspace) or ``workspace_root`` (its directory) / ``ledger_path``:
      the ledger is ``ledger_path``, default ``<workspace root>/ledger.sqlite``, the root defaulting to
      ``data`` (relative to the working directory). Use the same data directory as the Generator's Workspace.
    - ``allowed_hosts``: where outputs may be downloaded from: host names (https only, subdomains
      included) and/or explicit origins such as ``"http://127.0.0.1:8765"`` (that scheme, host and
      port exactly). Default ``replicate.delivery`` (DEFAULT_OUTPUT_HOSTS).
    - ``image_model``, ``video_model``, ``music_model``, ``planner_model``: registry refs
      (``pipeline.models.MODELS``); defaults in ``pipeline.models.DEFAULTS``.
    - ``chunk_seconds``: chunk length (s), one of the video model's ``chunk_seconds``; default its
      first. ``fps`` is the video model's frame rate. Both drive the chunk plan.
    - ``max_cost_usd``: a per-video budget (USD) applied on top of any spec budget (the lower wins).
    - ``poll_interval_s`` (1.0), ``max_poll_interval_s`` (2.0): polling backoff, seconds (also how
      often a process waiting for another one's job reads the ledger). The 2 s cap sees a finished
      prediction ~1 s late on average (a 10 s cap: ~5 s late on a 45 s chunk, 1.14x instead of
      1.08x of the critical path at real latencies: BENCHMARKS.md section 1); reads are not billed.
    - ``deadline_s``: polling deadline, seconds: one number, or a dict by kind (image/video/audio/text);
      defaults DEFAULT_DEADLINES_S. On expiry the prediction is canceled; creates send it as
      ``Cancel-After`` so Replicate cancels it by itself if this process dies.
    - ``lease_s`` (30.0): ledger ownership lease, seconds, renewed every third of it while working.
      ``wait_limit_s``: the longest wait for another process's job, seconds (default twice the deadline
      plus 60 s).
    - ``request_timeout_s`` (30.0): HTTP timeout per request (create included), seconds.
    - ``max_create_attempts`` (6), ``backoff_initial_s`` (1.0), ``max_backoff_s`` (60.0): create
      retries and exponential backoff with jitter, seconds (a 429's Retry-After takes precedence).
    - ``max_download_attempts`` (4), ``max_download_bytes``: an int for every kind or a dict by kind;
      defaults DEFAULT_MAX_DOWNLOAD_BYTES.
    - ``lookup_skew_s`` (120.0): how far before the recorded intent a lookup still matches predictions
      (clock skew), seconds; ``lookup_max_pages`` (20) pages of ``GET /v1/predictions`` at most.
    - ``transport``: an httpx transport for the API client (tests only).

    Raises ValueError for an unknown model or a chunk length the video model cannot make.
    """

    name = "replicate"

    def __init__(
        self,
        *,
        api_token: str | None = None,
        base_url: str | None = None,
        workspace: Workspace | None = None,
        workspace_root: str | Path | None = None,
        ledger_path: str | Path | None = None,
        allowed_hosts: Iterable[str] | None = None,
        image_model: str | None = None,
        video_model: str | None = None,
        music_model: str | None = None,
        planner_model: str | None = None,
        chunk_seconds: float | None = None,
        max_cost_usd: float | None = None,
        poll_interval_s: float = 1.0,
        max_poll_interval_s: float = 2.0,
        deadline_s: float | dict[str, float] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        wait_limit_s: float | None = None,
        request_timeout_s: float = 30.0,
        max_create_attempts: int = 6,
        backoff_initial_s: float = 1.0,
        max_backoff_s: float = 60.0,
        max_download_attempts: int = 4,
        max_download_bytes: int | dict[str, int] | None = None,
        lookup_skew_s: float = 120.0,
        lookup_max_pages: int = 20,
        transport: httpx.BaseTransport | None = None,
    ):
        base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        root = Path(workspace.root if workspace is not None else workspace_root or "data")
        self.ledger = Ledger(ledger_path or default_ledger_path(root))
        if allowed_hosts is None:
            allowed_hosts = DEFAULT_OUTPUT_HOSTS
        self.image = get_model(image_model or DEFAULTS["image"], "image")
        self.video = get_model(video_model or DEFAULTS["video"], "video")
        self.music = get_model(music_model or DEFAULTS["audio"], "audio")
        self.planner = get_model(planner_model or DEFAULTS["text"], "text")
        self.image_model, self.video_model = self.image.id, self.video.id
        self.music_model, self.planner_model = self.music.id, self.planner.id
        if chunk_seconds is None:
            chunk_seconds = self.video.chunk_seconds[0]
        if not any(abs(chunk_seconds - c) < 1e-9 for c in self.video.chunk_seconds):
            raise ValueError(f"{self.video.ref} makes chunks of {', '.join(f'{c:g}' for c in self.video.chunk_seconds)} s, "
                             f"not {chunk_seconds:g} s")
        self.chunk_seconds = float(chunk_seconds)
        self.fps = int(self.video.fps or 24)
        self.max_cost_usd = max_cost_usd
        max_poll_interval_s = max(poll_interval_s, max_poll_interval_s)
        if isinstance(deadline_s, (int, float)):
            self.deadlines_s = {k: float(deadline_s) for k in DEFAULT_DEADLINES_S}
        else:
            self.deadlines_s = {**DEFAULT_DEADLINES_S, **(deadline_s or {})}
        if isinstance(max_download_bytes, int):
            self.max_download_bytes = {k: max_download_bytes for k in DEFAULT_MAX_DOWNLOAD_BYTES}
        else:
            self.max_download_bytes = {**DEFAULT_MAX_DOWNLOAD_BYTES, **(max_download_bytes or {})}
        self.api = ReplicateApi(token=api_token, base_url=base_url,
                                request_timeout_s=request_timeout_s, poll_interval_s=poll_interval_s,
                                max_poll_interval_s=max_poll_interval_s, transport=transport)
        self.base_url = self.api.base_url
        self.downloader = Downloader(allowed_hosts, request_timeout_s=request_timeout_s,
                                     max_attempts=max_download_attempts, backoff_initial_s=backoff_initial_s,
                                     max_backoff_s=max_backoff_s)
        self.allowed_hosts = self.downloader.allowed_hosts
        self.uploads = Uploads(self.api, self.ledger, min_ttl_s=max(self.deadlines_s.values()) + 600.0)
        self.predictions = Predictions(self.api, self.ledger, deadlines_s=self.deadlines_s,
                                       poll_interval_s=poll_interval_s, max_poll_interval_s=max_poll_interval_s,
                                       max_create_attempts=max_create_attempts, backoff_initial_s=backoff_initial_s,
                                       max_backoff_s=max_backoff_s, lookup_skew_s=lookup_skew_s,
                                       lookup_max_pages=lookup_max_pages, normalize=self.uploads.normalize)
        waits = {k: float(wait_limit_s) if wait_limit_s is not None else 2 * d + 60.0
                 for k, d in self.deadlines_s.items()}
        self.jobs = Jobs(self.api, self.ledger, self.predictions, lease_s=lease_s, poll_interval_s=poll_interval_s,
                         max_poll_interval_s=max_poll_interval_s, wait_limit_s=waits)
        self.planner_cost_usd = 0.0
        """USD paid for planner calls by this provider instance (plans have no manifest to carry it)."""

    def __repr__(self) -> str:  # never the token
        return (f"ReplicateProvider(base_url={self.base_url!r}, image={self.image_model!r}, video={self.video_model!r}, "
                f"music={self.music_model!r}, chunk_seconds={self.chunk_seconds:g}, ledger={str(self.ledger.path)!r})")

    def close(self) -> None:
        """Close the API client's connections (a later call opens new ones)."""
        self.api.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --- Provider interface --------------------------------------------------------------------

    def render_image(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """A storyboard image from the image model, resized and center-cropped to the request's
        ``width`` x ``height`` (pixels) as PNG. Raises ProviderError / BudgetExceededError."""
        return self._run_media(request, get_model(request.model, "image"), scratch)

    def render_chunk(self, request: GenerationRequest, start_image: Path, scratch: Path) -> ProviderResult:
        """A video chunk from the image-to-video model, starting on ``start_image`` (a PNG data URI
        up to 256 KB, else an uploaded file's URL, in the model's image field). The chunk is the
        model's own length for ``params.duration_s`` (e.g. 81 frames at 16 fps for 5 s on Wan)."""
        return self._run_media(request, get_model(request.model, "video"), scratch, image=start_image)

    def render_music(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """A music track of ``params.duration_s`` seconds (prompt plus ``bpm``). Raises ProviderError
        (not retryable) when the model cannot make a track that long in one call."""
        model = get_model(request.model, "audio")
        seconds = float(request.params.get("duration_s", 0))
        if model.max_duration_s is not None and seconds > model.max_duration_s:
            raise ProviderError(f"{model.ref} makes at most {model.max_duration_s:g} s of music per call; "
                                f"this video needs {seconds:g} s (choose another music_model)", retryable=False)
        return self._run_media(request, model, scratch)

    def estimate_cost_usd(self, request: GenerationRequest) -> float:
        """Registry price of ``request`` before it is made (USD); 0 for models not in the registry."""
        try:
            return get_model(request.model).estimate_usd(request)
        except ValueError:
            return 0.0

    def check_models(self) -> dict[str, str]:
        """Ask the API that every configured model (and pinned version) exists. Returns
        {model id: "ok"}; raises ProviderError naming the first one that does not."""
        from replicate.exceptions import ReplicateError

        out = {}
        for m in (self.image, self.video, self.music, self.planner):
            try:
                model = self.api.client().models.get(m.ref)
                if m.version:
                    model.versions.get(m.version)
            except ReplicateError as exc:
                raise self.api.error(f"{m.id}: not available on Replicate (HTTP {exc.status}: {exc.detail})",
                                     retryable=False) from None
            out[m.id] = "ok"
        return out

    def plan_beats(self, brief: str, *, duration_s: float, style: str, max_beats: int, video_id: str | None = None,
                   max_cost_usd: float | None = None) -> list[BeatSpec]:
        """Ask the planner LLM for beats as JSON, validated with BeatSpec; durations are rescaled to
        sum to ``duration_s`` in 0.5 s steps, none under 5 s. Invalid JSON or beats get one
        corrective retry (a second paid call); a second failure raises ProviderError (not
        retryable) quoting the problem. A plan already paid for (by any process) is reused free. The
        calls are recorded in the ledger under ``video_id`` and checked against its budget
        (``max_cost_usd`` and the provider's own, the lower wins) like media calls."""
        run_text = functools.partial(self._run_text, video_id=video_id, max_cost_usd=max_cost_usd)
        return plan_beats(run_text, brief, duration_s=duration_s, style=style, max_beats=max_beats,
                          model_id=self.planner.id)

    # --- one call ------------------------------------------------------------------------------

    def _may_rebuy(self, kind: str):
        def may(cause: str, details: dict[str, Any]) -> bool:
            if cause == "too_large":
                return details.get("limit") is not None and self.max_download_bytes[kind] > int(details["limit"])
            if cause == "refused_host":
                return bool(details.get("origin")) and self.downloader.allows(f"{details['origin']}/")
            return False
        return may

    def _run_media(self, request: GenerationRequest, model: ReplicateModel, scratch: Path, *,
                   image: Path | None = None) -> ProviderResult:
        extra = {"image": self.uploads.image_input(image)} if image is not None else {}
        inp = model.build_input(request, **extra)

        def use(pred: dict[str, Any]) -> Used:
            try:
                path, facts = fetch_output(pred, model, request, scratch, self.downloader,
                                           max_bytes=self.max_download_bytes[model.kind])
            except Transient as exc:
                raise self.api.error(f"could not download the output of {model.id} prediction {pred.get('id')} "
                                     f"({exc}); a rerun fetches it again", retryable=True) from None
            cost = model.cost(request.params, output_seconds=facts.get("seconds"), metrics=pred.get("metrics") or {})
            return Used(value=path, cost_usd=cost.usd, output={"urls": output_urls(pred.get("output"))}, info={
                "billed_units": cost.units, "billed_unit": cost.unit, "price_usd": cost.price.usd,
                "price_source": cost.price.source, "predict_time_s": (pred.get("metrics") or {}).get("predict_time"),
                **facts.get("extra", {})})

        call = Call(key=request.cache_key(), model=model, inp=inp, estimate_usd=model.estimate_usd(request),
                    max_cost_usd=_min_budget(request.max_cost_usd, self.max_cost_usd),
                    video_id=request.labels.get("video_id"), labels=request.labels, input_sha256=sha256_json(inp),
                    use=use, may_rebuy=self._may_rebuy(model.kind))
        got = self.jobs.obtain(call)
        info = dict(got.info)
        if "price_source" not in info:  # adopted from the ledger without a fetch: the registry's price facts
            price = model.price(request.params)
            info.update(price_usd=price.usd, price_source=price.source)
        return ProviderResult(path=got.value, model=model.id, prediction_id=got.prediction_id, cost_usd=got.cost_usd,
                              reused_cost_usd=got.reused_cost_usd, paid_by=got.paid_by, extra={
                                  "replicate_model": model.ref, "replicate_version": model.version,
                                  "obtained_by": got.how, "create_attempts": got.creates, **info})

    def _run_text(self, prompt: str, *, video_id: str | None = None, max_cost_usd: float | None = None) -> str:
        """The planner model's answer to ``prompt`` (one paid call through the ledger, or free when
        the same prompt was answered before). Adds what it paid to ``planner_cost_usd``."""
        model = self.planner
        # A GenerationRequest only to carry the prompt to the registry (plans are not media; no Generator).
        request = GenerationRequest(media_type="image", provider=self.name, model=model.id, prompt=prompt,
                                    params={"task": "plan_beats"})
        inp = model.build_input(request, system_prompt=PLANNER_SYSTEM, max_tokens=2048)
        key = sha256_json({"task": "plan_beats", "provider": self.name, "model": model.id, "input": inp})

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
                    max_cost_usd=_min_budget(max_cost_usd, self.max_cost_usd), use=use, reuse=reuse)
        got = self.jobs.obtain(call)
        self.planner_cost_usd += got.cost_usd
        log.info("planner %s prediction %s (%s): $%.5f paid, $%.5f reused", model.id, got.prediction_id, got.how,
                 got.cost_usd, got.reused_cost_usd)
        return got.value
