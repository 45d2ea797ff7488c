"""Hostile spec files (``hostile_corpus``) through ``pipeline validate`` and ``pipeline render``:
no traceback, no hang, exit 2 for every invalid spec with a message naming the file and the field
(or the file-level problem), nothing user-written acting on the terminal, no secret ever printed.

The whole corpus runs in-process with a per-case timer; a sample including the FIFO, /dev/zero and
symbolic-link cases runs as real ``pipeline`` subprocesses with a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import unicodedata
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.printable import printable
from pipeline_tests.conftest import make_dagster_home
from pipeline_tests.hostile_corpus import SECRET_MARKER, Case, build_corpus

PIPELINE = str(Path(sys.executable).parent / "pipeline")
CASE_TIMEOUT_S = 60.0
"""Per case, in-process: the slowest valid case takes ~3 s on an idle machine."""
SUBPROCESS_TIMEOUT_S = 180.0

SUBPROCESS_SAMPLE = [  # what a real process meets differently (blocking opens, devices, sizes, a
    # terminal stream); test_validate_whole_corpus_in_process covers every case's message
    "fifo.yaml", "link-to-fifo.yaml", "link-dev-zero.yaml", "link-dev-stdin.yaml", "link-secret-abs.yaml",
    "link-loop-a.yaml", "dir.yaml", "sock.yaml", "sparse-10g.yaml", "size-2mb.yaml", "nest-list-10000.yaml",
    "billion-laughs.yaml", "utf-16-le-bom.yaml", "text-title-09.yaml", "esc\x1b[31m-2-bad.yaml",
]


class CaseTimeout(BaseException):
    """A case ran past its timer (a BaseException, so no ``except Exception`` in the CLI eats it)."""


@contextmanager
def timer(seconds: float):
    def expire(signum, frame):
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def unsafe_characters(text: str) -> list[str]:
    """Control, bidi-format and separator characters that would act on a terminal (newline allowed)."""
    return sorted({repr(ch) for ch in text if ch != "\n" and (unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")
                   or (unicodedata.category(ch) == "Cf" and ch not in "\u200c\u200d"))})


def check_output(case: Case, path: Path, code, text: str) -> list[str]:
    """Everything wrong with one run's exit code and output (empty when all is well)."""
    problems = []
    if "Traceback" in text or "internal error" in text:
        problems.append("traceback")
    flat = text.replace("\n", "")
    if SECRET_MARKER in text:
        problems.append("secret printed")
    if unsafe_characters(text):
        problems.append(f"raw control characters {unsafe_characters(text)}")
    want = 0 if case.valid else 2
    if code != want:
        problems.append(f"exit {code}, expected {want}")
    if printable(str(path)) not in flat:
        problems.append("file not named")
    if code == 2:
        missing = [e for e in case.expect if e not in flat.lower()]
        if missing:
            problems.append(f"message lacks {missing}")
    return problems


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("hostile")
    return root / "corpus", build_corpus(root / "corpus", root / "outside")


def test_corpus_is_large_and_varied(corpus):
    _, cases = corpus
    assert len(cases) >= 700
    assert sum(c.valid for c in cases) >= 100 and sum(not c.valid for c in cases) >= 600
    assert {"binary", "symlink", "names", "duplicate", "yaml", "top-level", "file", "structure"} <= {c.group for c in cases}


def test_validate_whole_corpus_in_process(corpus, capsys):
    folder, cases = corpus
    failures: dict[str, list[str]] = {}
    counts = {"tracebacks": 0, "hangs": 0, "no file/field": 0}
    for case in cases:
        path = folder / case.name
        code = None
        try:
            with timer(CASE_TIMEOUT_S):
                code = main(["validate", str(path)])
        except CaseTimeout:
            failures[case.name] = ["hang"]
            counts["hangs"] += 1
            continue
        except BaseException as exc:  # noqa: BLE001 - anything escaping main is a traceback
            code = f"raised {type(exc).__name__}: {exc}"
        out = capsys.readouterr()
        problems = check_output(case, path, code, out.out + out.err)
        counts["tracebacks"] += "traceback" in problems or str(code).startswith("raised")
        counts["no file/field"] += any(p.startswith(("message lacks", "file not named")) for p in problems)
        if problems:
            failures[case.name] = problems
    print(f"\n{len(cases)} hostile specs validated in-process: {counts}")
    assert not failures, f"{len(failures)} of {len(cases)} cases: {dict(list(failures.items())[:20])}"


def run_cli(args: list[str], env: dict | None = None, timeout: float = SUBPROCESS_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([PIPELINE, *args], capture_output=True, text=True, errors="surrogateescape",
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_validate_sample_as_real_subprocesses(corpus):
    folder, cases = corpus
    by_name = {c.name: c for c in cases}
    sample = [by_name[name] for name in SUBPROCESS_SAMPLE if name in by_name]
    assert len(sample) >= len(SUBPROCESS_SAMPLE) - 1  # the socket may be skipped (AF_UNIX path length)
    failures = {}
    for case in sample:
        proc = run_cli(["validate", str(folder / case.name)])
        problems = check_output(case, folder / case.name, proc.returncode, proc.stdout + proc.stderr)
        if problems:
            failures[case.name] = problems + [proc.stderr[-400:]]
    assert not failures, failures


def test_validate_of_devices_and_missing_paths_is_a_clean_error(tmp_path):
    for path, words in [("/dev/zero", "character device"), ("/dev/null", "character device"), ("/", "directory"),
                        (str(tmp_path / "missing.yaml"), "no such file"), ("", "no such file"),
                        (str(tmp_path / "missing" / "x.yaml"), "no such file")]:
        proc = run_cli(["validate", path])
        assert proc.returncode == 2, (path, proc.stderr)
        assert "Traceback" not in proc.stderr and words in proc.stderr, (path, proc.stderr)


def test_unusable_arguments_are_clean_errors():
    for args, code in [(["status", "Bad Id\x1b[31m"], 2), (["retry", "../../etc"], 2), (["render", "x.yaml", "--max-parallel", "0"], 2),
                       (["nonsense\x1b]0;pwned\x07"], 2)]:
        proc = run_cli(args)
        assert proc.returncode == code, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and not unsafe_characters(proc.stdout + proc.stderr), (args, proc.stderr)


# --- render --------------------------------------------------------------------------------------

def render_sample(cases: list[Case]) -> list[Case]:
    """Every special entry (FIFO, links, directory, ...) and every third other invalid case that
    fails at load time; valid specs are rendered by the dedicated test below."""
    refused = [c for c in cases if not c.registers]
    return [c for i, c in enumerate(refused) if c.special or i % 3 == 0]


def test_render_sample_of_the_corpus_in_process(corpus, env, capsys):
    folder, cases = corpus
    sample = render_sample(cases)
    assert len(sample) >= 100
    failures = {}
    for case in sample:
        path = folder / case.name
        try:
            with timer(CASE_TIMEOUT_S):
                code = main(["render", str(path)])
        except CaseTimeout:
            failures[case.name] = ["hang"]
            continue
        except BaseException as exc:  # noqa: BLE001
            code = f"raised {type(exc).__name__}: {exc}"
        out = capsys.readouterr()
        problems = check_output(case, path, code, out.out + out.err)
        if problems:
            failures[case.name] = problems
    assert not failures, f"{len(failures)} of {len(sample)}: {dict(list(failures.items())[:20])}"
    assert not (env.data_dir / "specs").exists() or not any((env.data_dir / "specs").glob("*.json"))


def test_render_sample_as_real_subprocesses(corpus, tmp_path):
    folder, cases = corpus
    by_name = {c.name: c for c in cases}
    env = {"DAGSTER_HOME": str(make_dagster_home(tmp_path / "home")), "PIPELINE_DATA_DIR": str(tmp_path / "data")}
    for name in ["fifo.yaml", "link-secret-abs.yaml", "link-dev-zero.yaml", "text-video_id-06.json", "num-music-bpm-00-flow.json"]:
        proc = run_cli(["render", str(folder / name)], env=env)
        problems = check_output(by_name[name], folder / name, proc.returncode, proc.stdout + proc.stderr)
        assert not problems, (name, problems, proc.stderr[-500:])


MARKUP_SPEC = """\
video_id: markup-kite
title: "[bold red]Loud[/] title :smile:"
duration_s: 15  # at most 3 beats (one per 5 s); the beats are shorter, so the video is 3 s
aspect_ratio: "1:1"
style: "[/oops] flat card"
music: {prompt: "[link=x]tune[/link] :smile:", bpm: 120}
beats:
  - {prompt: "[/oops] a kite", duration_s: 1}
  - {prompt: "[bold]sun[/bold] rises", duration_s: 1, motion: "\\e]0;pwned\\a push in"}
  - {prompt: "red \\e[31mkite\\e[0m", duration_s: 1}
"""


@pytest.mark.timeout(900)
def test_a_valid_spec_with_markup_and_escapes_renders_and_prints_them_literally(tmp_path):
    spec = tmp_path / "markup.yaml"
    spec.write_text(MARKUP_SPEC)
    env = {"DAGSTER_HOME": str(make_dagster_home(tmp_path / "home")), "PIPELINE_DATA_DIR": str(tmp_path / "data")}
    for attempt in ("first", "rerun"):
        proc = run_cli(["render", str(spec)], env=env, timeout=600)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, (attempt, text[-3000:])
        assert "Traceback" not in text and not unsafe_characters(text), (attempt, text[-3000:])
        for literal in ("[/oops] a kite", "[bold]sun[/bold] rises", "red \\x1b[31mkite\\x1b[0m",
                        "[bold red]Loud[/] title :smile:", "[link=x]tune[/link] :smile:"):
            assert literal in text, (attempt, literal, text[-3000:])
        assert (tmp_path / "data" / "videos" / "markup-kite.mp4").stat().st_size > 0
    assert "up to date" in proc.stdout
