"""Atomic file and folder writes: temp file in the same folder, fsync, rename.

A crash never leaves a half-written file under its final name. What is renamed into place has
the permissions a plain ``open(path, "w")`` / ``mkdir`` would give under the process umask
(``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders), not the 0600/0700 of the temp
file, so another user or service on the worker can read the artefact as it could any other.

A failed write raises ``StorageError`` naming the final path: ``storage_full`` when the disk or
quota is full, ``write_failed`` for any other OS refusal (permission, read-only filesystem, I/O
error). The previous version under the final name is untouched and no temp file is left.
An output path whose last component is empty, ``.`` or ``..`` (``''``, ``'.'``, ``'/'``) is refused
with ``path_invalid`` before anything is created.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError, StorageError

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG} if hasattr(errno, "EDQUOT") else {errno.ENOSPC, errno.EFBIG}


def process_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a file created by a plain write under the current umask."""
    return 0o666 & ~process_umask()


def dir_mode() -> int:
    """Permissions of a folder created by a plain ``mkdir`` under the current umask."""
    return 0o777 & ~process_umask()


def check_output_path(final: str | os.PathLike, field: str = "path") -> Path:
    """``final`` as a ``Path`` if it names something that can be written and renamed into place.

    Raises:
        InputError: ``path_invalid`` for ``''``, ``'.'``, ``'..'``, ``'/'`` or a path ending in one
            of them (there is no name to write to, or writing would replace the current or a
            parent folder), or a path containing a NUL character.
    """
    text = os.fsdecode(os.fspath(final))
    last = text.rstrip("/").rsplit("/", 1)[-1] if text.strip("/") else ""
    if "\x00" in text or last in ("", ".", ".."):
        raise InputError(f"{field} {text!r} does not name a file or folder to write (empty, '.', '..' or '/'); "
                         "give a name such as out/result", code="path_invalid", field=field, value=text)
    return Path(text)


def storage_error(exc: OSError, final: Path, action: str = "write") -> StorageError:
    """The coded error for an ``OSError`` raised while writing ``final``."""
    reason = errno.errorcode.get(exc.errno or 0, "unknown")
    if exc.errno in _FULL:
        code = "storage_full"
        message = f"cannot {action} {final}: no space left on the device ({exc.strerror or exc})"
    else:
        code = "write_failed"
        message = f"cannot {action} {final}: {exc.strerror or exc}"
    err = StorageError(message + "; the previous version, if any, is intact", code=code, field="path",
                       value=str(final), errno=reason)
    err.errno = exc.errno
    err.strerror = exc.strerror
    err.filename = str(final)
    return err


def _is_full(exc: BaseException) -> bool:
    """An error from a library writing into our temp path that comes from a full disk.

    safetensors and torch report ``ENOSPC`` as their own exception types; their messages keep
    the OS text, which is the only trace of the cause they leave.
    """
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    text = str(exc)
    return any(os.strerror(code) in text for code in _FULL) or "StorageFull" in text or "os error 28" in text


@contextlib.contextmanager
def _full_disk_named(final: Path) -> Iterator[None]:
    """Re-raise a full-disk error of the caller's writes into the temp path as ``storage_full``
    naming ``final``; any other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        if _is_full(exc):
            cause = exc if isinstance(exc, OSError) else OSError(errno.ENOSPC, str(exc)[:200])
            raise storage_error(cause, final) from exc
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mkdir_parent(final: Path) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"cannot write {final}: a part of {final.parent} is a file, not a folder",
                         code="path_invalid", field="path", value=str(final)) from None
    except NotADirectoryError:
        raise InputError(f"cannot write {final}: a part of {final.parent} is a file, not a folder",
                         code="path_invalid", field="path", value=str(final)) from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"cannot write {final}: a name in the path is longer than the filesystem allows",
                             code="path_invalid", field="path", value=str(final)) from None
        raise storage_error(exc, final, "create the folder for") from None


def _name_error(final: Path) -> InputError:
    return InputError(f"cannot write {final}: its name is longer than the filesystem allows "
                      f"({len(os.fsencode(final.name))} bytes)", code="path_invalid", field="path", value=str(final))


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``final``; on clean exit it is fsynced and renamed onto ``final``.

    Use for libraries that insist on writing to a path themselves (safetensors, PIL). An
    ``OSError`` of a full disk raised by the body is reported as ``storage_full`` too.

    Raises:
        StorageError: ``storage_full`` / ``write_failed``, naming ``final``.
        InputError: ``path_invalid`` (see ``check_output_path``; a name over the filesystem limit).
    """
    final = check_output_path(final)
    _mkdir_parent(final)
    try:
        # the temp name carries only a short prefix of the final name: a final name near the
        # filesystem's 255-byte limit must not fail because of our decoration
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:40]}.", suffix=suffix[:20] + ".tmp", dir=final.parent)
    except OSError as exc:
        raise storage_error(exc, final) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _full_disk_named(final):
            yield tmp_path
        try:
            os.chmod(tmp_path, file_mode())
            with open(tmp_path, "rb+") as fh:
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_path, final)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise _name_error(final) from None
            if exc.errno == errno.EISDIR or final.is_dir():
                raise InputError(f"cannot write {final}: it is a folder", code="path_invalid", field="path",
                                 value=str(final)) from None
            raise storage_error(exc, final) from None
        _fsync_dir(final.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically and return the path.

    Raises:
        StorageError: ``storage_full`` / ``write_failed``; the old file is intact.
    """
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(final)


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write JSON with sorted keys (stable bytes for the same content)."""
    return atomic_write_text(final, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on clean exit it replaces ``final`` whole.

    An existing ``final`` is moved aside first and removed only after the rename succeeded.

    Raises:
        StorageError: ``storage_full`` / ``write_failed``, naming ``final``; the previous
            folder is intact.
        InputError: ``path_invalid`` (see ``check_output_path``).
    """
    final = check_output_path(final)
    _mkdir_parent(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:40]}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise storage_error(exc, final) from None
    try:
        with _full_disk_named(final):
            yield tmp
        old = None
        try:
            for root, _dirs, files in os.walk(tmp):
                for name in files:
                    with open(os.path.join(root, name), "rb") as fh:
                        os.fsync(fh.fileno())
            os.chmod(tmp, dir_mode())
            if final.exists():
                old = final.with_name(f".{final.name[:200]}.old-{os.getpid()}")
                os.replace(final, old)
            os.replace(tmp, final)
        except OSError as exc:
            if old is not None and not final.exists():
                with contextlib.suppress(OSError):
                    os.replace(old, final)  # put the previous version back
                old = None
            if exc.errno == errno.ENAMETOOLONG:
                raise _name_error(final) from None
            raise storage_error(exc, final) from None
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def stale_temps(folder: str | os.PathLike, final_name_prefix: str) -> list[Path]:
    """Temp files/folders that ``atomic_path``/``atomic_dir`` left beside finals whose name starts
    with ``final_name_prefix`` when the process writing them was killed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    start = "." + final_name_prefix[:40]
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(start) and (p.name.endswith(".tmp") or ".old-" in p.name))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
