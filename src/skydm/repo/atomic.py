"""Atomic file writes: temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from astropy.io import fits

from skydm.errors import ConflictError


def current_umask() -> int:
    """The process's umask (read without changing it where the system allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and put it back (not thread-safe,
    # but the window is two system calls).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(mode: int | None = None) -> int:
    """Permission bits of a new file: ``mode`` if given, else ``0o666`` less the umask.

    ``mkstemp`` creates files readable by their owner only (0600); files
    written through this module get the mode any other new file would get,
    so that other users of a shared archive can read them.
    """
    return (0o666 & ~current_umask()) if mode is None else mode


@contextlib.contextmanager
def atomic_open(
    path: Path, *, overwrite: bool = True, mode: int | None = None
) -> Iterator[BinaryIO]:
    """Open a temporary file that replaces ``path`` only when the block succeeds.

    The data are flushed and fsynced before the rename, and the directory is
    fsynced after it, so that a crash leaves either the old file or the new
    one, never a partial one.  The file gets the permission bits ``mode``,
    by default those the umask gives a new file (see :func:`file_mode`).
    Missing parent directories are created: the command line refuses a
    missing parent of an output the user named before any work starts
    (``skydm.cli._checks.check_output``).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise ConflictError(f"{path}: already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode(mode))
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename inside it is durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes, *, overwrite: bool = True, mode: int | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, overwrite=overwrite, mode=mode) as fh:
        fh.write(data)
    return path


def atomic_write_hdulist(
    path: Path, hdul: fits.HDUList, *, overwrite: bool = True, mode: int | None = None
) -> Path:
    """Write a FITS ``HDUList`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, overwrite=overwrite, mode=mode) as fh:
        hdul.writeto(fh, output_verify="silentfix")
    return path


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
