"""The one way the library reads a whole file it was handed a path to.

``read_regular_file`` refuses, with a ``FileProblem`` that says what went wrong, every path that
is not a readable regular file: a name over the filesystem's limit, a missing file or one
deleted between the check and the read, a folder, a FIFO, a socket, a device, a file larger
than the caller's bound. It never blocks on a FIFO (the type is checked before opening, the open
is non-blocking and the opened descriptor is checked again) and never reads more than the
bound. Callers turn a ``FileProblem`` into their own coded error (``image_unreadable``,
``profile_not_found``...); ``FileProblem.reason`` is stable:

``not_found``      nothing at that path (or it vanished before it could be read)
``not_a_file``     a folder, FIFO, socket or device (``kind`` says which)
``name_too_long``  a name or the whole path is over the filesystem's limit
``too_large``      more bytes than the caller allows
``unreadable``     permission denied, an I/O error, a symlink loop, a NUL in the path
"""

from __future__ import annotations

import errno
import os
import stat


class FileProblem(Exception):
    """Why a path could not be read (see the module docstring)."""

    def __init__(self, reason: str, message: str, path: str, kind: str | None = None, size: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.path = path
        self.kind = kind
        self.size = size

    def details(self) -> dict:
        """``reason``/``kind``/``size`` for an error's details (``None`` entries left out)."""
        out = {"reason": self.reason, "kind": self.kind, "size": self.size}
        return {k: v for k, v in out.items() if v is not None}


def short_label(text: str, limit: int = 300) -> str:
    """``text`` kept to ``limit`` characters (its start and end) for messages about long paths."""
    return text if len(text) <= limit else f"{text[:limit // 2]}...[{len(text)} characters]...{text[-limit // 3:]}"


def describe_kind(mode: int) -> str:
    """``"a folder"``, ``"a FIFO (named pipe)"``, ``"a character device"``... for ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def path_text(path: str | os.PathLike | bytes) -> str:
    """``path`` as text for messages (bytes paths decoded with the filesystem's error handler)."""
    raw = os.fspath(path)
    return os.fsdecode(raw) if isinstance(raw, bytes) else raw


def _problem_from_oserror(exc: OSError, label: str, after_check: bool) -> FileProblem:
    code = exc.errno
    if code == errno.ENAMETOOLONG:
        return FileProblem("name_too_long", f"{label}: the path or one of its names is longer than the "
                                            "filesystem allows", label)
    if code == errno.ENOENT:
        if after_check:
            return FileProblem("not_found", f"{label}: the file was removed before it could be read", label)
        return FileProblem("not_found", f"{label}: no such file", label)
    if code == errno.ENOTDIR:
        return FileProblem("not_found", f"{label}: a folder in the path is a file", label)
    if code == errno.EISDIR:
        return FileProblem("not_a_file", f"{label} is a folder, not a file", label, kind="a folder")
    if code == errno.ENXIO:
        return FileProblem("not_a_file", f"{label} is a socket or a device without a reader, not a file", label)
    if code in (errno.EACCES, errno.EPERM):
        return FileProblem("unreadable", f"{label}: permission denied", label)
    if code == errno.ELOOP:
        return FileProblem("unreadable", f"{label}: too many levels of symbolic links", label)
    return FileProblem("unreadable", f"{label}: cannot be read ({exc.strerror or exc})", label)


def check_regular_file(path: str | os.PathLike | bytes, *, label: str | None = None) -> os.stat_result:
    """``os.stat`` of ``path`` if it is a regular file (symlinks followed), else ``FileProblem``.

    For readers that must hand a path to a library (safetensors' ``safe_open``); prefer
    ``read_regular_file`` wherever the bytes can be read here.
    """
    try:
        text = path_text(path)
    except (TypeError, UnicodeError) as exc:
        raise FileProblem("unreadable", f"not a usable path: {exc}", repr(path)) from None
    label = short_label(label or text)
    if not text:
        raise FileProblem("not_found", "the path is empty", text)
    if "\x00" in text:
        raise FileProblem("unreadable", f"{label!r}: the path contains a NUL character", label)
    try:
        st = os.stat(text)
    except OSError as exc:
        raise _problem_from_oserror(exc, label, after_check=False) from None
    except ValueError as exc:  # e.g. a path the platform cannot encode
        raise FileProblem("unreadable", f"{label}: {exc}", label) from None
    if not stat.S_ISREG(st.st_mode):
        kind = describe_kind(st.st_mode)
        raise FileProblem("not_a_file", f"{label} is {kind}, not a regular file", label, kind=kind)
    return st


def read_regular_file(path: str | os.PathLike | bytes, *, max_bytes: int | None = None,
                      label: str | None = None) -> bytes:
    """All bytes of the regular file at ``path``, at most ``max_bytes`` of them.

    Raises:
        FileProblem: see the module docstring for its ``reason`` values.
    """
    st = check_regular_file(path, label=label)
    text = path_text(path)
    label = short_label(label or text)
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileProblem("too_large", f"{label}: {st.st_size} bytes exceeds the {max_bytes}-byte limit", label,
                          size=st.st_size)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(text, flags)
    except OSError as exc:  # replaced or removed since the check
        raise _problem_from_oserror(exc, label, after_check=True) from None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):  # swapped for a FIFO or device between the check and the open
            kind = describe_kind(now.st_mode)
            raise FileProblem("not_a_file", f"{label} is {kind}, not a regular file", label, kind=kind)
        limit = max_bytes + 1 if max_bytes is not None else None
        chunks: list[bytes] = []
        total = 0
        while limit is None or total < limit:
            want = 1 << 20 if limit is None else min(1 << 20, limit - total)
            try:
                block = os.read(fd, want)
            except OSError as exc:
                raise _problem_from_oserror(exc, label, after_check=True) from None
            if not block:
                break
            chunks.append(block)
            total += len(block)
        if max_bytes is not None and total > max_bytes:  # grew while being read
            raise FileProblem("too_large", f"{label}: more than {max_bytes} bytes", label, size=total)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_dir_quiet(path: str | os.PathLike) -> bool:
    """``Path.is_dir`` that answers ``False`` instead of raising for a name over the filesystem's
    limit, a NUL or an unreadable parent (``pathlib`` only swallows ENOENT-like errors)."""
    try:
        return stat.S_ISDIR(os.stat(path_text(path)).st_mode)
    except (OSError, ValueError, TypeError):
        return False


def is_within(root: str | os.PathLike, candidate: str | os.PathLike) -> bool:
    """Whether ``candidate``'s real path (symlinks resolved) lies inside ``root``'s real path."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(candidate)
    try:
        return os.path.commonpath([real_root, real]) == real_root
    except ValueError:  # different drives
        return False

