"""``ReplicateProvider``: the options of the ``replicate`` provider and the Provider interface
(see the package doc for its modules and DESIGN.md for the call protocol)."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Iterable

import httpx

from pipeline.generation import GenerationRequest, ProviderResult
from pipeline.ledger import DEFAULT_LEASE_S, Ledger, default_ledger_path
from pipeline.models import DEFAULTS, REFERENCE_DEFAULT, get_model
from pipeline.providers.base import Provider, ProviderError
from pipeline.providers.replicate.calls import run_media, run_text
from pipeline.providers.replicate.client import DEFAULT_BASE_URL, NotFound, ReplicateApi, Transient
from pipeline.providers.replicate.download import DEFAULT_MAX_DOWNLOAD_BYTES, DEFAULT_OUTPUT_HOSTS, Downloader
from pipeline.providers.replicate.files import Uploads
from pipeline.providers.replicate.jobs import Jobs
from pipeline.providers.replicate.planner import plan_beats
from pipeline.providers.replicate.predictions import Predictions
from pipeline.providers.replicate.ratelimit import DEFAULT_MAX_READS_PER_MINUTE
from pipeline.spec import BeatSpec
from pipeline.store import Workspace

log = logging.getLogger("pipeline.providers.replicate")

DEFAULT_DEADLINES_S = {"image": 600.0, "video": 1800.0, "audio": 1200.0, "speech": 600.0, "text": 600.0}
"""Polling deadline per call, seconds, by model kind (also sent as ``Cancel-After``)."""


def deadlines(deadline_s: float | dict[str, float] | None) -> dict[str, float]:
    """``{kind: seconds}`` for every kind from ``deadline_s`` (one number for all kinds, or a dict
    of some kinds over DEFAULT_DEADLINES_S). Raises ValueError for an unknown kind or a deadline
    that is not positive."""
    if isinstance(deadline_s, (int, float)):
        given = {k: float(deadline_s) for k in DEFAULT_DEADLINES_S}
    else:
        given = {k: float(v) for k, v in (deadline_s or {}).items()}
    unknown = sorted(set(given) - set(DEFAULT_DEADLINES_S))
    if unknown:
        raise ValueError(f"deadline_s: unknown kind {', '.join(unknown)}; kinds are {', '.join(DEFAULT_DEADLINES_S)}")
    bad = [f"{k}={v:g}" for k, v in given.items() if not v > 0]
    if bad:
        raise ValueError(f"deadline_s: deadlines are positive seconds, not {', '.join(bad)}")
    return {**DEFAULT_DEADLINES_S, **given}


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
      the ledger is ``ledger_path`` (a SQLite file path, or a database URL such as
      ``postgresql+psycopg2://...`` shared by every machine: ``pipeline.ledger``), default
      ``<workspace root>/ledger.sqlite``, the root defaulting to ``data`` (relative to the working
      directory). Use the same data directory as the Generator's Workspace.
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
      A cap below the first interval is raised to it. Deployments set both in ``ReplicateSettings``
      (Dagster resource / run config, or ``build_definitions(replicate_max_poll_interval_s=...)``).
    - ``sync_wait_s`` (60; 0 off, at most 60, whole seconds): creates ask Replicate to hold their answer until the
      prediction ends or that long (``Prefer: wait``), so no polling lateness; why 60, and how: ``predictions``.
    - ``deadline_s``: polling deadline, seconds: one number, or a dict by kind (image/video/audio/text);
      defaults DEFAULT_DEADLINES_S. On expiry the prediction is canceled; creates send it as
      ``Cancel-After`` (at least 5 s, the API's minimum) so Replicate cancels it by itself if this
      process dies. ``deadlines_s`` holds the value per kind.
    - ``max_reads_per_minute`` (1500): this process's share of the account's 3000 reads a minute
      (polls, lookups, file checks), shared by every provider of the process with the same API root
      and token; see ``ratelimit`` and ``poller``.
    - ``lease_s`` (30.0): ledger ownership lease, seconds, renewed every third of it while working.
      ``wait_limit_s``: the longest wait for another process's job, seconds (default twice the deadline plus 60 s).
    - ``max_create_attempts`` (6), ``backoff_initial_s`` (1.0), ``max_backoff_s`` (60.0): create
      retries and exponential backoff with jitter, seconds (a 429's Retry-After takes precedence).
    - ``max_download_attempts`` (4), ``max_download_bytes``: an int for every kind or a dict by kind; default
      DEFAULT_MAX_DOWNLOAD_BYTES. ``request_timeout_s`` (30.0): HTTP timeout per request (a create: plus the sync wait).
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
        sync_wait_s: int = 60,
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
        max_reads_per_minute: float = DEFAULT_MAX_READS_PER_MINUTE,
        transport: httpx.BaseTransport | None = None,
    ):
        base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        root = Path(workspace.root if workspace is not None else workspace_root or "data")
        self.ledger = Ledger(ledger_path or default_ledger_path(root))
        allowed_hosts = DEFAULT_OUTPUT_HOSTS if allowed_hosts is None else allowed_hosts
        self.image = get_model(image_model or DEFAULTS["image"], "image")
        self.video = get_model(video_model or DEFAULTS["video"], "video")
        self.music = get_model(music_model or DEFAULTS["audio"], "audio")
        self.planner = get_model(planner_model or DEFAULTS["text"], "text")
        self.speech = get_model(DEFAULTS["speech"], "speech")
        self.image_model, self.video_model, self.narration_model = self.image.id, self.video.id, self.speech.id
        self.reference = self.image if self.image.max_reference_images else get_model(REFERENCE_DEFAULT, "image")
        self.reference_image_model = self.reference.id
        """Makes storyboards from character references: the image model if it takes them, else REFERENCE_DEFAULT."""
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
        self.deadlines_s = deadlines(deadline_s)
        if isinstance(max_download_bytes, int):
            self.max_download_bytes = {k: max_download_bytes for k in DEFAULT_MAX_DOWNLOAD_BYTES}
        else:
            self.max_download_bytes = {**DEFAULT_MAX_DOWNLOAD_BYTES, **(max_download_bytes or {})}
        self.api = ReplicateApi(token=api_token, base_url=base_url,
                                request_timeout_s=request_timeout_s, poll_interval_s=poll_interval_s,
                                max_poll_interval_s=max_poll_interval_s, max_reads_per_minute=max_reads_per_minute,
                                transport=transport)
        self.base_url = self.api.base_url
        self.downloader = Downloader(allowed_hosts, request_timeout_s=request_timeout_s,
                                     max_attempts=max_download_attempts, backoff_initial_s=backoff_initial_s,
                                     max_backoff_s=max_backoff_s)
        self.allowed_hosts = self.downloader.allowed_hosts
        self.uploads = Uploads(self.api, self.ledger, min_ttl_s=max(self.deadlines_s.values()) + 600.0)
        self.predictions = Predictions(self.api, self.ledger, deadlines_s=self.deadlines_s,
                                       poll_interval_s=poll_interval_s, max_poll_interval_s=max_poll_interval_s,
                                       max_create_attempts=max_create_attempts, backoff_initial_s=backoff_initial_s,
                                       max_backoff_s=max_backoff_s, lookup_skew_s=lookup_skew_s, sync_wait_s=sync_wait_s,
                                       lookup_max_pages=lookup_max_pages, normalize=self.uploads.normalize)
        waits = {k: float(wait_limit_s) if wait_limit_s is not None else 2 * d + 60.0
                 for k, d in self.deadlines_s.items()}
        self.jobs = Jobs(self.api, self.ledger, self.predictions, lease_s=lease_s, poll_interval_s=poll_interval_s,
                         max_poll_interval_s=max_poll_interval_s, wait_limit_s=waits)
        self.planner_cost_usd = 0.0
        """USD paid for planner calls by this provider instance (plans have no manifest to carry it)."""

    def __repr__(self) -> str:  # never the token
        return (f"ReplicateProvider(base_url={self.base_url!r}, image={self.image_model!r}, video={self.video_model!r}, "
                f"music={self.music_model!r}, chunk_seconds={self.chunk_seconds:g}, ledger={self.ledger.url!r})")

    def close(self) -> None:
        """Close the API and download clients' connections (a later call opens new ones)."""
        self.api.close()
        self.downloader.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --- Provider interface --------------------------------------------------------------------

    def render_image(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """A storyboard image from the image model, resized and center-cropped to the request's
        ``width`` x ``height`` (pixels) as PNG. Raises ProviderError / BudgetExceededError."""
        return run_media(self, request, get_model(request.model, "image"), scratch)

    def render_image_with_references(self, request: GenerationRequest, references: list[tuple[str, Path]],
                                     scratch: Path) -> ProviderResult:
        """A storyboard image from the reference model (``request.model``, normally
        ``reference_image_model``) given the characters' reference images (``references``, in
        order: each a PNG data URI up to 256 KB, else an uploaded file's URL, in the model's
        ``references`` field), resized and center-cropped to the request's size as PNG. Raises
        ProviderError (not retryable) when the model takes no or fewer reference images."""
        model = get_model(request.model, "image")
        if len(references) > model.max_reference_images:
            raise ProviderError(f"{model.ref} takes at most {model.max_reference_images} reference images; this "
                                f"storyboard has {len(references)} ({', '.join(n for n, _ in references)})",
                                retryable=False)
        return run_media(self, request, model, scratch, references=[path for _, path in references])

    def render_chunk(self, request: GenerationRequest, start_image: Path, scratch: Path) -> ProviderResult:
        """A video chunk from the image-to-video model, starting on ``start_image`` (a PNG data URI
        up to 256 KB, else an uploaded file's URL, in the model's image field). The chunk is the
        model's own length for ``params.duration_s`` (e.g. 81 frames at 16 fps for 5 s on Wan). A ratio
        the model cannot make (1:1 on Wan) is generated at its closest ratio from the start image
        padded to it, and centre-cropped back; ``extra["cropped_from"]`` names the generated ratio."""
        return run_media(self, request, get_model(request.model, "video"), scratch, image=start_image)

    def render_music(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """A music track of ``params.duration_s`` seconds (prompt plus ``bpm``). Raises ProviderError
        (not retryable) when the model cannot make a track that long in one call."""
        model = get_model(request.model, "audio")
        seconds = float(request.params.get("duration_s", 0))
        if model.max_duration_s is not None and seconds > model.max_duration_s:
            raise ProviderError(f"{model.ref} makes at most {model.max_duration_s:g} s of music per call; "
                                f"this video needs {seconds:g} s (choose another music_model)", retryable=False)
        return run_media(self, request, model, scratch)

    # --- narration ---------------------------------------------------------------------------------

    default_voice = "af_bella"
    KOKORO_VOICES = ("af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore", "af_nicole", "af_nova", "af_river",
                     "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael",
                     "am_onyx", "am_puck", "bf_alice", "bf_emma", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable",
                     "bm_george", "bm_lewis")
    """Kokoro v1.0's English voices (its schema's ``voice`` enum; af/am American, bf/bm British)."""

    def voices(self) -> list[str]:
        return list(self.KOKORO_VOICES)

    def resolve_voice(self, voice: str | None) -> str:
        voice = voice or self.default_voice
        if voice not in self.KOKORO_VOICES:
            raise ValueError(f"narration.voice: {voice!r} is not a voice of {self.speech.ref}; voices: "
                             + ", ".join(self.KOKORO_VOICES))
        return voice

    def speech_params(self, voice: str) -> dict:
        return {"voice": voice, "speed": 1.0}

    def render_speech(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """A narration clip from the speech model (one paid call for the whole text); each
        sentence's cue is found at the clip's pauses (``pipeline.narration.cues_from_silences``)."""
        from pipeline import narration

        result = run_media(self, request, get_model(request.model, "speech"), scratch)
        samples, rate = narration.read_mono(result.path)
        cues, timing = narration.cues_from_silences(narration.sentences(request.prompt), samples, rate)
        result.extra.update(cues=[c.model_dump() for c in cues], timing=timing, voice=request.params.get("voice"))
        return result

    def estimate_cost_usd(self, request: GenerationRequest) -> float:
        """Registry price of ``request`` before it is made (USD); 0 for models not in the registry."""
        try:
            return get_model(request.model).estimate_usd(request)
        except ValueError:
            return 0.0

    def check_models(self) -> dict[str, str]:
        """Ask the API that every configured model (the reference model included) and pinned version exists. Returns
        {model id: "ok"}; raises ProviderError naming the first one that does not (or could not be asked)."""
        out = {}
        models = {m.id: m for m in (self.image, self.reference, self.video, self.music, self.speech, self.planner)}
        for m in models.values():
            until = time.monotonic() + 2 * self.api.request_timeout_s
            try:  # GET /v1/models/{ref} (and .../versions/{version})
                self.api.get_json(f"/v1/models/{m.ref}", what=f"model {m.ref}", until=until)
                if m.version:
                    self.api.get_json(f"/v1/models/{m.ref}/versions/{m.version}", what=f"version {m.version}",
                                      until=until)
            except (NotFound, Transient) as exc:
                raise self.api.error(f"{m.id}: not available on Replicate ({exc})", retryable=False) from None
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
        ask = functools.partial(run_text, self, video_id=video_id, max_cost_usd=max_cost_usd)
        return plan_beats(ask, brief, duration_s=duration_s, style=style, max_beats=max_beats,
                          model_id=self.planner.id)
