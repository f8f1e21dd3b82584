"""The part journal of a file in flight, so that a transfer resumes part by part.

While a file travels, the destination keeps, in ``<dest>/.transfer/``:

* ``<name>.part`` — the parts received so far, in order, at their offsets;
* ``<name>.journal`` — a header line (file size, part size) and one line
  per part written (``index crc32``), appended after the part's bytes.

Both are written without Python buffering, so after ``kill -9`` the kernel
still has everything the process wrote (``kill`` loses no page cache; only a
power cut could, and that case is covered too, because on resume every
journaled part is read back and its CRC checked before it is trusted).
:meth:`PartJournal.resume` re-reads the journaled parts locally (no byte is
sent again), drops the first part that does not match and everything after
it, and hands back the SHA-256 of the good prefix so the end-to-end digest
continues where it stopped.  The journal is locked (``flock``) while in use,
so two transfers never write one file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOURNAL_DIR = ".transfer"
_MAGIC = "skydm-part-journal 1"


def _fast_crc32() -> Callable[[Any], int] | None:
    """libdeflate's CRC-32 (same polynomial and values as zlib's, several times faster)."""
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - imagecodecs is in the archive extra
        return None
    return imagecodecs.deflate_crc32  # type: ignore[no-any-return]


_CRC32 = _fast_crc32()


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32 of ``data`` (the per-part check; the end-to-end one is SHA-256)."""
    if _CRC32 is not None:
        return int(_CRC32(data))
    return zlib.crc32(data)


class PartJournal:
    """The parts of one file received so far, and the record of which they are.

    Use :meth:`open`; see the module notes.
    """

    def __init__(self, folder: Path, name: str, size: int, part_bytes: int, lock_fd: int) -> None:
        self.folder, self.name = folder, name
        self.size, self.part_bytes = size, part_bytes
        self.n_parts = -(-size // part_bytes)
        self.data_path = folder / f"{name}.part"
        self.journal_path = folder / f"{name}.journal"
        self._journal_fd = lock_fd
        self._data_fd = -1
        self._header = f"{_MAGIC} size={size} part_bytes={part_bytes}\n".encode()

    @classmethod
    def open(cls, folder: Path, name: str, *, size: int, part_bytes: int) -> PartJournal:
        """Open (or start) the journal of ``name``, locked for this process.

        Raises
        ------
        BlockingIOError
            When another process holds it (is sending the same file now).
        """
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{name}.journal", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        return cls(folder, name, size, part_bytes, fd)

    def _entries(self) -> list[tuple[int, int]]:
        """The journal's ``(index, crc)`` lines, or ``[]`` if it belongs to another layout."""
        with open(self.journal_path, "rb") as fh:
            text = fh.read()
        lines = text.split(b"\n")
        if not text.startswith(self._header):
            return []
        entries = []
        for line in lines[1:]:
            fields = line.split()
            if len(fields) != 2:
                break  # an unfinished last line (killed while writing it)
            try:
                entries.append((int(fields[0]), int(fields[1], 16)))
            except ValueError:
                break
        return entries

    def resume(self) -> tuple[Any, int]:
        """``(sha256 of the good prefix, number of good parts)``; the rest is discarded.

        The journaled parts are read back from ``.part`` and checked against
        their CRCs: nothing is trusted that is not on disk as it arrived.
        """
        entries = self._entries()
        sha = hashlib.sha256()
        done = 0
        if entries and self.data_path.exists():
            buffer = bytearray(self.part_bytes)
            with open(self.data_path, "rb", buffering=0) as fh:
                for index, crc in entries:
                    if index != done:
                        break
                    length = min(self.part_bytes, self.size - index * self.part_bytes)
                    view = memoryview(buffer)[:length]
                    if fh.readinto(view) != length or crc32(view) != crc:
                        break
                    sha.update(view)
                    done += 1
        self._rewrite(entries[:done])
        if self._data_fd >= 0:  # reopened by name: a failed commit may have moved the file
            os.close(self._data_fd)
        self._data_fd = os.open(self.data_path, os.O_WRONLY | os.O_CREAT, 0o644)
        received = min(done * self.part_bytes, self.size)  # the last part may be short
        os.ftruncate(self._data_fd, received)
        os.lseek(self._data_fd, received, os.SEEK_SET)
        return sha, done

    def _rewrite(self, entries: list[tuple[int, int]]) -> None:
        body = b"".join(f"{i} {c:08x}\n".encode() for i, c in entries)
        os.ftruncate(self._journal_fd, 0)
        os.pwrite(self._journal_fd, self._header + body, 0)
        os.lseek(self._journal_fd, 0, os.SEEK_END)

    def reset(self) -> None:
        """Forget every part (the next :meth:`resume` starts the file from its first byte)."""
        self._rewrite([])
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.data_path, 0)

    def write(self, index: int, data: memoryview | bytes, crc: int) -> None:
        """Append part ``index`` (checked on arrival, with CRC ``crc``) and journal it."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._data_fd, view) :]
        os.write(self._journal_fd, f"{index} {crc:08x}\n".encode())

    def sync(self) -> None:
        """fsync the received file (once, when complete: the repository's atomicity)."""
        os.fsync(self._data_fd)

    def finish(self) -> None:
        """The file is stored and registered: drop the journal (the data were moved away)."""
        with contextlib.suppress(FileNotFoundError):
            self.journal_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.data_path.unlink()

    def close(self) -> None:
        """Release the lock and the files (a journal left behind lets a rerun resume)."""
        if self._data_fd >= 0:
            os.close(self._data_fd)
            self._data_fd = -1
        if self._journal_fd >= 0:
            os.close(self._journal_fd)  # releases the flock
            self._journal_fd = -1

    def __enter__(self) -> PartJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
