"""What a video cost: what its own calls paid, and what it reused (DESIGN.md "Cost").

A video's cost table has one line per medium its manifests use (each character reference image,
each storyboard image, each chunk, the music track) and one for the brief plan, if a planner made it. Each line says

- ``paid_usd``: what this video's calls paid for it, in this run or an earlier attempt (a chunk paid
  by a killed attempt is a cache hit on the rerun, and still paid by this video);
- ``reused_usd``: the price of an output it used without paying (a cache hit or an adopted
  prediction that ``paid_by``, another video, paid for; or an output used twice in one video).

Every prediction the ledger says this video paid for that no line uses (a failed or unusable
prediction, the calls of a superseded spec version) is a line of its own (``source="ledger"``).
Paid lines take their amount from the ledger, so with a ledger

    VideoCosts.paid_usd == sum(p.cost_usd for p in ledger.predictions(video_id=video))

except for one documented case: a medium the manifests say this video paid for that the ledger does
not know (note "not in the ledger": a moved or deleted ledger). A brief planner records its calls
under the video it plans, so the plan line takes its amount from the ledger too (ledgers written
before that carry the planner's calls under no video; the plan line then falls back to
``VideoPlan.planning_cost_usd``).
Without a ledger (the local provider), the manifests' ``price_usd``/``paid_by`` decide; all 0.

Tables are DataFrames with real dtypes (segment keys are strings, "000"), rendered with empty cells
for missing values, never ``nan`` (``pipeline.cost_tables``, with ``window_costs``; re-exported
here). CLI reports: ``pipeline.cost_report``. No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from pipeline.cost_tables import (  # noqa: F401 (re-exported: they were defined here)
    COLUMNS,
    WINDOW_COLUMNS,
    _cell,
    cost_frame,
    display_rows,
    markdown,
    window_costs,
)
from pipeline.ledger import Ledger, default_ledger_path
from pipeline.manifests import (
    CharactersManifest,
    ChunkVideosManifest,
    CostLine,
    FinalManifest,
    MediaManifest,
    MusicManifest,
    NarrationManifest,
    StitchedManifest,
    StoryboardManifest,
    VideoPlan,
    load_manifest,
    money,  # noqa: F401 (re-exported: costs.money is the name callers use)
    segment_key,
)
from pipeline.store import TextObjects, text_objects

FAILED_STATUSES = ("failed", "canceled", "aborted", "not_found")
"""Prediction statuses that end without output."""


# --- lines from manifests ----------------------------------------------------------------------

def media_line(video_id: str, medium: MediaManifest, *, stage: str, segment: str | None, item: str,
               units: float | None, unit: str | None) -> CostLine:
    """The cost line of one medium a video uses, from its manifest alone (no ledger).

    Price (USD) is ``medium.price_usd`` (``cost_usd`` if that is 0). Paid by ``video_id`` when the
    manifest names it as payer, or names no payer but this materialization paid; else reused
    (payer ``medium.paid_by``, possibly None for manifests older than that field). Free: all 0.
    """
    price, payer = (medium.price_usd if medium.price_usd > 0 else medium.cost_usd), medium.paid_by
    base = dict(stage=stage, segment=segment, item=item, provider=medium.provider, model=medium.model, units=units,
                unit=unit, cache_hit=medium.cache_hit, prediction_id=medium.prediction_id, cache_key=medium.cache_key)
    if price <= 0:
        return CostLine(**base)
    if payer == video_id or (payer is None and medium.cost_usd > 0):
        note = "cache hit: paid by an earlier run of this video" if medium.cache_hit else ""
        return CostLine(**base, paid_usd=price, paid_by=video_id, note=note)
    how = "cache hit" if medium.cache_hit else "adopted prediction"
    return CostLine(**base, reused_usd=price, paid_by=payer, note=f"{how}: paid by {payer or 'another video'}")


def segment_lines(cv: ChunkVideosManifest) -> list[CostLine]:
    """Lines of one segment: its storyboard image (1 image), then each chunk (video seconds)."""
    seg = segment_key(cv.index)
    lines = [media_line(cv.video_id, cv.storyboard, stage="storyboard_images", segment=seg,
                        item="storyboard image", units=1, unit="image")]
    for c in cv.chunks:
        lines.append(media_line(cv.video_id, c.video, stage="chunk_videos", segment=seg,
                                item=f"chunk {c.plan.index} ({c.plan.chunk_type.replace('_', ' ')})",
                                units=c.video.duration_s or 0.0, unit="video s"))
    return lines


def music_line(video_id: str, music: MusicManifest) -> CostLine:
    """The music track's line (audio seconds)."""
    a = music.audio
    item = "silent track (no music)" if a.provider == "ffmpeg" else "music track"
    return media_line(video_id, a, stage="music", segment=None, item=item, units=a.duration_s or 0.0,
                      unit="audio s")


def character_lines(video_id: str, characters: CharactersManifest | None) -> list[CostLine]:
    """One line per character reference image (1 image each; a user's image is free), spec order."""
    if characters is None:
        return []
    return [media_line(video_id, ref.image, stage="characters", segment=None, item=f"character reference {name}",
                       units=1, unit="image") for name, ref in characters.references.items()]


def plan_line(plan: VideoPlan) -> CostLine | None:
    """The brief plan's line (None when the spec gave explicit beats). Paid: ``planning_cost_usd``."""
    if not plan.planned_by.startswith("planner:"):
        return None
    cost = plan.planning_cost_usd
    return CostLine(stage="video_spec", segment=None, item="beat plan from the brief", provider=plan.provider,
                    model=plan.planned_by.removeprefix("planner:"), units=1, unit="plan", paid_usd=cost,
                    paid_by=plan.video_id if cost > 0 else None)


def manifest_lines(video_id: str, *, plan: VideoPlan | None = None, chunk_sets: Iterable[ChunkVideosManifest] = (),
                   storyboards: Iterable[StoryboardManifest] = (),
                   music: MusicManifest | None = None, characters: CharactersManifest | None = None,
                   narrations: Iterable[NarrationManifest] = ()) -> list[CostLine]:
    """Lines of whatever manifests exist, in table order: plan, character references, each segment
    (storyboard image, then chunks; a storyboard without chunk_videos alone), the narration clips,
    music. Segments in key order."""
    lines: list[CostLine] = []
    if plan is not None and (line := plan_line(plan)) is not None:
        lines.append(line)
    lines += character_lines(video_id, characters)
    by_segment: dict[int, list[CostLine]] = {cv.index: segment_lines(cv) for cv in chunk_sets}
    for b in storyboards:  # a segment with a storyboard image but no chunk_videos yet
        by_segment.setdefault(b.index, [media_line(video_id, b.image, stage="storyboard_images",
                                                   segment=segment_key(b.index), item="storyboard image",
                                                   units=1, unit="image")])
    for index in sorted(by_segment):
        lines += by_segment[index]
    lines += [media_line(video_id, n.clip, stage="narration", segment=segment_key(n.index), item="narration clip",
                         units=n.clip.duration_s or 0.0, unit="audio s")
              for n in sorted(narrations, key=lambda n: n.index) if n.clip is not None]
    if music is not None:
        lines.append(music_line(video_id, music))
    return lines


# --- the ledger --------------------------------------------------------------------------------

def open_ledger(data_dir: str | Path, provider: Any = None, *, url: str | None = None) -> Ledger | None:
    """The ledger costs are reconciled with: ``provider.ledger`` if the provider has one, else the
    ledger at ``url`` (the deployment's ``PipelineResource.ledger_url``, e.g. PostgreSQL) if given,
    else the data directory's ledger (``<data_dir>/ledger.sqlite``) if that file exists, else None."""
    ledger = getattr(provider, "ledger", None)
    if isinstance(ledger, Ledger):
        return ledger
    if url:
        return Ledger(url)
    path = default_ledger_path(data_dir)
    return Ledger(path) if path.exists() else None


def _ledger_reason(status: str, *, regenerated: bool, causes: Iterable[str]) -> str:
    if status in FAILED_STATUSES:
        return f"prediction {status}: no output"
    if status in ("starting", "processing"):
        return "prediction still in flight"
    causes = ", ".join(causes)
    if regenerated or causes:
        return (f"paid, but its output was unusable{f' ({causes})' if causes else ''}"
                + ("; generated again" if regenerated else ""))
    return "paid, output not used by this video's manifests (an earlier spec version, or replaced)"


def reconcile(video_id: str, lines: Iterable[CostLine], ledger: Ledger | None) -> list[CostLine]:
    """``lines`` (manifest lines; earlier ledger lines are dropped and recomputed) checked against the
    ledger, plus one ledger line per prediction of ``video_id`` no line uses.

    A line whose prediction the ledger records for ``video_id`` is paid the ledger's cost (the first
    line using it; a second use is reused from this video). One recorded for another video is
    reused, paid by that video. The plan line takes this video's planner predictions, if the ledger
    has any. Without a ledger the lines are returned as they are (minus old ledger lines).
    """
    lines = [line for line in lines if line.source != "ledger"]
    if ledger is None:
        return lines
    own = {p.prediction_id: p for p in ledger.predictions(video_id=video_id)}
    jobs = {j.key: j for j in ledger.jobs(video_id)}
    claimed: set[str] = set()
    out: list[CostLine] = []
    for line in lines:
        price = line.paid_usd + line.reused_usd
        pid = line.prediction_id
        if line.stage == "video_spec" and pid is None:
            planner = [p for p in own.values() if p.model == line.model and p.prediction_id not in claimed]
            if planner:
                claimed.update(p.prediction_id for p in planner)
                paid = round(sum(p.cost_usd for p in planner), 6)
                line = line.model_copy(update={"paid_usd": paid, "reused_usd": 0.0,
                                               "paid_by": video_id if paid > 0 else None})
            out.append(line)
            continue
        if pid is None:
            out.append(line)
            continue
        record = own.get(pid)
        if record is not None and pid not in claimed:
            claimed.add(pid)
            note = "cache hit: paid by an earlier run of this video" if line.cache_hit and record.cost_usd > 0 else ""
            out.append(line.model_copy(update={"paid_usd": record.cost_usd, "reused_usd": 0.0,
                                               "paid_by": video_id if record.cost_usd > 0 else None, "note": note}))
        elif record is not None:
            out.append(line.model_copy(update={"paid_usd": 0.0, "reused_usd": price or record.cost_usd,
                                               "paid_by": video_id, "note": "same output as an earlier line"}))
        else:
            found = [p for p in ledger.predictions(key=line.cache_key) if p.prediction_id == pid] \
                if line.cache_key else []
            payer = found[0].video_id if found else line.paid_by
            price = price or (found[0].cost_usd if found else 0.0)
            if not found and payer == video_id and price > 0:
                out.append(line.model_copy(update={"note": "not in the ledger"}))
            elif price > 0:
                how = "cache hit" if line.cache_hit else "adopted prediction"
                out.append(line.model_copy(update={"paid_usd": 0.0, "reused_usd": price, "paid_by": payer,
                                                   "note": f"{how}: paid by {payer or 'another video'}"}))
            else:
                out.append(line)
    used_keys = {line.cache_key for line in out if line.prediction_id in claimed}
    for p in own.values():
        if p.prediction_id in claimed:
            continue
        job = jobs.get(p.key)
        labels = job.labels if job is not None else {}
        reason = _ledger_reason(p.status, regenerated=p.key in used_keys,
                                causes=getattr(job, "unusable", None) or {})
        out.append(CostLine(stage=labels.get("stage", "unknown"), segment=labels.get("segment"),
                            item=f"prediction {p.prediction_id} ({p.status})", provider=p.provider, model=p.model,
                            paid_usd=p.cost_usd, paid_by=video_id if p.cost_usd > 0 else None,
                            prediction_id=p.prediction_id, cache_key=p.key, source="ledger", note=reason))
    return out


def final_costs(plan: VideoPlan, stitched: StitchedManifest, music: MusicManifest,
                ledger: Ledger | None, characters: CharactersManifest | None = None,
                extra: Iterable[CostLine] = ()) -> list[CostLine]:
    """The final video's cost lines: the plan, the character references, the stitched segments'
    lines, ``extra`` (the narration clips' lines), the music, reconciled with ``ledger`` (see
    ``reconcile``)."""
    lines = [line for line in [plan_line(plan)] if line is not None]
    lines += character_lines(plan.video_id, characters)
    lines += [line for line in stitched.costs if line.source == "manifest"]
    lines += [line for line in extra if line.source == "manifest"]
    lines.append(music_line(plan.video_id, music))
    return reconcile(plan.video_id, lines, ledger)


def totals(lines: Iterable[CostLine]) -> tuple[float, float]:
    """(paid USD, reused USD) of ``lines``, rounded to 1e-6."""
    lines = list(lines)
    return round(sum(c.paid_usd for c in lines), 6), round(sum(c.reused_usd for c in lines), 6)


# --- a video's table ---------------------------------------------------------------------------

@dataclass
class VideoCosts:
    """A video's cost lines and totals (USD).

    ``finished``: the lines come from the final_video manifest (else from whichever segment, music
    and plan manifests exist). ``ledger_usd``: the ledger's spend for the video (None without a
    ledger). ``missing_segments``: real segments with no manifest yet (unfinished videos).
    """

    video_id: str
    lines: list[CostLine]
    finished: bool
    ledger_usd: float | None = None
    missing_segments: list[str] = field(default_factory=list)

    @property
    def paid_usd(self) -> float:
        """What this video's calls paid, every attempt included (USD)."""
        return totals(self.lines)[0]

    @property
    def reused_usd(self) -> float:
        """The price of outputs this video used without paying for them (USD)."""
        return totals(self.lines)[1]

    @property
    def table(self) -> pd.DataFrame:
        """The lines as a DataFrame (``COLUMNS``), without a total row."""
        return cost_frame(self.lines)

    def by_segment(self) -> dict[str | None, tuple[float, float]]:
        """{segment key (None for video-level lines): (paid USD, reused USD)}."""
        out: dict[str | None, tuple[float, float]] = {}
        for line in self.lines:
            paid, reused = out.get(line.segment, (0.0, 0.0))
            out[line.segment] = (round(paid + line.paid_usd, 6), round(reused + line.reused_usd, 6))
        return out

    def markdown(self) -> str:
        """The table as markdown with a total row (empty cells for missing values)."""
        return markdown(self.table)


def _read(objects: TextObjects, key: str) -> Any:
    return None if (text := objects.read(key)) is None else load_manifest(text)


def video_costs(video_id: str, *, manifests: str | Path | TextObjects, ledger: Ledger | None) -> VideoCosts:
    """The cost table of ``video_id`` from its stored manifests and the ledger.

    ``manifests``: the manifests base (``PipelineResource.manifests_dir``: a directory, an ``s3://``
    string or TextObjects), laid out ``<asset>/<video>[/<segment>].json``. Uses the final_video
    manifest's lines when there is one (unless it predates per-line cache keys: lines without
    prediction ids cannot be matched with the ledger); otherwise the plan, each real segment's
    chunk_videos (or, if missing, its storyboard image), narration clips and the music that exist. Raises
    LookupError if the video has neither a final_video nor a video_spec manifest.
    """
    objects = text_objects(manifests)
    final = _read(objects, f"final_video/{video_id}.json")
    ledger_usd = None if ledger is None else round(sum(p.cost_usd for p in ledger.predictions(video_id=video_id)), 6)
    finished = isinstance(final, FinalManifest)
    if finished and all(c.cache_key or c.stage == "video_spec" for c in final.costs if c.source == "manifest"):
        return VideoCosts(video_id, reconcile(video_id, final.costs, ledger), True, ledger_usd)
    plan = _read(objects, f"video_spec/{video_id}.json")
    if not isinstance(plan, VideoPlan):
        raise LookupError(f"video {video_id!r} has no video_spec manifest (unknown video, or not planned yet)")
    chunk_sets, boards, missing = [], [], []
    for seg in plan.segment_keys:
        cv = _read(objects, f"chunk_videos/{video_id}/{seg}.json")
        if isinstance(cv, ChunkVideosManifest):
            chunk_sets.append(cv)
            continue
        missing.append(seg)
        board = _read(objects, f"storyboard_images/{video_id}/{seg}.json")
        if isinstance(board, StoryboardManifest):
            boards.append(board)
    music = _read(objects, f"music/{video_id}.json")
    cast = _read(objects, f"characters/{video_id}.json")
    voiced = [n for n in (_read(objects, f"narration/{video_id}/{seg}.json") for seg in plan.segment_keys)
              if isinstance(n, NarrationManifest)] if plan.narration is not None else []
    lines = manifest_lines(video_id, plan=plan, chunk_sets=chunk_sets, storyboards=boards,
                           music=music if isinstance(music, MusicManifest) else None,
                           characters=cast if isinstance(cast, CharactersManifest) and
                           cast.spec_sha256 == plan.spec_sha256 else None, narrations=voiced)
    return VideoCosts(video_id, reconcile(video_id, lines, ledger), finished, ledger_usd, missing)
