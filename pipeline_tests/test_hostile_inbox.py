"""The hostile corpus dropped into the spec inbox: ``scan_inbox`` registers every valid spec and
moves every other entry (FIFOs, directories, looping and dangling links, links to secrets and
devices, garbage) to ``rejected/`` with an ``.error.txt``; it never raises or hangs. The
``spec_inbox_sensor`` keeps requesting runs for valid specs that sit behind bad ones."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from pipeline.defs.resources import PipelineResource
from pipeline.defs.sensors import spec_inbox_sensor
from pipeline.inbox import filed_name, scan_inbox
from pipeline.printable import printable
from pipeline.store import Workspace
from pipeline.submissions import list_submissions
from pipeline_tests.hostile_corpus import SECRET_MARKER, base, build_corpus
from pipeline_tests.test_hostile_specs import CaseTimeout, timer, unsafe_characters

SCAN_TIMEOUT_S = 300.0

NASTY = ["fifo.yaml", "link-to-fifo.yaml", "dir.yaml", "sock.yaml", "link-loop-a.yaml", "link-loop-b.yaml",
         "link-self.yaml", "link-dangling.yaml", "link-secret-abs.yaml", "link-dev-zero.yaml", "sparse-10g.yaml",
         "garbage-5.yaml", "utf-16-le-bom.yaml", "nest-map-10000.yaml", "billion-laughs.yaml", "text-title-04.json",
         "num-music-bpm-00-flow.json", "dup-beats0-prompt.yaml", "esc\x1b[31m-2-bad.yaml", "tag-0.yaml"]
"""Entries for the sensor test: the worst of each kind (the inbox test takes the whole corpus)."""


def age(folder: Path, seconds: float = 60.0) -> None:
    """Set every entry's own mtime ``seconds`` in the past (links themselves, not their targets)."""
    old = time.time() - seconds
    for entry in os.scandir(folder):
        os.utime(entry.path, (old, old), follow_symlinks=False)


def valid_spec(folder: Path, video_id: str, mtime: float) -> Path:
    path = folder / f"{video_id}.json"
    path.write_text(json.dumps({**base(), "video_id": video_id}))
    os.utime(path, (mtime, mtime))
    return path


def spec_named(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith((".yaml", ".yml", ".json"))
                  and not e.name.startswith("."))


@pytest.mark.timeout(900)
def test_scan_inbox_files_away_the_whole_corpus(tmp_path):
    inbox = tmp_path / "inbox"
    cases = build_corpus(inbox, tmp_path / "outside")
    age(inbox, 120)
    newest = time.time() - 30  # after every corpus entry: valid specs behind all the bad ones
    extra = [valid_spec(inbox, f"inbox-valid-{i}", newest + i) for i in range(3)]
    workspace = Workspace.at(tmp_path / "data")
    started = time.monotonic()
    try:
        with timer(SCAN_TIMEOUT_S):
            scan = scan_inbox(workspace, inbox, settle_s=0)
    except CaseTimeout:
        pytest.fail(f"scan_inbox did not finish within {SCAN_TIMEOUT_S} s")
    seconds = time.monotonic() - started
    print(f"\nscan_inbox filed {len(cases) + len(extra)} entries in {seconds:.1f} s")

    assert scan.errors == [] and scan.waiting == []
    assert spec_named(inbox) == [], "every spec-named entry left the inbox"
    accepted = {target.name for _, _, target in scan.accepted}
    rejected = {target.name: reason for target, reason in scan.rejected}
    assert {p.name for p in extra} <= accepted
    assert {s.video_id for s in list_submissions(workspace)} >= {f"inbox-valid-{i}" for i in range(3)}
    wrong, names = {}, {c.name for c in cases}
    for case in cases:
        name = filed_name(case.name)  # the same name unless it is too long to keep
        if case.registers:
            if name not in accepted or not os.path.lexists(inbox / "processed" / name):
                wrong[case.name] = "valid, not registered/processed"
            continue
        error_file = inbox / "rejected" / f"{name}.error.txt"
        if name not in rejected or not os.path.lexists(inbox / "rejected" / name) or not error_file.exists():
            wrong[case.name] = "not rejected with an .error.txt"
            continue
        text = error_file.read_text(encoding="utf-8")
        flat = text.replace("\n", "")
        expect = case.expect
        link = inbox / "rejected" / name
        if link.is_symlink() and os.readlink(link) in names:  # its target was filed away first: now it dangles
            expect = ("does not exist",) if "does not exist" in flat else case.expect
        problems = [p for p, bad in [
            ("secret", SECRET_MARKER in text), ("control characters", bool(unsafe_characters(text))),
            ("file not named", printable(str(inbox / case.name)) not in flat),
            ("field not named", not all(e in flat.lower() for e in expect))] if bad]
        if problems:
            wrong[case.name] = f"{problems}: {text[:300]}"
    assert not wrong, f"{len(wrong)} of {len(cases)}: {dict(list(wrong.items())[:15])}"


def test_sensor_requests_valid_specs_behind_bad_ones(tmp_path):
    scratch = tmp_path / "scratch"
    cases = {c.name: c for c in build_corpus(scratch, tmp_path / "outside")}
    with dg.DagsterInstance.ephemeral() as instance:
        pipeline = PipelineResource(data_dir=str(tmp_path / "data"))
        inbox = pipeline.inbox_path
        inbox.mkdir(parents=True)
        cursor = None
        for round_, names in enumerate([NASTY[:10], NASTY[10:]]):
            for name in names:
                if name in cases:
                    os.rename(scratch / name, inbox / name)
            age(inbox, 120)  # the bad entries are older: scanned first
            fresh = valid_spec(inbox, f"behind-{round_}", time.time() - 30)
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pipeline": pipeline})
            with timer(SCAN_TIMEOUT_S):
                result = spec_inbox_sensor(context)
            assert [r.partition_key for r in result.run_requests] == [f"behind-{round_}"]
            assert [r.partition_keys for r in result.dynamic_partitions_requests] == [[f"behind-{round_}"]]
            assert (inbox / "processed" / fresh.name).exists()
            assert spec_named(inbox) == []
            for name in names:
                if name in cases:
                    error = (inbox / "rejected" / f"{name}.error.txt").read_text()
                    assert SECRET_MARKER not in error and not unsafe_characters(error), error
            instance.add_dynamic_partitions("videos", [f"behind-{round_}"])
            cursor = result.cursor
        assert set(json.loads(cursor)) == {"behind-0", "behind-1"}
