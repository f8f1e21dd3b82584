"""The alert archive: one Avro object container file per visit, schema embedded.

The file is written directly from the packets' schemaless bytes (an Avro
container block is a record count, a byte size, the concatenated records and
a sync marker), so archiving costs one write and no re-encoding.  Every
record's byte range in the file is returned, which is what lets the outbox
serve messages straight from the archive.  Files are written atomically and
read back by fastavro's and lsst-alert-packet's own readers.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from skydm.alerts.schema import AlertSchema
from skydm.alerts.serialize import zigzag_varint
from skydm.errors import BadFileError, require_extra
from skydm.repo.atomic import atomic_open

_MAGIC = b"Obj\x01"
#: Records per container block: small enough to bound a reader's memory.
_BLOCK_RECORDS = 500


def _strip(node: Any) -> Any:
    """A schema definition without fastavro's bookkeeping keys, as plain JSON."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def schema_json(schema: AlertSchema) -> bytes:
    """The alert schema as Avro JSON, for the container header."""
    return json.dumps(_strip(schema.definition), separators=(",", ":")).encode()


def archive_name(visit: int, detector: int) -> str:
    """File name of one visit/detector's archive."""
    return f"alerts-visit{visit:010d}-det{detector:03d}.avro"


class _Abort(Exception):
    """Tells the writer thread to drop the file."""


class ArchiveWriter:
    """Write one archive file block by block, in a background thread.

    Packets are handed over in blocks as they are made; the byte range each
    will have in the file is known at once (the layout depends only on the
    lengths), while the writing itself overlaps with making the next block.
    The file appears under its name, complete and fsynced, only at
    :meth:`finish`.

    Parameters
    ----------
    path : Path
        The file to write (atomically: a reader never sees half a file).
    schema : AlertSchema
        The schema the packets were encoded with; embedded in the header.
    skip : int
        Leading bytes of each packet not to write (the Confluent wire header,
        when the packets are wire-format messages).
    """

    def __init__(self, path: Path, schema: AlertSchema, *, skip: int = 0) -> None:
        self.path = Path(path)
        self._skip = skip
        self._sync = os.urandom(16)
        header = bytearray(_MAGIC)
        meta = {b"avro.schema": schema_json(schema), b"avro.codec": b"null"}
        header += zigzag_varint(len(meta))
        for key, value in meta.items():
            header += zigzag_varint(len(key)) + key + zigzag_varint(len(value)) + value
        header += b"\0" + self._sync
        self._pos = len(header)
        self._error: BaseException | None = None
        # Bounded: the maker of packets waits rather than piling up memory.
        self._queue: queue.Queue[tuple[bytes, Sequence[bytes]] | type[_Abort] | None] = queue.Queue(
            maxsize=8
        )
        self._thread = threading.Thread(target=self._run, args=(bytes(header),), daemon=True)
        self._thread.start()

    def add(self, packets: Sequence[bytes]) -> list[tuple[int, int]]:
        """Queue one block of packets; returns each record's (offset, length) in the file."""
        spans: list[tuple[int, int]] = []
        for start in range(0, len(packets), _BLOCK_RECORDS):
            block = packets[start : start + _BLOCK_RECORDS]
            size = sum(len(p) for p in block) - self._skip * len(block)
            head = zigzag_varint(len(block)) + zigzag_varint(size)
            pos = self._pos + len(head)
            for p in block:
                spans.append((pos, len(p) - self._skip))
                pos += len(p) - self._skip
            self._pos = pos + len(self._sync)
            self._queue.put((head, block))
        return spans

    def finish(self) -> None:
        """Write what is queued, fsync and give the file its name.

        Raises
        ------
        BadFileError
            When the file could not be written.
        """
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise BadFileError(self.path, f"cannot write the alert archive: {self._error}")

    def abort(self) -> None:
        """Drop the file (nothing replaces an existing one)."""
        self._queue.put(_Abort)
        self._thread.join()

    def _run(self, header: bytes) -> None:
        try:
            with atomic_open(self.path) as fh:
                fh.write(header)
                fh.flush()
                fd = fh.fileno()
                while (item := self._queue.get()) is not None:
                    if item is _Abort:
                        raise _Abort
                    assert isinstance(item, tuple)
                    head, block = item
                    skip = self._skip
                    _write_all(fd, [head, *(memoryview(p)[skip:] for p in block), self._sync])
        except _Abort:
            return
        except BaseException as exc:  # reported by finish()
            self._error = exc
            # Keep taking blocks so that add() never waits on a dead writer.
            while self._queue.get() not in (None, _Abort):
                pass


_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16, 1024)


def _write_all(fd: int, buffers: list[bytes | memoryview]) -> None:
    """Write ``buffers`` to ``fd`` in as few system calls as possible.

    One ``writev`` per container block instead of one ``write`` per packet:
    every ``write`` released and took back the GIL, and each time the writer
    thread wanted it back the packet-making thread had to hand it over (the
    convoy effect), which is what made the packets step's wall time about
    twice its CPU time.  Short writes are resumed where they stopped.
    """
    if not hasattr(os, "writev"):  # not POSIX: plain writes
        for buf in buffers:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view) :]
        return
    views = [memoryview(b) for b in buffers]
    while views:
        done = os.writev(fd, views[:_IOV_MAX])
        i = 0
        while i < len(views) and done >= len(views[i]):
            done -= len(views[i])
            i += 1
        views = views[i:]
        if done:
            views[0] = views[0][done:]


def write_archive(
    path: Path, schema: AlertSchema, packets: Sequence[bytes], *, skip: int = 0
) -> list[tuple[int, int]]:
    """Write schemaless packets as an Avro container file; returns (offset, length) each.

    Parameters
    ----------
    path : Path
        The file to write (atomically: a reader never sees half a file).
    schema : AlertSchema
        The schema the packets were encoded with; embedded in the header.
    packets : sequence of bytes
        Schemaless Avro packets, or wire-format messages with ``skip`` = 5.
    """
    writer = ArchiveWriter(path, schema, skip=skip)
    try:
        spans = writer.add(packets)
    except BaseException:
        writer.abort()
        raise
    writer.finish()
    return spans


def read_archive(path: Path) -> Iterator[dict[str, Any]]:
    """Decoded alert packets of an archive file, with the schema it embeds.

    Raises
    ------
    BadFileError
        When the file is not an Avro container file.
    """
    fastavro = require_extra("fastavro", "alerts")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise BadFileError(path, f"cannot open the alert archive: {exc.strerror}") from exc
    with fh:
        try:
            reader = fastavro.reader(fh)
        except ValueError as exc:
            raise BadFileError(path, f"not an Avro alert archive ({exc})") from exc
        yield from reader
