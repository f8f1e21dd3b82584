"""The file datastore: a predictable directory layout, atomic writes, checksums.

A file is written in two steps so that a crash can never leave a registered
dataset without its complete file:

1. :meth:`FileDatastore.stage` writes a temporary file next to its final
   place, fsyncs it and computes its SHA-256;
2. :meth:`StagedFile.commit` renames it into place (the name carries the
   first 12 hex digits of the checksum, so a registered file is never
   overwritten by different content) and fsyncs the directory.

Only then does the repository register it.  A kill at any point leaves at
worst an unregistered file or a temporary file, which
:meth:`FileDatastore.unregistered` lists and :meth:`FileDatastore.remove`
cleans; neither is damage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO

from skydm.errors import DataCorruptionError
from skydm.repo.atomic import file_mode, fsync_dir, sha256_file
from skydm.repo.dataid import DataId, check_dataset_type

_TMP_SUFFIX = ".tmp"
_CHUNK = 1 << 20


def relpath_for(dataset_type: str, data_id: DataId, checksum: str) -> PurePosixPath:
    """Where a dataset's file lives, relative to the repository root.

    ``<type>/<instrument>/<band>/<visit>/<type>_<instrument>_<band>_<visit>_<detector>-<sha12>.fits``
    for visit datasets, and
    ``<type>/<instrument>/<band>/skycell-<cell>/<type>_<instrument>_<band>_<cell>_<visit>_<detector>-<sha12>.fits``
    for datasets with a sky cell.
    """
    check_dataset_type(dataset_type)
    d = data_id
    if d.skycell is None:
        folder = str(d.visit)
        stem = f"{dataset_type}_{d.instrument}_{d.band}_{d.visit}_{d.detector}"
    else:
        folder = f"skycell-{d.skycell}"
        stem = f"{dataset_type}_{d.instrument}_{d.band}_{d.skycell}_{d.visit}_{d.detector}"
    return PurePosixPath(dataset_type, d.instrument, d.band, folder, f"{stem}-{checksum[:12]}.fits")


def _pause_point(stage: str) -> None:
    """Fault-injection hook for the crash tests: ``SKYDM_TEST_PAUSE=<stage>:<n>``.

    On the n-th time the process reaches ``stage`` (``write``: a temporary
    file half written; ``register``: a file renamed into place but not yet
    registered) it says so on stderr and sleeps, so that a test can kill it
    at exactly that point.  Unset in normal use, it costs one lookup.
    """
    spec = os.environ.get("SKYDM_TEST_PAUSE")
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != stage:
        return
    _PAUSE_COUNTS[stage] = _PAUSE_COUNTS.get(stage, 0) + 1
    if _PAUSE_COUNTS[stage] == int(count or 1):
        print(f"skydm-test-pause {stage} {_PAUSE_COUNTS[stage]}", file=sys.stderr, flush=True)
        time.sleep(3600)


_PAUSE_COUNTS: dict[str, int] = {}


@dataclass(frozen=True)
class StoredFile:
    """A file in the datastore: its path relative to the root, checksum and size."""

    relpath: PurePosixPath
    checksum: str
    size: int


class StagedFile:
    """A written, fsynced temporary file waiting to be renamed into place."""

    def __init__(
        self, store: FileDatastore, tmp: Path, dataset_type: str, data_id: DataId, checksum: str
    ) -> None:
        self.store, self.tmp = store, tmp
        self.checksum = checksum
        self.size = tmp.stat().st_size
        self.relpath = relpath_for(dataset_type, data_id, checksum)

    def commit(self) -> StoredFile:
        """Rename the file into its final place; returns where it is."""
        final = self.store.root / self.relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, final)
        fsync_dir(final.parent)
        _pause_point("register")
        return StoredFile(self.relpath, self.checksum, self.size)

    def discard(self) -> None:
        """Delete the temporary file."""
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class FileDatastore:
    """Dataset files under a root directory, in the layout of :func:`relpath_for`.

    Parameters
    ----------
    root : pathlib.Path
        The repository directory.
    reserved : set of str
        Names at the top of ``root`` that belong to the repository itself
        (registry file, configuration) and are not dataset files.
    file_mode : int, optional
        Permission bits of stored files (the repository's ``file_mode``
        setting, e.g. ``0o640`` for a group-readable archive); by default
        what the umask gives a new file.
    """

    def __init__(
        self,
        root: Path,
        *,
        reserved: frozenset[str] = frozenset(),
        file_mode: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.reserved = reserved
        self.file_mode = file_mode

    def stage(
        self, dataset_type: str, data_id: DataId, write: Callable[[BinaryIO], None]
    ) -> StagedFile:
        """Write a temporary file with ``write(fh)``, fsync it and checksum it.

        The temporary file is in the dataset's final directory, so the
        rename in :meth:`StagedFile.commit` is atomic.  If ``write`` fails,
        the temporary file is removed and the error propagates.
        """
        folder = self.root / relpath_for(dataset_type, data_id, "0" * 12).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dataset_type}-", suffix=_TMP_SUFFIX, dir=folder)
        tmp = Path(name)
        try:
            os.fchmod(fd, file_mode(self.file_mode))  # mkstemp's 0600 would hide it from others
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                _pause_point("write")
                fh.flush()
                os.fsync(fh.fileno())
            checksum = sha256_file(tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return StagedFile(self, tmp, dataset_type, data_id, checksum)

    def adopt(self, dataset_type: str, data_id: DataId, path: Path, checksum: str) -> StagedFile:
        """Stage a complete, fsynced file written elsewhere on this file system (moved, not copied).

        ``checksum`` is the SHA-256 the writer computed over the bytes it
        wrote; the file is renamed to a temporary name in the dataset's final
        directory, so it is cleaned like any staged file if the commit never comes.
        """
        folder = self.root / relpath_for(dataset_type, data_id, "0" * 12).parent
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{dataset_type}-{path.name}{_TMP_SUFFIX}"
        os.chmod(path, file_mode(self.file_mode))
        os.replace(path, tmp)
        return StagedFile(self, tmp, dataset_type, data_id, checksum)

    def abspath(self, relpath: str | PurePath) -> Path:
        """Absolute path of a stored file (given relative to the root, or absolute)."""
        return self.root / relpath

    def read_verified(self, relpath: str | PurePath, checksum: str) -> bytes:
        """The file's bytes, after checking them against ``checksum``.

        Raises
        ------
        DataCorruptionError
            When the file's SHA-256 differs from the recorded one.
        FileNotFoundError
            When the file is missing.
        """
        path = self.abspath(relpath)
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != checksum:
            raise DataCorruptionError(path, checksum, actual)
        return data

    def read_range(self, relpath: str | PurePath, offset: int, length: int) -> bytes:
        """``length`` bytes of a stored file from ``offset`` (for transfers in parts)."""
        with open(self.abspath(relpath), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def local_path(self, relpath: str | PurePath, checksum: str, size: int) -> Path:
        """The stored file's path, after verifying it.

        Raises
        ------
        DataCorruptionError
            When the file is missing or damaged.
        """
        problem = self.check(relpath, checksum, size)
        if problem is not None:
            raise DataCorruptionError(self.abspath(relpath), checksum, problem)
        return self.abspath(relpath)

    def check(self, relpath: str | PurePath, checksum: str, size: int) -> str | None:
        """``None`` if the file is intact, else ``"missing"`` or ``"damaged: ..."``."""
        path = self.abspath(relpath)
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if actual_size != size:
            return f"damaged: size {actual_size} bytes, recorded {size}"
        actual = sha256_file(path, chunk=_CHUNK)
        if actual != checksum:
            return f"damaged: checksum {actual}, recorded {checksum}"
        return None

    def remove(self, relpath: str | PurePath) -> None:
        """Delete a stored file (no error if it is already gone)."""
        path = self.abspath(relpath)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Empty directories left behind are harmless; leave them for speed.

    def files(self) -> Iterator[PurePosixPath]:
        """Every file the datastore wrote or was writing (temporary files included).

        Only names of the datastore's own layout count (see :func:`relpath_for`:
        a file under ``<type>/`` named ``<type>_...``, or a temporary
        ``.<type>-...tmp`` of :meth:`stage`), so that other things kept beside the datastore in
        the repository directory (an APDB, alert archives, catalogs, a
        simulation) are never taken for leftovers, nor deleted by
        ``verify --clean``.
        """
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d not in self.reserved]
                continue
            top = here.relative_to(self.root).parts[0]
            for name in filenames:
                ours = name.startswith(f"{top}_")
                staged = name.startswith(f".{top}-") and name.endswith(_TMP_SUFFIX)
                if ours or staged:
                    yield PurePosixPath((here / name).relative_to(self.root).as_posix())

    def unregistered(self, registered: set[str]) -> list[PurePosixPath]:
        """Files no dataset refers to: leftovers of interrupted or replaced writes."""
        return sorted(p for p in self.files() if p.as_posix() not in registered)

    @staticmethod
    def is_temporary(relpath: PurePosixPath) -> bool:
        """Whether ``relpath`` is a temporary file of :meth:`stage`."""
        return relpath.name.startswith(".") and relpath.name.endswith(_TMP_SUFFIX)
