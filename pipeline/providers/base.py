"""The provider interface: what every generation backend (``local``, ``replicate``) implements.

A provider turns GenerationRequests into files; it knows nothing of caching, stores or Dagster
(``pipeline.generation.Generator`` wraps every call). Both providers go through this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from pipeline.generation import GenerationRequest, ProviderResult
from pipeline.spec import BeatSpec


class ProviderError(RuntimeError):
    """A provider call failed. ``retryable`` says whether trying again may succeed."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Provider(ABC):
    """A generation backend.

    Attributes: ``name``; the model ids it uses (``image_model``, ``video_model``, ``music_model``,
    ``planner_model``, and ``reference_image_model`` for storyboards made from character reference
    images, when the provider can make them); ``chunk_seconds``, the clip length its video model generates per call
    (drives the chunk plan); ``fps``, its video model's frame rate.
    """

    name: str
    image_model: str
    video_model: str
    music_model: str
    planner_model: str
    chunk_seconds: float
    fps: int
    planner_cost_usd: float = 0.0
    """Running total (USD) this instance paid for planning; ``plan_video`` records the difference."""

    @abstractmethod
    def render_image(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """Generate a storyboard image for ``request`` (params: width, height in pixels) into ``scratch``."""

    def render_image_with_references(self, request: GenerationRequest, references: list[tuple[str, Path]],
                                     scratch: Path) -> ProviderResult:
        """Generate a storyboard image for ``request`` that shows the named characters as they look
        in their reference images (``references``: ``(name, image file)`` pairs, at most
        ``pipeline.spec_characters.MAX_CHARACTERS``), made by ``reference_image_model``. Providers
        that cannot raise ProviderError (not retryable): a storyboard that ignored its references
        would break the promise its cache key makes."""
        raise ProviderError(f"the {self.name} provider cannot generate images from character reference images",
                            retryable=False)

    @abstractmethod
    def render_chunk(self, request: GenerationRequest, start_image: Path, scratch: Path) -> ProviderResult:
        """Generate a video chunk starting on ``start_image`` (params: width, height, fps, duration_s)."""

    @abstractmethod
    def render_music(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """Generate a music track (params: bpm, duration_s in seconds) into ``scratch``."""

    @abstractmethod
    def plan_beats(self, brief: str, *, duration_s: float, style: str, max_beats: int, video_id: str | None = None,
                   max_cost_usd: float | None = None) -> list[BeatSpec]:
        """Split a free-text brief into beats whose durations sum to ``duration_s``, none under 5 s.
        A paid planner records its call under ``video_id`` and refuses it past ``max_cost_usd`` (USD)."""

    # --- narration (optional: a provider without text to speech refuses narrated videos) ------------

    narration_model: str = ""
    """The text-to-speech model's id ("" when the provider has none)."""
    default_voice: str = ""

    def voices(self) -> list[str]:
        """The voice names a spec's ``narration.voice`` may give for this provider."""
        return []

    def resolve_voice(self, voice: str | None) -> str:
        """The voice a narration is spoken with: ``voice``, or the provider's default for None.
        Raises ValueError naming the voices there are when this provider has no such voice."""
        raise ValueError(f"the {self.name} provider has no text to speech; narration needs one")

    def speech_params(self, voice: str) -> dict:
        """Request ``params`` that identify how ``voice`` speaks (part of a clip's cache key)."""
        return {"voice": voice}

    def render_speech(self, request: GenerationRequest, scratch: Path) -> ProviderResult:
        """Voice ``request.prompt`` (params: voice) into an audio file in ``scratch``. The result's
        ``extra`` holds ``cues`` (each sentence's ``start_s``/``end_s`` in the clip, and ``text``) and
        ``timing`` (how they were found: ``pipeline.narration``). Raises ProviderError."""
        raise ProviderError(f"the {self.name} provider has no text to speech", retryable=False)

    def estimate_cost_usd(self, request: GenerationRequest) -> float:
        """Price of ``request`` before it is made (USD). Free providers return 0."""
        return 0.0
