"""The whole cluster of deploy/ on loopback, for the cluster test and its benchmark: a private
Postgres (Dagster's storage and the ledger), Redis (Celery broker and result backend), moto's S3
server, the fake Replicate server, a webserver and a daemon with the cluster's dagster.yaml
(``deploy/dagster.yaml``: Postgres storage, ``PipelineCeleryRunLauncher``, S3 compute logs), and
Celery workers started with the command deploy/README.md gives, each with its own DAGSTER_HOME
(the same dagster.yaml) and its own empty data directory. Every process is stopped afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline_tests.cluster_services import (PostgresServer, RedisServer, moto_server, pg_bin, private_postgres,
                                             private_redis)
from pipeline_tests.dagster_services import BIN, ROOT, DagsterStack, Service, wait_until, write_instance_yaml

DEPLOY = ROOT / "deploy"
CLUSTER_YAML = DEPLOY / "dagster.yaml"
WORKSPACE_YAML = DEPLOY / "workspace.yaml"
CELERY_YAML = DEPLOY / "celery.yaml"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def missing_services() -> str | None:
    """Why the cluster cannot run here (a missing binary), or None."""
    import shutil

    from pipeline_tests.cluster_services import ServiceMissing

    try:
        pg_bin("initdb"), pg_bin("postgres")
    except ServiceMissing as exc:
        return str(exc)
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (install the redis-server package)"
    if not (BIN / "moto_server").is_file() or not (BIN / "dagster-celery").is_file():
        return "moto[server] or dagster-celery is not installed in this venv (pip install -e '.[dev,cluster]')"
    return None


def cluster_instance_config(*, workers: int, concurrency: int, grace_s: float, poll_s: int) -> dict[str, Any]:
    """Overrides of deploy/dagster.yaml for the loopback cluster: as many runs at once as the
    workers have slots, and faster lost-worker detection (``grace_s``, ``poll_s``)."""
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = workers * concurrency
    config["run_launcher"]["config"]["worker_lost_grace_seconds"] = grace_s
    config["run_monitoring"]["poll_interval_seconds"] = poll_s
    return {key: config[key] for key in ("concurrency", "run_launcher", "run_monitoring")}


@dataclass
class Worker:
    """One Celery worker: its name (``-n``), Celery hostname, home, data directory and process."""

    name: str
    hostname: str
    home: Path
    data_dir: Path
    service: Service

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (the CLI, Celery's main process, its pool
        processes and their ffmpeg children), as if its machine had died."""
        try:
            os.killpg(self.service.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.service.proc.wait(30)


@dataclass
class Cluster:
    """A running loopback cluster (see the module docstring)."""

    root: Path
    stack: DagsterStack
    postgres: PostgresServer
    redis: RedisServer
    s3_endpoint: str
    bucket: str
    prefix: str
    env: dict[str, str]
    """What every machine of the cluster gets (Postgres, Celery, S3, Replicate, deployment)."""
    workers: dict[str, Worker] = field(default_factory=dict)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, **{k.lower(): v for k, v in AWS.items()
                                                                     if k != "AWS_DEFAULT_REGION"},
                            region_name=AWS["AWS_DEFAULT_REGION"])

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def start_worker(self, name: str, *, concurrency: int) -> Worker:
        """Start worker ``name`` as deploy/README.md says (``dagster-celery worker start -A
        dagster_celery.app -y deploy/celery.yaml -n NAME -i pipeline.orchestration.celery_runs --
        --concurrency N``) with its own DAGSTER_HOME and empty data directory; returns once it
        answers a ping through the broker."""
        home, data = self.root / name / "home", self.root / name / "data"
        data.mkdir(parents=True)
        write_instance_yaml(home, {k: v for k, v in yaml.safe_load((self.stack.home / "dagster.yaml").read_text())
                                   .items() if k in ("concurrency", "run_launcher", "run_monitoring")},
                            source=CLUSTER_YAML, local_logs=False)
        env = {**self.stack.env, "DAGSTER_HOME": str(home), "PIPELINE_DATA_DIR": str(data), "PGAPPNAME": name,
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("PIPELINE_LOCAL_FAULTS", None)
        args = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(CELERY_YAML),
                "-n", name, "-i", "pipeline.orchestration.celery_runs", "--", f"--concurrency={concurrency}"]
        log_path = self.root / f"{name}.log"
        import subprocess

        with open(log_path, "ab") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        service = Service(name, proc, log_path)
        self.stack.services.append(service)
        worker = Worker(name, f"{name}@{socket.gethostname()}", home, data, service)
        self.workers[name] = worker
        app = self.celery_app()

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited with {proc.returncode}\n{service.tail()}")
            return any(worker.hostname in reply for reply in app.control.ping(destination=[worker.hostname],
                                                                             timeout=1.0, limit=1))

        wait_until(answers, timeout=180, interval=0.5, what=f"Celery worker {name} to answer a ping",
                   on_timeout=service.tail)
        return worker

    def celery_app(self):
        from celery import Celery

        return Celery("cluster-test", broker=self.env["CELERY_BROKER_URL"], backend=self.env["CELERY_RESULT_BACKEND"])

    def instance(self):
        """The cluster's instance, opened in this process (the test's environment has the cluster's)."""
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.stack.home))

    def tails(self) -> str:
        return self.stack.tails() + "\n--- postgres ---\n" + self.postgres.tail(20)


@contextmanager
def running_cluster(root: Path, monkeypatch, *, workers: tuple[str, ...] = ("worker-a", "worker-b"),
                    concurrency: int = 2, replicate: dict[str, str], grace_s: float = 10.0,
                    poll_s: int = 3) -> Iterator[Cluster]:
    """Start the loopback cluster under ``root`` (``replicate``: the fake server's REPLICATE_*
    variables). ``monkeypatch`` gives this process the cluster's environment too, so the test can
    open the instance. Stops everything afterwards, printing the services' log tails if the body
    failed."""
    with ExitStack() as stack:
        postgres = stack.enter_context(private_postgres())
        redis = stack.enter_context(private_redis())
        s3_endpoint = stack.enter_context(moto_server(root / "moto.log"))
        postgres.create_database("dagster")
        ledger_url = postgres.create_database("ledger")
        bucket, prefix = f"cluster-{uuid.uuid4().hex[:8]}", "cluster"
        env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres.port), "DAGSTER_PG_USER": "postgres",
               "DAGSTER_PG_PASSWORD": "unused-trust-auth", "DAGSTER_PG_DB": "dagster",
               "CELERY_BROKER_URL": redis.url(0), "CELERY_RESULT_BACKEND": redis.url(1),
               "PIPELINE_DEPLOYMENT": "production", "PIPELINE_S3_BUCKET": bucket, "PIPELINE_S3_PREFIX": prefix,
               "PIPELINE_LEDGER_URL": ledger_url, "AWS_ENDPOINT_URL": s3_endpoint, **AWS, **replicate}
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        import boto3

        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
        dagster = DagsterStack.create(root, workspace=WORKSPACE_YAML, instance_source=CLUSTER_YAML, local_logs=False,
                                      instance_overrides=cluster_instance_config(
                                          workers=len(workers), concurrency=concurrency, grace_s=grace_s,
                                          poll_s=poll_s),
                                      extra_env=env)
        monkeypatch.setenv("DAGSTER_HOME", str(dagster.home))
        cluster = Cluster(root, dagster, postgres, redis, s3_endpoint, bucket, prefix, env)
        failed = True
        try:
            # PGAPPNAME: libpq's application_name, so Postgres (pg_stat_activity, its log) names
            # the role of each connection; the daemon's code servers inherit the daemon's.
            dagster.env["PGAPPNAME"] = "dagster-daemon"
            dagster.start_daemon(wait=True)
            dagster.env["PGAPPNAME"] = "dagster-webserver"
            dagster.start_webserver()
            dagster.env.pop("PGAPPNAME")
            for name in workers:
                cluster.start_worker(name, concurrency=concurrency)
            yield cluster
            failed = False
        finally:
            dagster.stop()
            if failed:
                print(cluster.tails())
