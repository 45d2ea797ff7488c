"""Asset jobs: the units of work the CLI, sensors and schedules request.

The jobs name no executor: they take the ``Definitions``' executor, chosen in one place
(``pipeline.definitions.executor_def``, ``$PIPELINE_EXECUTOR``; in-process by default)."""

from __future__ import annotations

import dagster as dg

from pipeline.defs.assets import final_video, music, segment_assets, stitched_video, video_spec
from pipeline.defs.character_assets import characters
from pipeline.defs.hooks import handoff_hook
from pipeline.defs.narration_assets import narration, soundtrack
from pipeline.defs.partitions import per_segment, videos

HOOKS = {handoff_hook}
"""Every job's hooks: the handoff (``pipeline.defs.hooks``): a plan, segment or music run that ends its
stage queues the next stage's runs itself; the sensors stay as the backstop."""

plan_video_job = dg.define_asset_job("plan_video", selection=[video_spec, characters], partitions_def=videos,
                                     hooks=HOOKS,
                                     description="Validate and plan one video (video_spec), then make its character "
                                                 "reference images (characters).")
render_segment_job = dg.define_asset_job(
    "render_segment", selection=[narration, *segment_assets], partitions_def=per_segment, hooks=HOOKS,
    description="Render one beat: narration -> beats -> storyboard_images -> chunk_videos for one (video, segment).")
render_music_job = dg.define_asset_job("render_music", selection=[music], partitions_def=videos, hooks=HOOKS,
                                       description="Generate one video's music track.")
assemble_video_job = dg.define_asset_job("assemble_video", selection=[stitched_video, soundtrack, final_video],
                                         partitions_def=videos,
                                         description="Stitch a video's chunks, make its soundtrack (music, narration) "
                                                     "and mux both into the final video.")

all_jobs = [plan_video_job, render_segment_job, render_music_job, assemble_video_job]
