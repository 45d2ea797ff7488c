"""Real ``pipeline`` CLI processes for tests: started in their own session with an environment
marker, so every process of a render (workers, ffmpeg, Dagster's log tailers) can be found in
/proc and is always killed afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sys

ROOT = Path(__file__).resolve().parent.parent
MARKER_VAR = "PIPELINE_TEST_RENDER_MARKER"


def clean_env(**overrides: str | None) -> dict[str, str]:
    """This environment without PIPELINE_*/DAGSTER_*/REPLICATE_* variables, plus ``overrides``
    (a None value leaves the variable unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "DAGSTER_", "REPLICATE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def pipeline_command() -> list[str]:
    """The argv prefix that runs the ``pipeline`` console script of this virtualenv."""
    return [str(Path(sys.executable).parent / "pipeline")]


@dataclass
class CliProcess:
    """One running ``pipeline ...`` command: its Popen, log file and environment marker."""

    proc: subprocess.Popen
    log_path: Path
    marker: str
    args: list[str] = field(default_factory=list)

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the exit code (AssertionError with the log on timeout)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`pipeline {' '.join(self.args)}` did not finish in {timeout:.0f} s\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def processes(self) -> list[tuple[int, str]]:
        """(pid, command name) of every live, non-zombie process carrying this command's marker."""
        return marked_processes(self.marker)

    def kill(self) -> None:
        """SIGKILL the session and every marked process (cleanup; idempotent)."""
        for pid in [self.proc.pid, *(pid for pid, _ in self.processes())]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def start_cli(args: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> CliProcess:
    """Start ``pipeline ARGS`` (``pipeline_command()``) with ``env`` plus a unique marker, its
    output (stdout and stderr) in ``log_path``, in a new session."""
    marker = uuid.uuid4().hex
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*pipeline_command(), *args], cwd=cwd, env={**env, MARKER_VAR: marker},
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return CliProcess(proc, log_path, marker, args)


def marked_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command name) of the live, non-zombie processes whose environment has ``marker``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes():
                continue
            stat = (entry / "stat").read_text()
            state = stat[stat.rfind(")") + 2:].split()[0]
            if state not in ("Z", "X"):
                found.append((int(entry.name), (entry / "comm").read_text().strip()))
        except OSError:
            continue
    return found


def parent_pid(pid: int) -> int | None:
    """The parent pid of ``pid`` (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[1])

