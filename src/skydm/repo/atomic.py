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


@contextlib.contextmanager
def atomic_open(path: Path, *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file that replaces ``path`` only when the block succeeds.

    The data are flushed and fsynced before the rename, and the directory is
    fsynced after it, so that a crash leaves either the old file or the new
    one, never a partial one.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise ConflictError(f"{path}: already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, overwrite=overwrite) as fh:
        fh.write(data)
    return path


def atomic_write_hdulist(path: Path, hdul: fits.HDUList, *, overwrite: bool = True) -> Path:
    """Write a FITS ``HDUList`` to ``path`` atomically."""
    with atomic_open(path, overwrite=overwrite) as fh:
        hdul.writeto(fh, output_verify="silentfix")
    return path


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
