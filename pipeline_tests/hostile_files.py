"""File-level entries of the hostile spec corpus: encodings, binary data, sizes, FIFOs, sockets,
directories, symbolic links (loops, dangling, to secrets and devices) and hostile file names."""

from __future__ import annotations

import codecs
import json
import os
import random
import socket
from pathlib import Path

from pipeline_tests.hostile_emit import SECRET_MARKER, Case, base, emit_block, write


def file_cases(folder: Path, outside: Path) -> list[Case]:
    out, valid_text = [], emit_block(base()) + "\n"
    valid_bytes = valid_text.encode()

    def add(name, data, valid, *expect, group="file", special=False):
        if data is not None:
            write(folder, name, data)
        out.append(Case(name, valid, tuple(e.lower() for e in expect), group, special))

    rng = random.Random(1234)
    for i, size in enumerate([1, 7, 64, 512, 4096, 65_536]):
        add(f"garbage-{i}.yaml", rng.randbytes(size), False, "the file", group="binary")
    for i, head in enumerate([b"\x89PNG\r\n\x1a\n", b"\x7fELF\x02\x01\x01", b"\x1f\x8b\x08\x00", b"PK\x03\x04"]):
        add(f"magic-{i}.yaml", head + rng.randbytes(256), False, "the file", group="binary")
    add("nul-middle.yaml", valid_bytes[:40] + b"\x00" + valid_bytes[40:], False, "nul byte at byte offset 40")
    add("nul-only.yaml", b"\x00" * 100, False, "nul byte at byte offset 0")
    add("nul-escaped-valid.json", json.dumps({**base(), "title": "a\x00b"}), True)
    for enc, bom in [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                     ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", codecs.BOM_UTF32_BE)]:
        word = "utf-16" if "16" in enc else "utf-32"
        add(f"{enc}-bom.yaml", bom + valid_text.encode(enc), False, word)
        add(f"{enc}-nobom.yaml", valid_text.encode(enc), False, "nul byte")
    add("utf-8-bom.yaml", codecs.BOM_UTF8 + valid_bytes, True)
    add("utf-8-bom-twice.yaml", codecs.BOM_UTF8 * 2 + valid_bytes, True)  # YAML skips a BOM at the start too
    add("utf-8-bom-inside.yaml", valid_bytes.replace(b"title", codecs.BOM_UTF8 + b"title"), False,
        "\\ufefftitle: unknown field")
    add("utf-8-bom-invalid.yaml", codecs.BOM_UTF8 + valid_bytes.replace(b"bpm: 120", b"bpm: true"), False, "music.bpm: ")
    latin = valid_text.replace("A red kite rises", "Caf\u00e9 kite").encode("latin-1")
    add("latin-1.yaml", latin, False, f"byte 0xe9 at byte offset {latin.index(bytes([0xE9]))}")
    for i, bad in enumerate([b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xff", b"\x80"]):
        data = valid_bytes.replace(b"A red kite rises", b"A red " + bad + b" kite")
        add(f"bad-utf8-{i}.yaml", data, False, f"byte offset {data.index(bad)}", "not utf-8")
    add("truncated-utf8.yaml", valid_bytes + b"# \xe2\x82", False, "not utf-8", "unexpected end")
    add("raw-esc.yaml", valid_text.replace("A red kite rises", "\x1b[31mred"), False, "\\x1b", "line 11")
    add("raw-del.yaml", valid_text.replace("A red kite rises", "del\x7f"), False, "\\x7f")
    add("raw-c1.yaml", valid_text.replace("A red kite rises", "csi\x9b31m"), False, "\\x9b")
    add("raw-rtl-valid.yaml", valid_text.replace("A red kite rises", "\u202eevil"), True)
    add("crlf-valid.yaml", valid_text.replace("\n", "\r\n"), True)
    add("cr-only-valid.yaml", valid_text.replace("\n", "\r"), True)
    add("raw-utf8-valid.yaml", valid_text.replace("A red kite rises", "\U0001f600 \u00e9t\u00e9 \u6f22\u5b57"), True)
    add("size-2mb.yaml", valid_text + "# " + "x" * 2_000_000 + "\n", False, "larger than the 1,000,000-byte limit")
    add("size-cap-plus-one.yaml", valid_text + "#" * (1_000_001 - len(valid_bytes)), False, "larger than")
    add("size-cap-valid.yaml", valid_text + "#" * (1_000_000 - len(valid_bytes) - 1) + "\n", True)
    with open(folder / "sparse-10g.yaml", "wb") as f:
        f.truncate(10 * 2**30)
    add("sparse-10g.yaml", None, False, "larger than", special=True)

    # Not regular files: never opened for reading, never blocking.
    (folder / "dir.yaml").mkdir()
    (folder / "dir.yaml" / "inner.yaml").write_text(valid_text)
    add("dir.yaml", None, False, "is a directory", special=True)
    os.mkfifo(folder / "fifo.yaml")
    add("fifo.yaml", None, False, "fifo", special=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(folder / "sock.yaml"))
        add("sock.yaml", None, False, "socket", special=True)
    except OSError:  # path too long for AF_UNIX: skip this one case
        pass
    finally:
        sock.close()

    # Symbolic links: loops, dangling, outside the folder (secret, devices), inside (followed).
    secret = outside / "secret.yaml"
    secret.write_text(valid_text.replace("A kite", SECRET_MARKER) + f"# {SECRET_MARKER}\n")
    (outside / "secret-broken.yaml").write_text(f"{SECRET_MARKER}: [unclosed\n{SECRET_MARKER}\n")
    links = [("link-loop-a.yaml", "link-loop-b.yaml", "loops"), ("link-loop-b.yaml", "link-loop-a.yaml", "loops"),
             ("link-self.yaml", "link-self.yaml", "loops"), ("link-dangling.yaml", "no-such-file.yaml", "does not exist"),
             ("link-secret-abs.yaml", str(secret), "outside its folder"),
             ("link-secret-broken.yaml", str(outside / "secret-broken.yaml"), "outside its folder"),
             ("link-secret-rel.yaml", os.path.relpath(secret, folder), "outside its folder"),
             ("link-dev-zero.yaml", "/dev/zero", "outside its folder"), ("link-dev-null.yaml", "/dev/null", "outside"),
             ("link-dev-stdin.yaml", "/dev/stdin", "outside"), ("link-proc-environ.yaml", "/proc/self/environ", "outside"),
             ("link-etc-shadow.yaml", "/etc/shadow", "outside"), ("link-parent.yaml", "..", "outside"),
             ("link-folder.yaml", ".", "directory"), ("link-to-dir.yaml", "dir.yaml", "directory"),
             ("link-to-fifo.yaml", "fifo.yaml", "fifo"), ("link-dangling-outside.yaml", "/nonexistent/x.yaml", "outside"),
             ("link-valid.yaml", "utf-8-bom.yaml", None), ("link-chain.yaml", "link-valid.yaml", None)]
    for name, target, expect in links:
        os.symlink(target, folder / name)
        add(name, None, expect is None, *((expect,) if expect else ()), group="symlink", special=True)

    # Hostile file names (valid and invalid content): the name is shown escaped, never acted on.
    for i, stem in enumerate(["[bold]evil", "[link=http:x]click", "esc\x1b[31m", "osc\x1b]0;pwned\x07", "cr\rname",
                              "rtl\u202egpj", "new\nline", "-rf", "sp ace", "\u6f22\u5b57", "a" * 240]):
        add(f"{stem}-{i}.yaml", valid_text, True, group="names")
        add(f"{stem}-{i}-bad.yaml", valid_text.replace("bpm: 120", "bpm: .nan"), False, "music.bpm: ", group="names")
    for name in (b"latin-1-\xe9-name.yaml", b"bad-utf8-\xff\xfe-name.yaml"):  # not UTF-8: a surrogate-escaped str
        add(os.fsdecode(name), valid_text.replace("bpm: 120", "bpm: true"), False, "music.bpm: ", group="names")
    return out
