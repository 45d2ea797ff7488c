"""The audio manifests: the music track and its finished audio (``MusicManifest``), one beat's
narration clip with its subtitle cues (``NarrationManifest``, ``Cue``), and the final video's
soundtrack (``SoundtrackManifest``: music, narration, their mix, or silence).

Times in seconds (a cue's relative to its clip or to the video, as each manifest says), money in
USD. ``pipeline.manifests`` re-exports them and lists them in ``AnyManifest``. Nothing here imports
Dagster.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.manifests_base import CostLine, MediaManifest, _Manifest, segment_key


class MusicManifest(_Manifest):
    """Output of ``music``: the generated track (at least as long as the video) and the final
    video's audio made from it.

    ``track``: ``audio`` finished for the plan (``pipeline.media.finish_music``: the video's
    duration, faded out, loudness-normalized, AAC at 48 kHz), which ``final_video`` muxes by stream
    copy. Its ``extra`` holds ``duration_s``, ``fade_out_s`` and ``loudness`` (loudnorm's pass 1
    measurement). None in manifests written before finishing moved here: ``final_video`` then
    finishes the music while muxing (``pipeline.media.mux_final``).
    """

    kind: Literal["music"] = "music"
    video_id: str
    audio: MediaManifest
    track: MediaManifest | None = None


class Cue(_Manifest):
    """One subtitle cue: ``text`` shown from ``start_s`` to ``end_s`` (seconds; relative to a
    narration clip's start in ``NarrationManifest``, to the video's start in ``SoundtrackManifest``)."""

    start_s: float
    end_s: float
    text: str


class NarrationManifest(_Manifest):
    """Output of ``narration``: one beat's spoken text as a clip. ``clip`` None: the beat is silent.
    ``cues``: its sentences with their times in the clip (``timing``: "synthesis", each sentence
    voiced on its own and measured; "silences", found at the pauses of one clip; "characters",
    spread by length). The clip plays from the beat's start; ``pause_s`` of silence follow it."""

    kind: Literal["narration"] = "narration"
    video_id: str
    index: int
    text: str | None
    start_s: float
    duration_s: float
    pause_s: float = 0.0
    clip: MediaManifest | None = None
    cues: list[Cue] = Field(default_factory=list)
    timing: str | None = None

    @property
    def segment(self) -> str:
        return segment_key(self.index)


class SoundtrackManifest(_Manifest):
    """Output of ``soundtrack``: the final video's audio, and the subtitle cues on the video's clock.

    ``method``: "music" (the music's finished track, as it is), "mix" (music ducked under the
    narration by sidechain compression, then loudness-normalized once), "narration" (the narration
    alone, loudness-normalized) or "silence". ``track`` is AAC at 48 kHz as long as the video, muxed
    by stream copy; None only when the music manifest predates finished tracks (``final_video`` then
    finishes the music itself). ``costs``: the narration clips' cost lines."""

    kind: Literal["soundtrack"] = "soundtrack"
    video_id: str
    method: Literal["music", "mix", "narration", "silence"]
    track: MediaManifest | None = None
    cues: list[Cue] = Field(default_factory=list)
    captions: Literal["soft", "burned", "none"] = "soft"
    costs: list["CostLine"] = Field(default_factory=list)


SoundtrackManifest.model_rebuild()
