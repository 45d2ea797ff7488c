"""A client process for multi-process tests: runs a fixed set of Replicate generations through
``Generator.generate`` + ``ReplicateProvider`` on a shared data directory and writes what each call
got (one JSON object per request) to ``--out``.

``python -m pipeline_tests.replicate_worker --data DIR --base-url URL --video VIDEO --out FILE
[--go FILE] [--only NAME ...] [--plan] [--lease S] [--ledger PATH_OR_URL]``

The requests (the same in every process, so they share cache keys): ``image0..2`` (flux-schnell
storyboards), ``chunk0``/``chunk1`` (wan chunks starting on image0/image1) and ``noisy`` (a wan chunk
starting on a deterministic noise PNG over 256 KB, so its input goes through the Files API).
``--plan`` runs the planner on a fixed brief instead. ``--go``: wait until that file exists before
starting (so processes start together). ``--ledger``: the ledger's database (default
``DIR/ledger.sqlite``; a PostgreSQL URL lets processes with data directories of their own share
it, like machines). The API token comes from ``$REPLICATE_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

FLUX = "black-forest-labs/flux-schnell"
WAN = "wan-video/wan-2.2-i2v-fast"
BRIEF = ("The sun heats oceans and lakes, and water evaporates into the air. Plants add vapor from their leaves. "
         "Rising air cools and the vapor condenses into clouds. Heavy droplets fall back as rain and snow.")
ALL = ("image0", "image1", "image2", "chunk0", "chunk1", "noisy")


def noisy_png(path: Path) -> Path:
    """A deterministic 854x480 noise PNG (about 1.2 MB: far over the 256 KB data-URI limit)."""
    import numpy as np
    from PIL import Image

    if not path.exists():
        pixels = np.random.default_rng(1234).integers(0, 256, (480, 854, 3), dtype=np.uint8)
        tmp = path.with_name(path.name + f".{id(path)}.tmp")
        Image.fromarray(pixels).save(tmp, format="PNG")
        tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--go")
    ap.add_argument("--only", nargs="*", default=list(ALL))
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--lease", type=float, default=30.0)
    ap.add_argument("--sync-wait", type=int, default=60)
    ap.add_argument("--ledger")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    from pipeline import media
    from pipeline.generation import GenerationRequest, Generator, ProviderResult
    from pipeline.providers import get_provider
    from pipeline.store import Workspace

    ws = Workspace.at(args.data)
    gen = Generator(ws)
    provider = get_provider("replicate", api_token=os.environ["REPLICATE_API_TOKEN"], base_url=args.base_url,
                            allowed_hosts=[args.base_url],
                            workspace_root=str(ws.root), ledger_path=args.ledger, poll_interval_s=0.05, max_poll_interval_s=0.25,
                            backoff_initial_s=0.05, max_backoff_s=0.5, request_timeout_s=60.0, deadline_s=120.0,
                            lease_s=args.lease, sync_wait_s=args.sync_wait)
    print("ready", flush=True)
    if args.go:
        deadline = time.monotonic() + 300
        while not Path(args.go).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    print("started", flush=True)
    out: list[dict[str, Any]] = []
    if args.plan:
        beats = provider.plan_beats(BRIEF, duration_s=30, style="flat", max_beats=6)
        out.append({"name": "plan", "beats": [b.model_dump() for b in beats], "cost_usd": provider.planner_cost_usd})
    else:
        images: dict[str, Any] = {}
        for name in args.only:
            got: dict[str, ProviderResult] = {}

            def keep(result: ProviderResult) -> ProviderResult:
                got["result"] = result
                return result

            labels = {"video_id": args.video, "segment": name}
            if name.startswith("image"):
                i = int(name[-1])
                req = GenerationRequest(media_type="image", provider="replicate", model=FLUX, seed=i, labels=labels,
                                        prompt=f"shared scene {i}: a lighthouse on a cliff at dusk",
                                        params={"width": 854, "height": 480})
                manifest = gen.generate(req, lambda s, r=req: keep(provider.render_image(r, s)))
                images[name] = manifest
                media.verify_image(gen.local_path(manifest))
            else:
                start = (gen.local_path(images[f"image{name[-1]}"]) if name.startswith("chunk")
                         else noisy_png(ws.root / "noisy-start.png"))
                from pipeline.store import sha256_file

                req = GenerationRequest(media_type="video", provider="replicate", model=WAN, seed=7, labels=labels,
                                        prompt=f"the camera drifts ({name})", inputs={"start_image": sha256_file(start)},
                                        params={"width": 854, "height": 480, "fps": 16, "duration_s": 5.0})
                manifest = gen.generate(req, lambda s, r=req, p=start: keep(provider.render_chunk(r, p, s)))
                assert media.verify_video(gen.local_path(manifest)).frames == 81
            result = got.get("result")
            out.append({"name": name, "cache_key": manifest.cache_key, "sha256": manifest.sha256,
                        "cache_hit": manifest.cache_hit, "prediction_id": manifest.prediction_id,
                        "cost_usd": result.cost_usd if result else 0.0,
                        "reused_cost_usd": result.reused_cost_usd if result else 0.0,
                        "paid_by": result.paid_by if result else None,
                        "how": result.extra.get("obtained_by") if result else "cache"})
    Path(args.out).write_text(json.dumps(out))
    print("done", flush=True)


if __name__ == "__main__":
    main()
