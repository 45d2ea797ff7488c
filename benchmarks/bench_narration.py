"""The narrated lecture (examples/water-cycle-lecture.yaml: 36 s, 6 beats, 5 narrated, soft
subtitles) rendered with each provider: ``pipeline render SPEC`` in a fresh temporary Dagster
instance and data directory, then the same command again (up to date), then ``--force``.

- ``local``: offline (piper voice, local images, chunks and music), $0.
- ``replicate``: against the fake Replicate server on 127.0.0.1 with 1-3 s predictions (real
  Replicate runs slower; the cost is the registry's prices for what was generated, USD).

Columns: wall seconds of each command, the final video's cost (USD, from its manifest), paid
creates at the fake server, and the subtitle cues in the final video.

Usage: python benchmarks/bench_narration.py [--providers local replicate]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CLI_INSTANCE_YAML,
    EXAMPLES,
    ROOT,
    VENV_BIN,
    emit,
    heading,
    load_averages,
    run_measured,
    save_results,
    subprocess_env,
    table,
    temp_env,
)

SPEC = EXAMPLES / "water-cycle-lecture.yaml"
VIDEO_ID = "water-cycle-lecture"


def _final(root: Path) -> dict:
    return json.loads((root / "data" / "manifests" / "final_video" / f"{VIDEO_ID}.json").read_text())


def measure(provider: str) -> dict:
    """One provider's row: cold, up-to-date and forced render times, cost, creates, cues."""
    sys.path.insert(0, str(ROOT))
    from contextlib import nullcontext

    from pipeline_tests.fake_replicate import FakeServerProcess

    server = FakeServerProcess("--run-seconds", "1", "3") if provider == "replicate" else nullcontext()
    with server as fake, temp_env(f"narration-{provider}", instance_yaml=CLI_INSTANCE_YAML) as root:
        extra = {} if fake is None else {"REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url,
                                         "REPLICATE_OUTPUT_HOSTS": fake.origin}
        # The deployment default, not --provider: a plain `pipeline render SPEC` (the up-to-date
        # rerun then answers from its receipt, as users run it).
        env = subprocess_env(root, PIPELINE_DEFAULT_PROVIDER=provider, **extra)
        command = [str(VENV_BIN / "pipeline"), "render", str(SPEC)]
        load = load_averages()[0]
        runs = [run_measured(command, env=env, cwd=ROOT),
                run_measured(command, env=env, cwd=ROOT),
                run_measured([*command, "--force"], env=env, cwd=ROOT)]
        for r in runs:
            if r["returncode"] != 0:
                raise SystemExit(f"{provider}: exit {r['returncode']}\n{r['output'][-3000:]}")
        final = _final(root)
        creates = sum(fake.stats()["creates"].values()) if fake is not None else 0
    return {"provider": provider, "cold_s": runs[0]["wall_s"], "up_to_date_s": runs[1]["wall_s"],
            "forced_s": runs[2]["wall_s"], "cost_usd": final["cost_usd"], "paid_creates": creates,
            "cues": (final.get("subtitles") or {}).get("cues"), "load_1min_at_start": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", nargs="+", default=["local", "replicate"], choices=["local", "replicate"])
    args = ap.parse_args()
    rows = [measure(p) for p in args.providers]
    heading("The narrated lecture (water-cycle-lecture.yaml) with each provider")
    emit(table(rows, floatfmt=".4g"))
    save_results("narration", rows)


if __name__ == "__main__":
    main()
