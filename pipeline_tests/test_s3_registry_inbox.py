"""Nothing machine-local with S3 configured, part 1, against moto's S3 server on 127.0.0.1: the spec
registry on S3 (round trip, compare-and-swap, concurrent registration: exactly one submitter
changes it, locally and on S3), the S3 inbox prefix (a good spec filed and registered; the hostile
corpus's files rejected with a reason object, nothing crashes, a too-big object never read), and
``pipeline submit`` to S3 (configured, or ``--to``) followed by a real ``spec_inbox_sensor`` tick."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import boto3
import dagster as dg
import pytest

from pipeline.cli import main
from pipeline.defs.resources import PipelineResource, S3Settings
from pipeline.defs.sensors import spec_inbox_sensor
from pipeline.inbox import filed_name, scan_inbox
from pipeline.inbox_s3 import S3Inbox
from pipeline.printable import printable
from pipeline.s3_store import S3Location
from pipeline.spec import load_spec
from pipeline.spec_file import MAX_SPEC_BYTES
from pipeline.store import Workspace
from pipeline.submissions import list_submissions, load_submission, registry_objects, submit_spec
from pipeline.text_objects import LocalTextObjects
from pipeline_tests.conftest import EXAMPLES, write_spec
from pipeline_tests.hostile_corpus import SECRET_MARKER, base, build_corpus
from pipeline_tests.test_hostile_specs import unsafe_characters
from pipeline_tests.test_s3_store import CallCounter, _keys, bucket, moto_endpoint  # noqa: F401 (fixtures)


def _body(bucket_name: str, key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket=bucket_name, Key=key)["Body"].read()


# --- the spec registry --------------------------------------------------------------------------

def test_registry_round_trip_on_s3(bucket, tmp_path):
    specs = S3Location(bucket, "team/p").child("specs").text_objects()
    spec = load_spec(EXAMPLES / "tortoise-and-hare.yaml")
    sub, changed = submit_spec(specs, spec, source="drop/tortoise.yaml")
    assert changed and sub.provider == "local"
    assert _keys(bucket, "team/p/") == ["team/p/specs/tortoise-and-hare.json"]
    assert json.loads(_body(bucket, "team/p/specs/tortoise-and-hare.json"))["spec_sha256"] == sub.spec_sha256
    assert load_submission(specs, "tortoise-and-hare") == sub
    assert load_submission(f"s3://{bucket}/team/p/specs", "tortoise-and-hare") == sub  # a URI works as well
    assert [s.video_id for s in list_submissions(specs)] == ["tortoise-and-hare"]
    assert submit_spec(specs, spec, source="again.yaml") == (sub, False)  # identical: untouched

    changed_spec = spec.model_copy(update={"title": "The Hare Sleeps"})
    newer, changed = submit_spec(specs, changed_spec, source="v2.yaml")
    assert changed and newer.spec_sha256 != sub.spec_sha256
    assert load_submission(specs, "tortoise-and-hare").video_spec().title == "The Hare Sleeps"
    with pytest.raises(LookupError, match=f"s3://{bucket}/team/p/specs/nope.json"):
        load_submission(specs, "nope")

    # Listing: objects in sub-folders and hidden names are not entries; an unreadable one is skipped.
    s3 = boto3.client("s3")
    for key, body in [("team/p/specs/old/x.json", b"{}"), ("team/p/specs/.hidden.json", b"{}"),
                      ("team/p/specs/broken.json", b"not json")]:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert specs.listing().keys() == {"broken.json", "tortoise-and-hare.json"}
    assert [s.video_id for s in list_submissions(specs)] == ["tortoise-and-hare"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_compare_and_swap_refuses_a_stale_version(where, request, tmp_path):
    objects = (LocalTextObjects(tmp_path / "objs") if where == "local"
               else S3Location(request.getfixturevalue("bucket"), "cas").text_objects())
    assert objects.write_if("a.json", "one", None)
    assert not objects.write_if("a.json", "two", None)  # exists already
    text, version = objects.read_versioned("a.json")
    assert text == "one" and objects.write_if("a.json", "two", version)
    assert not objects.write_if("a.json", "three", version)  # stale: someone wrote since
    assert objects.read("a.json") == "two"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_registration_of_one_spec_changes_it_once(where, request, tmp_path):
    """Eight submitters (threads, each with its own connection) register the same spec at the same
    moment, as eight machines would: exactly one sees ``changed``, all get the same registration."""
    if where == "local":
        registry = Workspace.at(tmp_path / "data")
    else:
        bucket_name = request.getfixturevalue("bucket")
        registry = S3Location(bucket_name, "race", lambda: boto3.session.Session().client("s3")).child(
            "specs").text_objects()
    spec = load_spec(EXAMPLES / "water-cycle.yaml")
    for round_ in range(3):  # a fresh entry, then two changed versions over an existing one
        version = spec if round_ == 0 else spec.model_copy(update={"title": f"Water, take {round_}"})
        gate, results, errors = threading.Barrier(8), [], []

        def submit(i: int) -> None:
            try:
                gate.wait()
                results.append(submit_spec(registry, version, source=f"machine-{i}"))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sum(changed for _, changed in results) == 1, f"round {round_}: {[c for _, c in results]}"
        assert len({sub.spec_sha256 for sub, _ in results}) == 1
        assert load_submission(registry, spec.video_id).spec_sha256 == results[0][0].spec_sha256
    if where == "s3":
        assert registry_objects(registry).listing().keys() == {f"{spec.video_id}.json"}


# --- the S3 inbox -------------------------------------------------------------------------------

def _put(bucket_name: str, key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket_name, Key=key, Body=body)


def test_s3_inbox_files_a_good_spec_and_rejects_bad_ones_with_a_reason(bucket, tmp_path):
    counter = CallCounter()
    inbox = S3Inbox(S3Location(bucket, "p/inbox", counter.client))
    specs = S3Location(bucket, "p/specs").text_objects()
    good = (EXAMPLES / "tortoise-and-hare.yaml").read_bytes()
    bad = {
        "too-big.yaml": good + b"#" * (MAX_SPEC_BYTES + 1 - len(good)),
        "not-utf8.yaml": good.replace(b"Tortoise", b"Tor\xfftoise"),
        "invalid.yaml": b"video_id: [unclosed\n  title: {\n",
        "markup-key.json": json.dumps({**base(), "video_id": "markup", "[bold red]x[/]": 1}).encode(),
        "esc\x1b[31m-name.yaml": b"video_id: x\n",
    }
    _put(bucket, "p/inbox/good.yaml", good)
    for name, body in bad.items():
        _put(bucket, f"p/inbox/{name}", body)
    markup_ok = {**base(), "video_id": "markup-ok", "title": "[bold red]loud[/] \x1b]0;pwned\x07"}
    _put(bucket, "p/inbox/markup-ok.json", json.dumps(markup_ok).encode())
    _put(bucket, "p/inbox/nested/ignored.yaml", good)  # not at the top: not an entry
    _put(bucket, "p/inbox/.hidden.yaml", good)
    _put(bucket, "p/inbox/notes.txt", b"not a spec name")

    scan = scan_inbox(specs, inbox)
    assert scan.errors == [] and scan.waiting == []
    assert sorted(t.name for _, _, t in scan.accepted) == ["good.yaml", "markup-ok.json"]
    assert {s.video_id for s in list_submissions(specs)} == {"tortoise-and-hare", "markup-ok"}
    assert load_submission(specs, "markup-ok").spec["title"] == markup_ok["title"].strip()  # stored as written
    assert load_submission(specs, "tortoise-and-hare").source == f"s3://{bucket}/p/inbox/processed/good.yaml"
    rejected = {t.name: reason for t, reason in scan.rejected}
    assert set(rejected) == set(bad)
    left = set(_keys(bucket, "p/inbox/"))
    assert left >= {"p/inbox/nested/ignored.yaml", "p/inbox/.hidden.yaml", "p/inbox/notes.txt",
                    "p/inbox/processed/good.yaml", "p/inbox/processed/markup-ok.json"}
    assert not any(k.count("/") == 2 and k.endswith((".yaml", ".json")) and "/." not in k for k in left)
    for name, body in bad.items():
        assert _body(bucket, f"p/inbox/rejected/{name}") == body  # moved, not changed
        reason = _body(bucket, f"p/inbox/rejected/{name}.error.txt").decode("utf-8")
        assert reason.strip() == rejected[name].strip() and not unsafe_characters(reason)
        assert printable(f"s3://{bucket}/p/inbox/{name}") in reason.replace("\n", "")
    assert "1,000,001 bytes, larger than the 1,000,000-byte limit" in rejected["too-big.yaml"]
    assert "is not UTF-8: byte 0xff" in rejected["not-utf8.yaml"]
    assert "line" in rejected["invalid.yaml"]
    assert "[bold red]x[/]: unknown field" in rejected["markup-key.json"]
    # The too-big object was refused by its listed size: never downloaded.
    assert counter.count("GetObject") == 2 + len(bad) - 1  # good, markup-ok, every bad one but the too-big one

    # An identical spec dropped again is filed under a new name and registers nothing new.
    _put(bucket, "p/inbox/good.yaml", good)
    again = scan_inbox(specs, inbox)
    [(sub, changed, target)] = again.accepted
    assert not changed and target.name != "good.yaml" and target.name.startswith("good.")


FIELD_SAMPLE = 6
"""Every 6th field mutation of the corpus goes to S3 (the parser is the local inbox's, whose test
takes them all); every file-level, name, encoding, structure, YAML and duplicate-key case goes."""


def test_s3_inbox_takes_the_hostile_corpus_files(bucket, tmp_path):
    """The hostile corpus's regular files (the links, FIFOs and devices have no S3 analogue; field
    mutations sampled), each uploaded as an object: valid specs are registered, every other is
    rejected with a reason object naming the object and the field, escaped, no secret in it;
    nothing raises."""
    folder = tmp_path / "corpus"
    cases = [c for c in build_corpus(folder, tmp_path / "outside")
             if (folder / c.name).is_file() and not (folder / c.name).is_symlink()
             and (folder / c.name).stat().st_size <= 4 * MAX_SPEC_BYTES]
    fields = [c for c in cases if c.group == "field"]
    cases = [c for c in cases if c.group != "field"] + fields[::FIELD_SAMPLE]
    s3 = boto3.client("s3")
    uploaded = []
    for case in cases:
        try:
            case.name.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not a possible object key
            continue
        if "\n" in case.name:  # S3 takes it, moto's server answers 404 to such a key
            continue
        s3.put_object(Bucket=bucket, Key=f"c/inbox/{case.name}", Body=(folder / case.name).read_bytes())
        uploaded.append(case)
    assert len(uploaded) > 300 and {c.group for c in uploaded} >= {"file", "binary", "names", "field", "yaml"}
    specs = S3Location(bucket, "c/specs").text_objects()
    scan = scan_inbox(specs, S3Inbox(S3Location(bucket, "c/inbox")))
    assert scan.errors == [] and scan.waiting == []
    accepted = {t.name for _, _, t in scan.accepted}
    rejected = {t.name: reason for t, reason in scan.rejected}
    objects = set(_keys(bucket, "c/inbox/"))
    wrong = {}
    for case in uploaded:
        name = filed_name(case.name)
        if case.registers:
            if name not in accepted or f"c/inbox/processed/{name}" not in objects:
                wrong[case.name] = "valid, not registered/processed"
            continue
        if name not in rejected or f"c/inbox/rejected/{name}.error.txt" not in objects:
            wrong[case.name] = "not rejected with a reason object"
            continue
        text = _body(bucket, f"c/inbox/rejected/{name}.error.txt").decode("utf-8")
        flat = text.replace("\n", "")
        problems = [p for p, is_bad in [
            ("secret", SECRET_MARKER in text), ("control characters", bool(unsafe_characters(text))),
            ("object not named", printable(f"s3://{bucket}/c/inbox/{case.name}") not in flat),
            ("field not named", not all(e in flat.lower() for e in case.expect))] if is_bad]
        if problems:
            wrong[case.name] = f"{problems}: {text[:300]}"
    assert not wrong, f"{len(wrong)} of {len(uploaded)}: {dict(list(wrong.items())[:10])}"
    assert not [k for k in objects if k.count("/") == 2 and k.lower().endswith((".yaml", ".yml", ".json"))
                and not k.split("/")[-1].startswith(".")], "every spec-named object left the inbox"


# --- pipeline submit to S3, then the sensor --------------------------------------------------------

def _tick(pipeline: PipelineResource, instance, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pipeline": pipeline})
    return spec_inbox_sensor(context)


def test_submit_to_the_s3_inbox_then_a_sensor_tick_registers_it(bucket, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_S3_BUCKET", bucket)
    monkeypatch.setenv("PIPELINE_S3_PREFIX", "cluster")
    monkeypatch.delenv("PIPELINE_INBOX_DIR", raising=False)
    laptop = tmp_path / "laptop"
    spec = write_spec(tmp_path / "kite.yaml", video_id="kite")
    assert main(["--data-dir", str(laptop), "submit", str(spec)]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert f"s3://{bucket}/cluster/inbox/kite.yaml" in out
    assert _body(bucket, "cluster/inbox/kite.yaml") == spec.read_bytes()  # the validated bytes, as they were
    assert not (laptop / "inbox").exists() and not (laptop / "specs").exists()

    # `--to` a cluster's bucket/prefix from a machine with no S3 configured.
    monkeypatch.delenv("PIPELINE_S3_BUCKET")
    monkeypatch.delenv("PIPELINE_S3_PREFIX")
    other = write_spec(tmp_path / "boat.yaml", video_id="boat")
    assert main(["--data-dir", str(laptop), "submit", str(other), "--provider", "local",
                 "--to", f"s3://{bucket}/cluster"]) == 0
    assert f"s3://{bucket}/cluster/inbox/boat.json" in capsys.readouterr().out.replace("\n", "")
    assert json.loads(_body(bucket, "cluster/inbox/boat.json"))["provider"] == "local"
    assert main(["--data-dir", str(laptop), "submit", str(other), "--to", str(tmp_path)]) == 2
    assert "expected s3://bucket" in capsys.readouterr().err.replace("\n", " ")

    # The cluster's daemon (another, empty data directory) ticks the inbox sensor.
    daemon = PipelineResource(data_dir=str(tmp_path / "daemon"), s3=S3Settings(bucket=bucket, prefix="cluster"))
    with dg.DagsterInstance.ephemeral() as instance:
        result = _tick(daemon, instance)
        assert sorted(r.partition_key for r in result.run_requests) == ["boat", "kite"]
        assert {r.job_name for r in result.run_requests} == {"plan_video"}
        assert [sorted(r.partition_keys) for r in result.dynamic_partitions_requests] == [["boat", "kite"]]
        registered = {s.video_id: s for s in list_submissions(daemon.specs)}
        assert set(registered) == {"boat", "kite"}
        assert registered["kite"].source == f"s3://{bucket}/cluster/inbox/processed/kite.yaml"
        assert set(_keys(bucket, "cluster/inbox/")) == {"cluster/inbox/processed/kite.yaml",
                                                        "cluster/inbox/processed/boat.json"}
        assert set(_keys(bucket, "cluster/specs/")) == {"cluster/specs/kite.json", "cluster/specs/boat.json"}
        assert not (tmp_path / "daemon" / "specs").exists() and not (tmp_path / "daemon" / "inbox").exists()
        instance.add_dynamic_partitions("videos", ["boat", "kite"])
        assert _tick(daemon, instance, result.cursor).run_requests == []  # idempotent


def test_inbox_dir_may_name_an_s3_prefix_or_keep_a_folder(bucket, tmp_path):
    s3 = S3Settings(bucket=bucket, prefix="x")
    assert str(PipelineResource(data_dir=str(tmp_path), s3=s3).inbox) == f"s3://{bucket}/x/inbox"
    assert str(PipelineResource(data_dir=str(tmp_path), s3=s3, inbox_dir=f"s3://{bucket}/drop").inbox) == \
        f"s3://{bucket}/drop"
    folder = PipelineResource(data_dir=str(tmp_path), s3=s3, inbox_dir=str(tmp_path / "in")).inbox
    assert str(folder) == str(tmp_path / "in")
    assert str(PipelineResource(data_dir=str(tmp_path)).inbox) == str(Path(tmp_path).resolve() / "inbox")
    empty = scan_inbox(S3Location(bucket, "x/specs").text_objects(), f"s3://{bucket}/empty/inbox")
    assert (empty.accepted, empty.rejected, empty.errors) == ([], [], [])  # a prefix with nothing is an empty inbox


def test_sensor_leaves_a_render_on_another_machine_its_registration_for_a_while(bucket, tmp_path, monkeypatch):
    """A ``pipeline render`` on a laptop registers into the cluster's S3 registry and plans the video
    itself: the daemon's sensor does not plan it too, unless the render never does (it died)."""
    import pipeline.submissions as submissions
    from pipeline.procs import ProcessIdentity

    daemon = PipelineResource(data_dir=str(tmp_path / "daemon"), s3=S3Settings(bucket=bucket, prefix="claims"))
    spec = load_spec(write_spec(tmp_path / "kite.yaml", video_id="kite"))
    elsewhere = "laptop-elsewhere.invalid:4242:99"
    sub, _ = submit_spec(daemon.specs, spec, source="laptop:kite.yaml", registered_by=elsewhere)
    assert load_submission(daemon.specs, "kite").registered_by == elsewhere
    here = submit_spec(daemon.specs, spec.model_copy(update={"video_id": "boat"}), source="here",
                       registered_by=str(ProcessIdentity.current()))[0]
    with dg.DagsterInstance.ephemeral() as instance:
        first = _tick(daemon, instance)
        # This machine's registration: the render lock decides (none held): requested at once.
        assert [r.partition_key for r in first.run_requests] == [here.video_id]
        monkeypatch.setattr(submissions, "RENDER_CLAIM_S", 0.0)  # the laptop never planned it
        second = _tick(daemon, instance, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["kite"]
        assert second.run_requests[0].tags["pipeline/spec"] == sub.spec_sha256[:12]


def test_character_images_travel_in_the_spec_to_the_s3_inbox(bucket, tmp_path, monkeypatch, capsys):
    """A spec naming a character's reference image by path: dropped as is into the S3 inbox it is
    rejected with a reason (no folder to read the image from); `pipeline submit` carries the image
    in the uploaded spec, and the registered spec holds the image itself."""
    from pipeline.spec_characters import ReferenceImage

    race = EXAMPLES / "characters" / "race.yaml"
    specs = S3Location(bucket, "cast/specs").text_objects()
    _put(bucket, "cast/inbox/race.yaml", race.read_bytes())
    scan = scan_inbox(specs, S3Inbox(S3Location(bucket, "cast/inbox")))
    [(target, reason)] = scan.rejected
    assert target.name == "race.yaml" and scan.accepted == []
    assert "characters.Tortoise.reference_image" in reason and "pipeline submit" in reason
    assert "pipeline submit" in _body(bucket, "cast/inbox/rejected/race.yaml.error.txt").decode()

    monkeypatch.delenv("PIPELINE_S3_BUCKET", raising=False)
    assert main(["--data-dir", str(tmp_path / "laptop"), "submit", str(race), "--to", f"s3://{bucket}/cast"]) == 0
    assert f"s3://{bucket}/cast/inbox/race-with-characters.json" in capsys.readouterr().out.replace("\n", "")
    again = scan_inbox(specs, S3Inbox(S3Location(bucket, "cast/inbox")))
    [(sub, changed, _)] = again.accepted
    image = sub.video_spec().characters["Tortoise"].reference_image
    assert changed and isinstance(image, ReferenceImage)
    assert image.image_bytes() == (EXAMPLES / "characters" / "tortoise.png").read_bytes()
