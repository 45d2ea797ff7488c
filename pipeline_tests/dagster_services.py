"""Real Dagster services for integration tests and benchmarks: a temporary instance (DAGSTER_HOME)
configured like the repository's dagster.yaml, and ``dagster-daemon`` / ``dagster-webserver``
subprocesses on 127.0.0.1 that are always stopped, children included, with their logs kept for
failure reports. Run workers started by the instance's run launcher leave the daemon's process
group on purpose (runs survive a daemon restart), so stopping the stack also kills the workers of
this instance's runs that are still alive (found by their ``pipeline/owner`` run tag)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE_YAML = ROOT / "workspace.yaml"
BIN = Path(sys.executable).parent
_ENV_DROP_PREFIXES = ("PIPELINE_", "REPLICATE_", "DAGSTER_")
"""The services get a clean pipeline/Dagster environment: only the variables set here."""


OWNER_TAG = "pipeline/owner"
"""The run tag naming the process that executes a run (pipeline.orchestration.launcher.OWNER_TAG)."""


def write_instance_yaml(home: Path, overrides: dict[str, Any] | None = None, *,
                        source: Path | None = None, local_logs: bool = True) -> Path:
    """``home/dagster.yaml``: the repository's dagster.yaml (or ``source``; run launcher, run queue,
    pools, run retries, run monitoring, telemetry off) with every storage path moved inside
    ``home`` (absolute paths; a database storage such as Postgres is kept as configured) and the
    top-level sections in ``overrides`` replaced (a None value removes the section). ``local_logs``
    False keeps the source's compute log manager (e.g. the cluster's S3 one) instead of a local one."""
    config = yaml.safe_load((source or ROOT / "dagster.yaml").read_text())
    for key, value in (overrides or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    home = home.resolve()
    storage = config.setdefault("storage", {"sqlite": {}})
    [(kind, spec)] = storage.items()  # sqlite, or custom (the repository's: run events applied first)
    if kind == "sqlite" or (kind == "custom" and "base_dir" in (spec.get("config") or {})):
        (spec.setdefault("config", {}) if kind == "custom" else spec)["base_dir"] = str(home / "storage")
    config["local_artifact_storage"] = {"module": "dagster._core.storage.root", "class": "LocalArtifactStorage",
                                        "config": {"base_dir": str(home)}}
    if local_logs or "compute_logs" not in config:
        config["compute_logs"] = {"module": "dagster._core.storage.local_compute_log_manager",
                                  "class": "LocalComputeLogManager",
                                  "config": {"base_dir": str(home / "compute_logs")}}
    config["telemetry"] = {"enabled": False}
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # Create the SQLite storages now: a daemon and a webserver starting together on an empty
    # instance race to create the same tables ("table alembic_version already exists").
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
        instance.all_instigator_state()
        instance.event_log_storage.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION), limit=1)
    return path


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """This process's environment with ``values`` set, restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 1.0,
               what: str = "condition", on_timeout: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass
    (AssertionError naming ``what``, plus ``on_timeout()``'s text)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}")
        time.sleep(interval)


def wait_for_run_status(instance, run_id: str, status, *, timeout: float, interval: float = 0.2,
                        on_timeout: Callable[[], str] | None = None) -> list[str]:
    """Wait until run ``run_id`` has finished in ``status`` (a ``DagsterRunStatus``) *and* the run
    event that finished it is stored; return that event's messages (oldest first).

    The repository's storage writes the run record before the run event
    (``pipeline/orchestration/storage.py``: Dagster's run-retry daemon must never see the event
    first), so a reader that sees the status can still miss the event for a moment; waiting on the
    status alone and then reading the events is a race. AssertionError after ``timeout`` seconds."""
    from dagster._core.events import EVENT_TYPE_TO_PIPELINE_RUN_STATUS

    [kind] = [event.value for event, to in EVENT_TYPE_TO_PIPELINE_RUN_STATUS.items() if to == status]

    def finished() -> list[str] | None:
        run = instance.get_run_by_id(run_id)
        if run is None or run.status != status:
            return None
        return [e.message or e.dagster_event.message or "" for e in instance.all_logs(run_id)
                if e.dagster_event is not None and e.dagster_event.event_type_value == kind] or None

    return wait_until(finished, timeout=timeout, interval=interval,
                      what=f"run {run_id} to be {status.value} with its {kind} event stored", on_timeout=on_timeout)


@dataclass
class Service:
    """One subprocess in its own session (so it and every child it spawns can be signalled)."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"({self.name}: no log)"
        return f"--- {self.name} ({self.log_path}), last {lines} lines ---\n" + "\n".join(text[-lines:])

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after ``grace_s``."""
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = self.proc.pid  # leader gone; its group may still have members
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            if sig == signal.SIGTERM:
                try:
                    self.proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
                time.sleep(0.5)  # let children of a clean leader exit too, else SIGKILL them
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _self_and_ancestors() -> set[int]:
    """This process's pid and those of its ancestors (from /proc; stops at pid 1)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


@dataclass
class DagsterStack:
    """A temporary instance and data directory, and the services running against them."""

    root: Path
    home: Path
    data_dir: Path
    faults: Path
    env: dict[str, str]
    workspace: Path = WORKSPACE_YAML
    services: list[Service] = field(default_factory=list)
    port: int | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "the webserver is not started"
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def create(cls, root: Path, *, workspace: Path | None = None, instance_overrides: dict[str, Any] | None = None,
               instance_source: Path | None = None, extra_env: dict[str, str] | None = None,
               local_logs: bool = True) -> "DagsterStack":
        """A stack under ``root``: the instance (``instance_overrides`` / ``instance_source`` /
        ``local_logs`` as in ``write_instance_yaml``), a data directory with an inbox, a
        local-provider faults file, and the services' environment (``extra_env`` added; the
        instance is created with it too, so a dagster.yaml may read it with ``env:``).
        ``workspace``: default the repository's."""
        home, data = root / "dagster_home", root / "data"
        with _environ(extra_env or {}):
            write_instance_yaml(home, instance_overrides, source=instance_source, local_logs=local_logs)
        (data / "inbox").mkdir(parents=True, exist_ok=True)
        faults = root / "faults.json"
        faults.write_text('{"fail": []}')
        env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_DROP_PREFIXES)}
        env.update(DAGSTER_HOME=str(home.resolve()), PIPELINE_DATA_DIR=str(data.resolve()),
                   PIPELINE_LOCAL_FAULTS=str(faults.resolve()), PYTHONUNBUFFERED="1",
                   PYTHONFAULTHANDLER="1", **(extra_env or {}))  # thread dumps: dump_threads()
        return cls(root, home, data, faults, env, workspace=Path(workspace or WORKSPACE_YAML))

    def _start(self, name: str, args: list[str]) -> Service:
        log_path = self.root / f"{name}.log"
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        service = Service(name, proc, log_path)
        self.services.append(service)
        return service

    def start_daemon(self, *, wait: bool = False, timeout: float = 180.0, command: list[str] | None = None) -> Service:
        """Start ``dagster-daemon run`` (or ``command``, which gets ``run -w WORKSPACE`` appended);
        with ``wait``, return once its sensor, run-queue and monitoring daemons have sent a
        heartbeat (AssertionError after ``timeout`` seconds)."""
        args = [*(command or [str(BIN / "dagster-daemon")]), "run", "-w", str(self.workspace)]
        service = self._start("dagster-daemon", args)
        if wait:
            self.wait_daemon_ready(service, timeout=timeout)
        return service

    def wait_daemon_ready(self, service: Service, timeout: float = 180.0) -> None:
        """Wait until ``service`` (a daemon started after any earlier one stopped) has sent fresh
        heartbeats for SENSOR, QUEUED_RUN_COORDINATOR and MONITORING and, with run retries on, its
        event log consumer has a cursor: on its first pass it starts at the newest event and never
        sees older failures, so a run that fails before that pass is never retried (seen under a
        CPU hog, where that pass came after the test's run had already failed)."""
        import dagster as dg

        since = time.time() - 1
        wanted = {"SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"}
        cursor_key = f"EVENT_LOG_CONSUMER_CURSOR-{dg.DagsterEventType.RUN_FAILURE.value}"
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            def ready() -> bool:
                if service.proc.poll() is not None:
                    raise AssertionError(f"dagster-daemon exited with {service.proc.returncode}\n{service.tail()}")
                beats = instance.get_daemon_heartbeats()
                if not all(k in beats and beats[k].timestamp >= since for k in wanted):
                    return False
                return not instance.run_retries_enabled or bool(
                    instance.daemon_cursor_storage.get_cursor_values({cursor_key}).get(cursor_key))

            wait_until(ready, timeout=timeout, interval=0.25, what="the daemon's heartbeats", on_timeout=service.tail)

    def stop_service(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop the running service called ``name`` (its whole process group) and forget it."""
        for service in [s for s in self.services if s.name == name and s.proc.poll() is None]:
            service.stop()
            self.services.remove(service)

    def start_webserver(self, timeout: float = 120.0) -> Service:
        self.port = free_port()
        service = self._start("dagster-webserver", [str(BIN / "dagster-webserver"), "-w", str(self.workspace),
                                                    "-h", "127.0.0.1", "-p", str(self.port)])

        def up() -> bool:
            if service.proc.poll() is not None:
                raise AssertionError(f"dagster-webserver exited with {service.proc.returncode}\n{service.tail()}")
            try:
                return httpx.get(f"{self.url}/server_info", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=timeout, interval=0.5, what="dagster-webserver /server_info",
                   on_timeout=service.tail)
        # /server_info answers before the code location has loaded; wait until it has.
        wait_until(lambda: self.location_loaded(), timeout=timeout, interval=1.0,
                   what="the code location to load in the webserver", on_timeout=service.tail)
        return service

    def location_loaded(self) -> bool:
        data = self.graphql("""{ workspaceOrError { __typename ... on Workspace {
            locationEntries { name loadStatus locationOrLoadError { __typename } } } } }""")
        entries = data["workspaceOrError"].get("locationEntries") or []
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries) and \
            all(e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries)

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                              timeout=timeout)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def stop_schedule(self, name: str) -> str:
        """Stop schedule ``name`` through GraphQL, as the UI's toggle does. Returns its new status."""
        data = self.graphql("""{ repositoriesOrError { __typename ... on RepositoryConnection {
            nodes { schedules { name scheduleState { id status } } } } } }""")
        states = [s["scheduleState"] for repo in data["repositoriesOrError"]["nodes"] for s in repo["schedules"]
                  if s["name"] == name]
        assert len(states) == 1, f"schedule {name!r}: {data}"
        result = self.graphql("""mutation Stop($id: String) { stopRunningSchedule(id: $id) { __typename
            ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }""",
                              {"id": states[0]["id"]})["stopRunningSchedule"]
        assert result["__typename"] == "ScheduleStateResult", result
        return result["scheduleState"]["status"]

    def check_alive(self) -> None:
        for service in self.services:
            if service.proc.poll() is not None:
                raise AssertionError(f"{service.name} exited with {service.proc.returncode}\n{service.tail()}")

    @contextmanager
    def running(self, *, daemon: bool) -> Iterator["DagsterStack"]:
        """Start the webserver (and the daemon if ``daemon``); stop both afterwards, printing the
        tails of their logs when the body failed."""
        failed = True
        try:
            if daemon:
                self.start_daemon()
            self.start_webserver()
            yield self
            failed = False
        finally:
            self.stop()
            if failed:
                print(self.tails())

    def tails(self) -> str:
        return "\n".join(s.tail() for s in self.services)

    def dump_threads(self, name: str = "dagster-daemon", lines: int = 400) -> str:
        """Diagnostics for a test that timed out waiting on a service: SIGABRT the running service
        ``name`` (its Python dumps every thread's stack into its log: PYTHONFAULTHANDLER is set for
        the services) and return the last ``lines`` lines of that log. A dumped daemon is then
        started again, so the tests that share this stack do not fail after this one."""
        found = [s for s in self.services if s.name == name and s.proc.poll() is None]
        if not found:
            return f"({name}: not running)"
        found[0].proc.send_signal(signal.SIGABRT)
        try:
            found[0].proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        text = found[0].tail(lines)
        found[0].stop()  # its children (code servers) too
        self.services.remove(found[0])
        if name == "dagster-daemon":
            try:
                self.start_daemon(wait=True)
            except AssertionError as exc:
                text += f"\n(restarting the daemon failed: {exc})"
        return text

    def stop(self) -> None:
        """Stop every service, then kill the run workers of this instance that are still alive."""
        for service in reversed(self.services):
            service.stop()
        self.kill_run_workers()

    def run_workers(self) -> list[tuple[str, Any]]:
        """(run id, ProcessIdentity) of every run of this instance whose ``pipeline/owner`` lives."""
        import dagster as dg

        from pipeline.procs import ProcessIdentity

        found = []
        try:
            with dg.DagsterInstance.from_config(str(self.home)) as instance:
                for record in instance.get_run_records():
                    owner = ProcessIdentity.parse(record.dagster_run.tags.get(OWNER_TAG))
                    if owner is not None and owner.is_alive():
                        found.append((record.dagster_run.run_id, owner))
        except Exception as exc:  # noqa: BLE001 - cleanup must not mask the test's own failure
            print(f"could not list run workers: {exc}")
        return found

    def kill_run_workers(self) -> None:
        """SIGKILL the live run workers of this instance (and their process groups: compute-log
        helpers). Only processes whose identity (pid *and* start time) matches are signalled, and
        never this process or its ancestors: a test that rendered in-process (the CLI path) owns
        runs of this instance itself."""
        spared = _self_and_ancestors()
        for _run_id, owner in self.run_workers():
            if owner.pid in spared:
                continue
            try:
                if os.getpgid(owner.pid) == owner.pid:
                    os.killpg(owner.pid, signal.SIGKILL)
                else:
                    os.kill(owner.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
