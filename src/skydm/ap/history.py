"""Encoded DIA source and forced source history, kept per object in chunks.

An alert carries its object's previous DIA sources and forced sources (twelve
months of them), and those records never change once written.  Reading them
as one database row each costs a random page access per record: a visit of
10,000 sources with a hundred earlier visits each reads two million rows.
Here each object's history is kept instead as a few chunks of up to
:data:`CHUNK_RECORDS` records: the concatenated Avro encodings of the records,
oldest first, with three small arrays beside them (record ids, times and the
end offset of each record in the bytes).  A visit reads a handful of rows per
object and slices the bytes of the wanted time window without decoding a
record, and appending a record rewrites only the object's last chunk.

All records of a chunk share one schema id; a record encoded with another
schema starts a new chunk, and a packet of another schema version re-encodes
such records from the full ``DiaSource``/``DiaForcedSource`` rows.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Kinds of history (the ``kind`` column).
SOURCE, FORCED = 0, 1

#: Records per chunk, by kind: a 100-record DIA source history is read as 4
#: rows and an append rewrites on average 16 records (~6 KB of full DIA
#: sources); forced sources are ~60 bytes, so they take one row.
CHUNK_RECORDS = {SOURCE: 32, FORCED: 128}


def _unpack(code: str, data: bytes) -> Sequence[Any]:
    """Little-endian array bytes (as stored) as a sequence of numbers."""
    if sys.byteorder == "little":
        return memoryview(data).cast(code)  # type: ignore[call-overload]  # no copy
    arr = array(code)
    arr.frombytes(data)
    arr.byteswap()
    return arr


def _pack(code: str, values: Sequence[Any]) -> bytes:
    arr = array(code, values)
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tobytes()


@dataclass
class HistoryChunk:
    """Up to ``CHUNK_RECORDS[kind]`` encoded records of one object and kind.

    Attributes
    ----------
    object_id, kind, chunk : int
        The key: DIA object, :data:`SOURCE` or :data:`FORCED`, and the chunk
        number (0, 1, ... in order of writing).
    schema_id : int
        Schema id (``major*100+minor``) of every record in ``avro``.
    ids : array of int
        Record ids (``diaSourceId`` / ``diaForcedSourceId``), int64.
    mjds : array of float
        ``midpointMjdTai`` of each record, float64, in increasing order
        (records are kept sorted by time within a chunk).
    ends : array of int
        End offset of each record in ``avro``, uint32.
    avro : bytes
        The concatenated schemaless Avro encodings.
    """

    object_id: int
    kind: int
    chunk: int
    schema_id: int
    ids: Sequence[int]
    mjds: Sequence[float]
    ends: Sequence[int]
    avro: bytes
    dirty: bool = field(default=False, compare=False)
    stored: bool = field(default=True, compare=False)

    @property
    def n(self) -> int:
        """Number of records."""
        return len(self.ids)

    @classmethod
    def new(cls, object_id: int, kind: int, chunk: int, schema_id: int) -> HistoryChunk:
        """An empty chunk, not yet in the database."""
        return cls(
            object_id,
            kind,
            chunk,
            schema_id,
            array("q"),
            array("d"),
            array("I"),
            b"",
            dirty=True,
            stored=False,
        )

    @classmethod
    def from_row(
        cls,
        object_id: int,
        kind: int,
        chunk: int,
        schema_id: int,
        ids: bytes,
        mjds: bytes,
        ends: bytes,
        avro: bytes,
    ) -> HistoryChunk:
        """A chunk from its database row (blob columns as stored)."""
        return cls(
            object_id,
            kind,
            chunk,
            schema_id,
            _unpack("q", ids),
            _unpack("d", mjds),
            _unpack("I", ends),
            avro if type(avro) is bytes else bytes(avro),
        )

    def row(self) -> tuple[object, ...]:
        """The database row, in the column order of ``DiaHistory``."""
        return (
            self.object_id,
            self.kind,
            self.chunk,
            self.schema_id,
            self.n,
            self.mjds[0] if self.n else 0.0,
            self.mjds[-1] if self.n else 0.0,
            _pack("q", self.ids),
            _pack("d", self.mjds),
            _pack("I", self.ends),
            self.avro,
        )

    def extend(self, ids: Sequence[int], mjds: Sequence[float], blobs: Sequence[bytes]) -> None:
        """Append records, keeping them in time order; the caller keeps the count in bounds.

        New arrays and bytes are made (the old ones may be read elsewhere).
        """
        new_mjds = [float(m) for m in mjds]
        if all(a <= b for a, b in itertools.pairwise([*self.mjds[-1:], *new_mjds])):
            # In time order (the usual case): append.
            ends = array("I", self.ends)
            end = ends[-1] if self.n else 0
            for b in blobs:
                end += len(b)
                ends.append(end)
            self.mjds = array("d", [*self.mjds, *new_mjds])
            self.ids = array("q", [*self.ids, *(int(i) for i in ids)])
            self.ends = ends
            self.avro = self.avro + b"".join(blobs)
            self.dirty = True
            return
        old = [self.record(i) for i in range(self.n)]
        items = [
            *zip(self.mjds, self.ids, old, strict=True),
            *zip(new_mjds, ids, blobs, strict=True),
        ]
        items.sort(key=lambda r: r[0])  # a visit processed out of time order
        ends = array("I")
        end = 0
        for item in items:
            end += len(item[2])
            ends.append(end)
        self.mjds = array("d", (float(r[0]) for r in items))
        self.ids = array("q", (int(r[1]) for r in items))
        self.ends = ends
        self.avro = b"".join(r[2] for r in items)
        self.dirty = True

    def record(self, i: int) -> bytes:
        """The encoding of record ``i``."""
        start = self.ends[i - 1] if i else 0
        return self.avro[start : self.ends[i]]


def appended(
    last: HistoryChunk | None,
    object_id: int,
    kind: int,
    schema_id: int,
    rid: int,
    mjd: float,
    blob: bytes,
) -> HistoryChunk:
    """The chunk that takes one more record after ``last`` (the object's last chunk).

    ``last`` itself is not modified (packets may be reading it in another
    thread): the answer is a copy of it with the record added, or a new
    chunk when ``last`` is full or of another schema.
    """
    if last is not None and last.n < CHUNK_RECORDS[kind] and last.schema_id == schema_id:
        chunk = dataclasses.replace(last)
    else:
        chunk = HistoryChunk.new(object_id, kind, 0 if last is None else last.chunk + 1, schema_id)
    chunk.extend([rid], [mjd], [blob])
    return chunk


@dataclass(frozen=True)
class EncodedArray:
    """Items of an Avro array already encoded, with their count.

    ``pieces`` concatenated are the items' bytes; they are kept apart so that
    the packet is assembled with a single copy.
    """

    count: int
    pieces: tuple[bytes, ...]


#: One history record when the fast path does not apply:
#: ``(id, midpointMjdTai, schema id, encoding)``.
HistoryRecord = tuple[int, float, int, bytes]


def window(
    chunks: Iterable[HistoryChunk], *, since: float, before: float, schema_id: int
) -> EncodedArray | list[HistoryRecord]:
    """The records with ``since <= mjd < before``, oldest first.

    When every such record is in ``schema_id`` and the chunks are in time
    order (the usual case: visits processed in order), the answer is the
    ready-made array body, sliced out of the chunks without copying records
    one by one.  Otherwise (chunks overlapping in time, another schema) it
    is the list of records, sorted by time, for the caller to re-encode
    those of another schema.
    """
    ordered = list(chunks)
    if any(a.chunk > b.chunk for a, b in itertools.pairwise(ordered)):
        ordered.sort(key=lambda c: c.chunk)
    pieces: list[bytes] = []
    count = 0
    last_mjd = -math.inf
    for c in ordered:
        m = c.mjds
        lo, hi = bisect.bisect_left(m, since), bisect.bisect_left(m, before)
        if lo == hi:
            continue
        if c.schema_id != schema_id or m[lo] < last_mjd:
            break
        start = c.ends[lo - 1] if lo else 0
        end = c.ends[hi - 1]
        pieces.append(c.avro if start == 0 and end == len(c.avro) else c.avro[start:end])
        count += hi - lo
        last_mjd = m[hi - 1]
    else:
        return EncodedArray(count, tuple(pieces))
    records: list[HistoryRecord] = []
    for c in ordered:
        for i, mjd in enumerate(c.mjds):
            if since <= mjd < before:
                records.append((c.ids[i], mjd, c.schema_id, c.record(i)))
    records.sort(key=lambda r: r[1])
    return records
