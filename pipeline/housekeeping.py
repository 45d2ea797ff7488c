"""Temporary files that name their owner, and the sweep that removes those of dead processes.

Every temp file and scratch directory the pipeline makes carries the ``ProcessIdentity`` of the
process that made it (``host:pid:start``, see ``pipeline.procs``) in its name:

- a scratch directory: ``<data>/tmp/<label>@<owner>@<random>``;
- a temp file beside its destination: ``.<name>@<owner>@<random>.tmp`` (or ``.part``).

Writers remove their temp files on every exit path they can see (exceptions included); a process
killed with SIGKILL cannot, so ``sweep_temp`` (run when the CLI starts) removes whatever a
process that is gone left behind. A temp file whose owner still runs, or runs on another host
(liveness unknown), is never touched. Nothing here imports Dagster.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.procs import ProcessIdentity

TEMP_SUFFIXES = (".tmp", ".part")
"""Suffixes of the pipeline's temp files."""

SWEPT_DIRS = ("media", "cache", "manifests", "specs", "videos", "s3cache", "tmp", "locks")
"""Subdirectories of the data directory the sweep looks into (never ``dagster/``, the instance)."""

UNOWNED_MAX_AGE_S = 6 * 3600.0
"""Temp files and scratch directories without an owner in their name (written by older versions)
are removed once untouched for this long (seconds)."""

_OWNED = re.compile(r"@(?P<owner>[^@/]+:\d+:\d+)@[A-Za-z0-9_]+(?:\.tmp|\.part)?$")


def owner_tag() -> str:
    """``str(ProcessIdentity.current())``: this process, as written into temp names and run tags."""
    return str(ProcessIdentity.current())


def owned_name(base: str, suffix: str = "") -> str:
    """A unique name ``<base>@<owner>@<random><suffix>`` naming this process as its owner.

    ``base`` must not contain "@" or "/" (ValueError)."""
    if "@" in base or "/" in base:
        raise ValueError(f"a temp name base cannot contain '@' or '/': {base!r}")
    return f"{base}@{owner_tag()}@{uuid.uuid4().hex[:12]}{suffix}"


def owned_temp_path(dest: str | Path, suffix: str = ".tmp") -> Path:
    """A unique hidden temp path beside ``dest`` (same directory, so ``os.replace`` is atomic):
    ``.<dest name>@<owner>@<random><suffix>``."""
    dest = Path(dest)
    return dest.with_name(owned_name(f".{dest.name.replace('@', '_')}", suffix))


def owned_mkstemp_prefix(dest: str | Path) -> str:
    """The ``prefix`` for ``tempfile.mkstemp(dir=dest.parent, prefix=..., suffix=".tmp")`` that
    makes an owned temp name (mkstemp adds the random part)."""
    return f".{Path(dest).name.replace('@', '_')}@{owner_tag()}@"


def temp_owner(name: str) -> ProcessIdentity | None:
    """The owner named in a temp file or scratch directory name, or None if it names none."""
    match = _OWNED.search(name)
    return ProcessIdentity.parse(match.group("owner")) if match else None


@dataclass
class SweepReport:
    """What ``sweep_temp`` removed (paths) and kept (paths of live or unknown owners)."""

    removed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _is_temp(name: str) -> bool:
    return name.endswith(TEMP_SUFFIXES)


def _stale(path: Path, now: float, max_age_s: float) -> bool:
    """True if ``path``'s owner is gone, or it names none and is older than ``max_age_s``."""
    owner = temp_owner(path.name)
    if owner is not None:
        return owner.is_alive() is False
    try:
        return now - path.lstat().st_mtime > max_age_s
    except FileNotFoundError:
        return False


def _remove(path: Path, report: SweepReport) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        report.removed.append(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        report.errors.append(f"{path}: {exc}")


def sweep_temp(root: str | Path, *, unowned_max_age_s: float = UNOWNED_MAX_AGE_S) -> SweepReport:
    """Remove what dead processes left under the data directory ``root``: scratch directories in
    ``tmp/`` and ``*.tmp`` / ``*.part`` files in ``SWEPT_DIRS``, when the owner named in the
    name is a process of this host that is gone (or, for names without an owner, when untouched
    for ``unowned_max_age_s`` seconds). Never raises for a file it cannot remove (listed in
    ``errors``). Cost: one directory walk of those folders (a few ms for a few thousand files)."""
    root = Path(root)
    report = SweepReport()
    now = time.time()
    tmp = root / "tmp"
    if tmp.is_dir():
        for entry in os.scandir(tmp):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False) or _is_temp(entry.name):
                (_remove(path, report) if _stale(path, now, unowned_max_age_s) else report.kept.append(path))
    for sub in SWEPT_DIRS:
        if sub == "tmp" or not (root / sub).is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root / sub):
            dirnames[:] = [d for d in dirnames if d != "quarantine"]
            for name in filenames:
                if _is_temp(name):
                    path = Path(dirpath) / name
                    (_remove(path, report) if _stale(path, now, unowned_max_age_s) else report.kept.append(path))
    return report
