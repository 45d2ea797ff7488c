"""Dagster instance storage on Postgres vs SQLite: database connections and wall time of a cached
render, and the per-run overhead, on one machine.

Storages (each in a fresh DAGSTER_HOME; the Postgres ones in a fresh database of one private
Postgres started here, fsync on, ``log_connections`` on):
- ``sqlite``: the repository's storage (``RunFirstSqliteStorage``);
- ``postgres``: ``RunFirstPostgresStorage`` without ``pool``: dagster-postgres' own engines
  (NullPool, a connection per operation);
- ``postgres pooled``: ``RunFirstPostgresStorage`` with deploy/dagster.yaml's ``pool``.

Per storage: ``render_video`` of the 40 s example (local provider) to warm the generation cache,
then a forced re-render (every generation a cache hit: "one cached render", 8 runs in forked
workers, 2 at a time), whose connections are counted in the server log; then ``--repeat`` cached
``render_segment`` runs executed in process one at a time (median wall time per run = the
per-run overhead, since the work itself is all cache hits).

Usage: python benchmarks/bench_postgres_overhead.py [--repeat 8] [--storages 'postgres pooled' postgres sqlite]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EXAMPLES, ROOT, emit, heading, save_results, table, temp_env  # noqa: E402

SPEC = EXAMPLES / "tortoise-and-hare.yaml"
VIDEO = "tortoise-and-hare"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def instance_yaml(kind: str, server) -> tuple[str, str | None]:
    """(dagster.yaml text, database name) for ``kind``."""
    import yaml

    if kind == "sqlite":
        return yaml.safe_dump({"telemetry": {"enabled": False}, "storage": {"custom": {
            "module": "pipeline.orchestration.storage", "class": "RunFirstSqliteStorage",
            "config": {"base_dir": str(Path(os.environ["DAGSTER_HOME"]) / "storage")}}}}), None
    name = f"bench_{uuid.uuid4().hex[:10]}"
    url = server.create_database(name)
    config = {"postgres_url": url}
    if kind == "postgres pooled":
        deploy = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
        config["pool"] = deploy["storage"]["custom"]["config"]["pool"]
    return yaml.safe_dump({"telemetry": {"enabled": False}, "storage": {"custom": {
        "module": "pipeline.orchestration.storage_postgres", "class": "RunFirstPostgresStorage",
        "config": config}}}), name


def measure(kind: str, server, repeat: int) -> dict:
    import dagster as dg

    from pipeline.definitions import build_definitions
    from pipeline.defs.partitions import segment_partition_key
    from pipeline.orchestration.instance import open_instance
    from pipeline.orchestration.render import render_video

    with temp_env(kind.replace(" ", "-")) as root:
        text, db_name = instance_yaml(kind, server)
        (root / "dagster_home" / "dagster.yaml").write_text(text)
        defs = build_definitions(str(root / "data"))
        instance = open_instance(root / "dagster_home")
        try:
            first = render_video(SPEC, defs=defs, instance=instance, max_parallel=2)
            assert first.final is not None, [r.error for r in first.failed]
            before = server.connections(db_name) if db_name else None
            t0 = time.monotonic()
            cached = render_video(SPEC, defs=defs, instance=instance, max_parallel=2, force=True)
            render_s = time.monotonic() - t0
            assert cached.final is not None and not cached.up_to_date
            render_connections = server.connections(db_name) - before if db_name else None
            job = defs.resolve_job_def("render_segment")
            walls, per_run = [], []
            for i in range(repeat):
                key = segment_partition_key(VIDEO, i % len(cached.plan.beats))
                before = server.connections(db_name) if db_name else None
                t0 = time.monotonic()
                result = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False,
                                                run_config=QUIET)
                walls.append(time.monotonic() - t0)
                assert result.success
                if db_name:
                    per_run.append(server.connections(db_name) - before)
        finally:
            instance.dispose()
    return {"storage": kind, "cached_render_s": round(render_s, 2), "cached_render_runs": len(cached.runs),
            "cached_render_connections": render_connections,
            "run_wall_median_s": round(statistics.median(walls), 3),
            "run_connections_median": statistics.median(per_run) if per_run else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--storages", nargs="+", default=["sqlite", "postgres", "postgres pooled"],
                    choices=["sqlite", "postgres", "postgres pooled"], help="which, in this order")
    args = ap.parse_args()
    from pipeline_tests.cluster_services import private_postgres

    rows = []
    with private_postgres(fsync=True) as server:
        for kind in args.storages:
            rows.append(measure(kind, server, args.repeat))
            emit(f"{kind}: {rows[-1]}")
    heading("Instance storage: Postgres vs SQLite (cached 40 s render; cached render_segment runs in process)")
    columns = ["storage", "cached_render_s", "cached_render_runs", "cached_render_connections", "run_wall_median_s",
               "run_connections_median"]
    emit(table([[row[c] for c in columns] for row in rows], columns))
    save_results("postgres_overhead", {"rows": rows, "repeat": args.repeat})


if __name__ == "__main__":
    main()
