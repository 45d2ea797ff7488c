"""The loopback cluster vs one machine: three specs (two 5 s beats each, the replicate provider
against the fake server with scaled latencies) from submission to the three published videos.

- ``cluster``: pipeline_tests/cluster_stack.py: Postgres storage (deploy/dagster.yaml), Celery
  run launcher, two workers x ``--concurrency`` 2, each with its own empty data directory; S3 on
  moto; specs with `pipeline submit` into the S3 inbox.
- ``one machine``: the repository's dagster.yaml (SQLite, ForkServerRunLauncher) with the daemon
  and the same S3, specs put into the S3 inbox.

Both on this machine (2 cores shared by everything), so the cluster's numbers measure its
overhead, not a speed-up: its workers compete for the same cores. Wall time from the first
submission to the last published video; runs; creates at the fake server.

Usage: python benchmarks/bench_cluster.py [--only cluster|one]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, heading, save_results, table  # noqa: E402


def run_cluster(root: Path) -> dict:
    import pytest

    from pipeline_tests import test_cluster as tc
    from pipeline_tests.cluster_stack import running_cluster
    from pipeline_tests.dagster_services import wait_until
    from pipeline_tests.fake_replicate import FakeServerProcess

    with FakeServerProcess("--run-seconds", "0.3", "0.8", "--render-scale", "0.25") as fake, \
            pytest.MonkeyPatch.context() as mp:
        replicate = {"REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url,
                     "REPLICATE_OUTPUT_HOSTS": fake.origin}
        with running_cluster(root, mp, replicate=replicate) as cluster, cluster.instance() as instance:
            t0 = time.monotonic()
            tc.submit_all(cluster, root / "specs")
            (root / "published").mkdir()
            wait_until(lambda: all(tc.published(cluster, v, root / "published") for v in tc.VIDEOS), timeout=900,
                       interval=1.0, what="three published videos", on_timeout=cluster.tails)
            wall = time.monotonic() - t0
            runs = len(instance.get_run_records())
            creates = sum(fake.stats()["creates"].values())
    return {"setup": "cluster (Postgres, Celery, 2 workers x 2)", "wall_s": round(wall, 1), "runs": runs,
            "creates": creates}


def run_one_machine(root: Path) -> dict:
    import boto3
    import pytest

    from pipeline_tests import test_cluster as tc
    from pipeline_tests.cluster_services import moto_server
    from pipeline_tests.cluster_stack import AWS
    from pipeline_tests.dagster_services import DagsterStack, wait_until
    from pipeline_tests.fake_replicate import FakeServerProcess

    with FakeServerProcess("--run-seconds", "0.3", "0.8", "--render-scale", "0.25") as fake, \
            moto_server(root / "moto.log") as endpoint, pytest.MonkeyPatch.context() as mp:
        bucket = "one-machine"
        env = {"PIPELINE_DEPLOYMENT": "production", "PIPELINE_S3_BUCKET": bucket, "PIPELINE_S3_PREFIX": "one",
               "AWS_ENDPOINT_URL": endpoint, **AWS, "REPLICATE_API_TOKEN": fake.token,
               "REPLICATE_BASE_URL": fake.base_url, "REPLICATE_OUTPUT_HOSTS": fake.origin}
        for name, value in env.items():
            mp.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        stack = DagsterStack.create(root, extra_env=env)
        with stack.running(daemon=True):
            stack.wait_daemon_ready(stack.services[0])
            t0 = time.monotonic()
            s3 = boto3.client("s3", endpoint_url=endpoint)
            for video_id in tc.VIDEOS:  # with S3 configured, the inbox is the S3 prefix <prefix>/inbox
                s3.put_object(Bucket=bucket, Key=f"one/inbox/{video_id}.yaml", Body=tc.spec_text(video_id).encode())

            def done() -> bool:
                keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="one/videos/").get("Contents", [])}
                return all(f"one/videos/{v}.mp4" in keys for v in tc.VIDEOS)

            wait_until(done, timeout=900, interval=1.0, what="three published videos", on_timeout=stack.tails)
            wall = time.monotonic() - t0
            import dagster as dg

            with dg.DagsterInstance.from_config(str(stack.home)) as instance:
                runs = len(instance.get_run_records())
            creates = sum(fake.stats()["creates"].values())
    return {"setup": "one machine (SQLite, ForkServerRunLauncher)", "wall_s": round(wall, 1), "runs": runs,
            "creates": creates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("cluster", "one"))
    args = ap.parse_args()
    rows = []
    for name, fn in (("one", run_one_machine), ("cluster", run_cluster)):
        if args.only and args.only != name:
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-cluster-{name}-") as tmp:
            load = os.getloadavg()[0]
            row = fn(Path(tmp))
            row["load_1min_at_start"] = round(load, 1)
            rows.append(row)
            emit(str(row))
    heading("Three specs from submission to published videos: the loopback cluster vs one machine")
    columns = ["setup", "wall_s", "runs", "creates", "load_1min_at_start"]
    emit(table([[r[c] for c in columns] for r in rows], columns))
    save_results("cluster", rows)


if __name__ == "__main__":
    main()
