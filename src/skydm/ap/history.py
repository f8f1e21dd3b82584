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

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Records per chunk: reads of a 100-record history take 4 rows, and an
#: append rewrites on average 16 records (~8 KB for full DIA sources).
CHUNK_RECORDS = 32

#: Kinds of history (the ``kind`` column).
SOURCE, FORCED = 0, 1


@dataclass
class HistoryChunk:
    """Up to :data:`CHUNK_RECORDS` encoded records of one object and kind.

    Attributes
    ----------
    object_id, kind, chunk : int
        The key: DIA object, :data:`SOURCE` or :data:`FORCED`, and the chunk
        number (0, 1, ... in order of writing).
    schema_id : int
        Schema id (``major*100+minor``) of every record in ``avro``.
    ids : numpy.ndarray
        int64 record ids (``diaSourceId`` / ``diaForcedSourceId``).
    mjds : numpy.ndarray
        float64 ``midpointMjdTai`` of each record.
    ends : numpy.ndarray
        uint32 end offset of each record in ``avro``.
    avro : bytes
        The concatenated schemaless Avro encodings.
    """

    object_id: int
    kind: int
    chunk: int
    schema_id: int
    ids: np.ndarray
    mjds: np.ndarray
    ends: np.ndarray
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
            np.empty(0, np.int64),
            np.empty(0, np.float64),
            np.empty(0, np.uint32),
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
            int(object_id),
            int(kind),
            int(chunk),
            int(schema_id),
            np.frombuffer(ids, "<i8"),
            np.frombuffer(mjds, "<f8"),
            np.frombuffer(ends, "<u4"),
            bytes(avro),
        )

    def row(self) -> tuple[object, ...]:
        """The database row, in the column order of ``DiaHistory``."""
        return (
            self.object_id,
            self.kind,
            self.chunk,
            self.schema_id,
            self.n,
            float(self.mjds.min()) if self.n else 0.0,
            float(self.mjds.max()) if self.n else 0.0,
            self.ids.astype("<i8").tobytes(),
            self.mjds.astype("<f8").tobytes(),
            self.ends.astype("<u4").tobytes(),
            self.avro,
        )

    def extend(self, ids: Sequence[int], mjds: Sequence[float], blobs: Sequence[bytes]) -> None:
        """Append records (in place); the caller keeps the count within the limit."""
        start = int(self.ends[-1]) if self.n else 0
        lengths = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])
        self.mjds = np.concatenate([self.mjds, np.asarray(mjds, np.float64)])
        self.ends = np.concatenate([self.ends, (start + np.cumsum(lengths)).astype(np.uint32)])
        self.avro = self.avro + b"".join(blobs)
        self.dirty = True

    def record(self, i: int) -> bytes:
        """The encoding of record ``i``."""
        start = int(self.ends[i - 1]) if i else 0
        return self.avro[start : int(self.ends[i])]


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
    if last is not None and last.n < CHUNK_RECORDS and last.schema_id == schema_id:
        chunk = dataclasses.replace(last)
    else:
        chunk = HistoryChunk.new(object_id, kind, 0 if last is None else last.chunk + 1, schema_id)
    chunk.extend([rid], [mjd], [blob])
    return chunk


@dataclass(frozen=True)
class EncodedArray:
    """Items of an Avro array already encoded and concatenated, with their count."""

    count: int
    data: bytes


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
    one by one.  Otherwise it is the list of records, sorted by time, for
    the caller to re-encode those of another schema.
    """
    ordered = sorted(chunks, key=lambda c: c.chunk)
    pieces: list[bytes] = []
    count = 0
    fast = True
    last_mjd = -np.inf
    for c in ordered:
        if not c.n:
            continue
        m = c.mjds
        sel = (m >= since) & (m < before)
        if not sel.any():
            continue
        idx = np.flatnonzero(sel)
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        contiguous = hi - lo == len(idx)
        if c.schema_id != schema_id or not contiguous or m[lo] < last_mjd:
            fast = False
            break
        if hi - lo > 1 and bool(np.any(np.diff(m[lo:hi]) < 0)):
            fast = False
            break
        start = int(c.ends[lo - 1]) if lo else 0
        end = int(c.ends[hi - 1])
        pieces.append(c.avro if start == 0 and end == len(c.avro) else c.avro[start:end])
        count += hi - lo
        last_mjd = float(m[hi - 1])
    if fast:
        return EncodedArray(count, b"".join(pieces))
    records: list[HistoryRecord] = []
    for c in ordered:
        for i in np.flatnonzero((c.mjds >= since) & (c.mjds < before)):
            records.append((int(c.ids[i]), float(c.mjds[i]), c.schema_id, c.record(int(i))))
    records.sort(key=lambda r: r[1])
    return records
