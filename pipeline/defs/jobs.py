"""Asset jobs: the units of work the CLI, sensors and schedules request."""

from __future__ import annotations

import dagster as dg

from pipeline.defs.assets import final_video, music, segment_assets, stitched_video, video_spec
from pipeline.defs.narration_assets import narration, soundtrack
from pipeline.defs.partitions import per_segment, videos

EXECUTOR = dg.in_process_executor
"""Each job's steps form one chain (beats -> storyboard_images -> chunk_videos, stitched_video ->
final_video), so the default multiprocess executor bought no parallelism, only a Python process
per step (~3 per run, seconds each on a busy 2-core machine). Step retry policies still apply."""

plan_video_job = dg.define_asset_job("plan_video", selection=[video_spec], partitions_def=videos,
                                     executor_def=EXECUTOR, description="Validate and plan one video (video_spec).")
render_segment_job = dg.define_asset_job(
    "render_segment", selection=[narration, *segment_assets], partitions_def=per_segment, executor_def=EXECUTOR,
    description="Render one beat: narration -> beats -> storyboard_images -> chunk_videos for one (video, segment).")
render_music_job = dg.define_asset_job("render_music", selection=[music], partitions_def=videos, executor_def=EXECUTOR,
                                       description="Generate one video's music track.")
assemble_video_job = dg.define_asset_job("assemble_video", selection=[stitched_video, soundtrack, final_video],
                                         partitions_def=videos, executor_def=EXECUTOR,
                                         description="Stitch a video's chunks, make its soundtrack (music, narration) "
                                                     "and mux both into the final video.")

all_jobs = [plan_video_job, render_segment_job, render_music_job, assemble_video_job]
