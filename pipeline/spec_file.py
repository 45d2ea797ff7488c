"""Reading a spec file safely: a regular file, inside its own folder, at most 1 MB, UTF-8.

Spec files come from users and from an inbox anyone may drop files into, so the path may name
a FIFO (which would block a plain ``open``), a device (``/dev/zero`` never ends), a directory, a
socket, a symbolic link loop, or a link to a secret elsewhere on the machine. ``read_spec_bytes``
refuses all of these before reading a byte, and its messages never name a link's target or show
its contents. ``decode_spec_text`` requires UTF-8 (a UTF-8 byte order mark is accepted).
Nothing here imports Dagster.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat

MAX_SPEC_BYTES = 1_000_000
"""Largest spec file read, in bytes (1 MB; a long spec with 1,000 beats is about 100 kB)."""

_READ_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NOCTTY", 0))
"""O_NONBLOCK: opening a FIFO never waits for a writer. O_NOFOLLOW: the name opened is not a link."""


class SpecInputError(ValueError):
    """A spec file cannot be read or parsed. ``str(error)`` is one line saying what is wrong and
    where (no file name: the caller adds it), safe to show (control characters escaped)."""


def _kind(mode: int) -> str | None:
    """What a non-regular file is, for messages; None for a regular file."""
    for test, name in ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "cannot be read: permission denied"
    if isinstance(exc, NotADirectoryError):
        return "no such file (a folder in its path is not a folder)"
    if exc.errno == errno.ELOOP:
        return "is a symbolic link that loops (it leads back to itself)"
    if exc.errno == errno.ENAMETOOLONG:
        return "cannot be read: the path is too long"
    return f"cannot be read: {exc.strerror or type(exc).__name__}"


def _resolve_link(path: str) -> str:
    """The file a symbolic link at ``path`` leads to, if it is inside the link's own folder.

    Raises SpecInputError for a link that leaves the folder, loops or dangles. The message never
    names the target: a link to a secret file must not reveal its path or existence details.
    """
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    lexical = os.path.realpath(path)  # non-strict: resolves what exists, even on a dangling link
    if os.path.commonpath([folder, lexical]) != folder:
        raise SpecInputError("is a symbolic link to a file outside its folder; refusing to follow it "
                             "(copy the spec into the folder instead)")
    try:
        target = os.path.realpath(path, strict=True)
    except FileNotFoundError:
        raise SpecInputError("is a symbolic link to a file that does not exist (a dangling link)") from None
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ELOOP, None):
            raise SpecInputError(f"is a symbolic link that cannot be followed: {exc.strerror}") from None
        raise SpecInputError("is a symbolic link that loops (it leads back to itself)") from None
    if os.path.commonpath([folder, target]) != folder:
        raise SpecInputError("is a symbolic link to a file outside its folder; refusing to follow it "
                             "(copy the spec into the folder instead)")
    return target


def check_spec_size(size: int, *, max_bytes: int = MAX_SPEC_BYTES) -> None:
    """Refuse a spec of ``size`` bytes before reading it: raises SpecInputError if it is over
    ``max_bytes`` (default 1 MB). Used for files (their lstat size) and S3 objects (their listed size)."""
    if size > max_bytes:
        raise SpecInputError(f"is {size:,} bytes, larger than the {max_bytes:,}-byte limit for a spec")


def read_spec_bytes(path: str | os.PathLike, *, max_bytes: int = MAX_SPEC_BYTES) -> bytes:
    """The bytes of the spec file at ``path`` (at most ``max_bytes``, default 1 MB).

    Only a regular file is read: a FIFO, socket, device or directory is refused (checked with
    ``lstat`` before opening, then ``fstat`` on the descriptor, opened with O_NONBLOCK and
    O_NOFOLLOW, so nothing ever blocks and a file swapped in between is caught). A symbolic link
    is followed only to a file inside the link's own folder. At most ``max_bytes + 1`` bytes are
    read. Raises SpecInputError (a ValueError) for every problem, missing files included.
    """
    name = os.fspath(path)
    try:
        info = os.lstat(name)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise SpecInputError(_os_problem(exc) if isinstance(exc, OSError) else "no such file") from None
    target = name
    if stat.S_ISLNK(info.st_mode):
        target = _resolve_link(name)
        try:
            info = os.lstat(target)
        except OSError as exc:
            raise SpecInputError("is a symbolic link that cannot be followed: " + _os_problem(exc)) from None
    kind = _kind(info.st_mode)
    if kind is not None:
        via = "is a symbolic link to " if target != name else "is "
        raise SpecInputError(f"{via}{kind}, not a regular file; a spec must be a regular file")
    check_spec_size(info.st_size, max_bytes=max_bytes)
    try:
        fd = os.open(target, _READ_FLAGS)
    except OSError as exc:
        raise SpecInputError(_os_problem(exc)) from None
    try:
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        if kind is not None:  # swapped for something else between lstat and open
            raise SpecInputError(f"is {kind}, not a regular file; a spec must be a regular file")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise SpecInputError(_os_problem(exc)) from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise SpecInputError(f"is larger than the {max_bytes:,}-byte limit for a spec")
    return b"".join(chunks)


_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))


def decode_spec_text(data: bytes) -> str:
    """``data`` decoded as UTF-8, without a leading UTF-8 byte order mark.

    Raises SpecInputError for UTF-16/UTF-32 text (by its byte order mark), for NUL bytes (binary
    data, or UTF-16/32 without a mark) and for invalid UTF-8, naming the byte offset and line.
    """
    offset = 0
    if data.startswith(codecs.BOM_UTF8):
        data, offset = data[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
    else:
        for bom, encoding in _BOMS:  # UTF-32 LE before UTF-16 LE: FF FE 00 00 starts with FF FE
            if data.startswith(bom):
                raise SpecInputError(f"is {encoding} text (it starts with a {encoding} byte order mark); "
                                     "save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise SpecInputError(f"has a NUL byte at byte offset {nul + offset} (line {line}): "
                             "binary data, or UTF-16/UTF-32 text without a byte order mark; save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecInputError(f"is not UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start + offset} "
                             f"(line {line}): {exc.reason}; save it as UTF-8") from None
