"""Files and directories readable by their owner only, whatever the umask.

One place for every private file dpopkit writes: DPoP key files
(:func:`dpopkit.keyfile.save_key`), the authorization server's data directory, its
secrets and its SQLite databases. A umask only takes permission bits away, so a
file created with mode ``0600`` can never be wider; it is still ``fchmod``-ed to
exactly ``0600`` so the result does not depend on the umask at all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "create_private_file",
    "exposed_mode",
    "make_private_dir",
    "write_private_file",
]

#: The mode of a private directory (owner only).
DIR_MODE = 0o700
#: The mode of a private file (owner read and write).
FILE_MODE = 0o600


def exposed_mode(path: str | os.PathLike[str]) -> int | None:
    """The permission bits of ``path`` when group or others have any access; else None.

    Raises:
        OSError: ``path`` cannot be inspected (missing, permission denied).
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    return mode if mode & 0o077 else None


def make_private_dir(path: str | os.PathLike[str]) -> bool:
    """Create the directory ``path`` with mode ``0700`` (its missing parents the usual way).

    An existing directory is left as it is (check it with :func:`exposed_mode`).

    Returns:
        True when the directory was created.

    Raises:
        OSError: it cannot be created.
    """
    target = Path(path)
    if target.is_dir():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(target, DIR_MODE)
    except FileExistsError:
        if target.is_dir():
            return False  # created meanwhile by another process
        raise
    os.chmod(target, DIR_MODE)  # exact, whatever the umask
    return True


def create_private_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode ``0600`` unless it exists (e.g. before SQLite opens it).

    SQLite creates a database with mode ``0644`` (less the umask) and gives its
    ``-wal``, ``-shm`` and journal files the mode of the database: a database
    created here keeps all of them private.

    Returns:
        True when the file was created.

    Raises:
        OSError: it cannot be created (missing directory, permission denied).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        return False
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def write_private_file(target: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``target`` atomically with mode ``0600``.

    The bytes go to a new ``0600`` file in the same directory, which then takes
    the final name (``os.link`` when ``target`` must not exist, ``os.replace`` to
    overwrite): a reader never sees a half-written file, and the file is never
    readable by others, not even for a moment.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False.
        OSError: the directory is missing or not writable.
    """
    directory = target.parent
    tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, FILE_MODE)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away; make it exact
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_no_clobber(tmp, target)
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # after os.link the temporary name remains


def _fsync_directory(directory: Path) -> None:
    # Make the new name durable too (POSIX); not possible everywhere, and not required.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _link_no_clobber(tmp: Path, target: Path) -> None:
    try:
        # Atomic "create if absent": fails with FileExistsError when target exists.
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(
            f"{target} already exists (pass overwrite=True to replace it)"
        ) from None
    except OSError:
        # A file system without hard links: check, then move (a narrow race remains).
        if target.exists() or target.is_symlink():
            raise FileExistsError(
                f"{target} already exists (pass overwrite=True to replace it)"
            ) from None
        os.replace(tmp, target)
