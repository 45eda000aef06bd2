"""Atomic file replacement: a reader sees the old file or the new one, never a partial one.

The new content goes to a temporary file in the same directory (so ``os.replace`` is a rename on one file
system), is flushed and fsynced, then renamed over the target; the directory is fsynced so the rename
survives a crash. On any failure the temporary file is removed and the target is left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from schemas.errors import FatalError, IdsyncError, RetriableError

#: Temporary files are named ``.<target name>.<random>.tmp`` next to the target.
TMP_SUFFIX = ".tmp"

#: errno values that no retry will fix: the configuration (path, permissions, mount) is wrong.
_FATAL_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` with what ``write`` writes to the binary file it is given.

    The new file keeps an existing file's permission bits; a new file gets 0666 minus the umask (the
    permissions a plain ``open(path, "w")`` would give), not the 0600 of ``tempfile.mkstemp``. Exceptions
    from ``write`` propagate unchanged (after clean-up); OS errors are raised as they are: callers map them
    with :func:`write_error`.
    """
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable. Not every platform can open a directory (Windows): then skip.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_error(connector: str, path: Path, exc: OSError) -> IdsyncError:
    """An OS error writing ``path`` as an idsync error: fatal when only a config change fixes it."""
    reason = exc.strerror or str(exc)
    message = f"connector {connector!r}: cannot write {path}: {reason}"
    if exc.errno in _FATAL_ERRNOS:
        return FatalError(message, error_type="export-file-unwritable")
    return RetriableError(message, error_type="export-file-write-failed")


def check_files(connector: str, *, read: list[Path], write: list[Path], optional: list[Path]) -> None:
    """A file connector's connection check: files it imports can be read, export files can be written.

    ``optional`` files may be missing (an export file that is also imported, before the first export).
    """
    for path in read:
        if path in optional and not path.exists():
            continue
        if not path.is_file():
            raise FatalError(
                f"connector {connector!r}: {path}: file not found", error_type="no-start-file-not-found"
            )
        if not os.access(path, os.R_OK):
            raise FatalError(
                f"connector {connector!r}: {path}: not readable", error_type="no-start-file-unreadable"
            )
    for path in write:
        directory = path.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise FatalError(
                f"connector {connector!r}: cannot create files in {directory} (for {path.name})",
                error_type="no-start-export-file-unwritable",
            )
