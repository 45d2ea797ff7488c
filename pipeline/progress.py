"""Progress reports of the generating stages (``pipeline.stages``): which item (a chunk, a
storyboard image, a music track) started or finished, and what it cost. The Dagster assets log
them in the run log; nothing here imports Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal

from pipeline.costs import money
from pipeline.manifests import MediaManifest


@dataclass(frozen=True)
class Progress:
    """One item of a stage started or done: a chunk, a storyboard image, a music track.

    ``index``/``count``: the item's 1-based position among the stage's items ("chunk 2 of 3");
    ``kind``: what it is ("reference image chunk", "continuous chunk", "storyboard image", "music
    track"); ``seconds``: the medium's length in seconds (planned when started, decoded when done;
    None for images); ``medium``: the stored result (done only); ``elapsed_s``: wall seconds the
    item took (done only). ``message`` is the line the run log shows.
    """

    state: Literal["started", "done"]
    stage: str
    kind: str
    index: int
    count: int
    segment: str | None = None
    seconds: float | None = None
    medium: MediaManifest | None = None
    elapsed_s: float | None = None
    detail: str = ""

    @property
    def paid_usd(self) -> float:
        """USD this item's call paid in this run (0 for a cache hit or an adopted prediction)."""
        return self.medium.cost_usd if self.medium is not None else 0.0

    @property
    def reused_usd(self) -> float:
        """The price (USD) of an output this run used without paying for it (cache hit or adopted)."""
        if self.medium is None or self.medium.cost_usd > 0:
            return 0.0
        return self.medium.price_usd

    @property
    def message(self) -> str:
        """The run log line: "chunk 2 of 3 done: segment 001, continuous chunk, prediction ..., 5.000 s,
        paid $0.0500, reused $0.0000, cache hit: no, model ..., took 41.2 s"."""
        name = "chunk" if self.stage == "chunk_videos" else self.kind
        where = f"segment {self.segment}, " if self.segment is not None else ""
        head = f"{name} {self.index} of {self.count} {self.state}: {where}"
        head += f"{self.kind}, " if name != self.kind else ""
        if self.state == "started":
            length = f"{self.seconds:g} s" if self.seconds is not None else ""
            return head + ", ".join(x for x in (length, self.detail) if x)
        m = self.medium
        assert m is not None
        length = f"{m.duration_s:.3f} s" if m.duration_s is not None else f"{m.width}x{m.height}"
        parts = [f"prediction {m.prediction_id or '-'}", length, f"paid ${money(self.paid_usd)}",
                 f"reused ${money(self.reused_usd)}", f"cache hit: {'yes' if m.cache_hit else 'no'}",
                 f"model {m.model}"]
        if self.elapsed_s is not None:
            parts.append(f"took {self.elapsed_s:.1f} s")
        return head + ", ".join(parts)


ProgressCallback = Callable[[Progress], None]
"""Receives each ``Progress`` report of a stage (the Dagster assets log ``Progress.message``)."""


def report(progress: ProgressCallback | None, event: Progress) -> None:
    """Send ``event`` to ``progress`` (nothing when it is None)."""
    if progress is not None:
        progress(event)


def run_cost(media: Iterable[MediaManifest | None]) -> tuple[float, float]:
    """(paid USD, reused USD) of the media one run produced or took from the cache: ``paid`` is what
    the run's own calls paid (``cost_usd``), ``reused`` the price of outputs it used without paying
    (a cache hit or an adopted prediction: ``price_usd`` where ``cost_usd`` is 0). None entries
    count 0. Rounded to 1e-6."""
    paid = reused = 0.0
    for m in media:
        if m is None:
            continue
        paid += m.cost_usd
        reused += m.price_usd if m.cost_usd <= 0 else 0.0
    return round(paid, 6), round(reused, 6)
