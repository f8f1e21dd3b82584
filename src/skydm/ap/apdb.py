"""The alert production database (APDB): DIA objects, DIA sources, forced sources.

One SQLAlchemy Core schema serves SQLite (the default, one file) and
PostgreSQL (any ``postgresql+psycopg://`` URL).  Rows are keyed by the field
names of the latest LSST alert schema, so a row is directly the input of
:func:`skydm.alerts.packet.build_record`.

Two things make the database fit a prompt-processing loop:

* DIA object summaries are kept as running sums (unit-vector sums for the
  mean position; per band the count, weighted sums, extremes and the last
  flux for the maximum slope), so a visit updates an object without reading
  its history.
* Each DIA source and forced source row keeps the Avro encoding of its alert
  record (``avro`` with the schema id ``avroSchemaId``), so that a packet's
  previous sources are read as bytes and never re-encoded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from skydm._sqlite import use_wal
from skydm.ap.history import (
    FORCED,
    SOURCE,
    HistoryChunk,
    HistoryRecord,
    appended,
    window,
)
from skydm.errors import BadValueError, ConflictError

BANDS = ("u", "g", "r", "i", "z", "y")

#: A history window start after every record: read only the last chunks.
_NEVER = 1e300

#: Per-band running sums of an object's DIA-source and forced-source fluxes.
_BAND_SUMS = (
    "n",  # number of DIA sources with a PSF flux
    "sw",  # sum of 1/err^2
    "swf",  # sum of flux/err^2
    "sf",  # sum of flux
    "sf2",  # sum of flux^2
    "serr",  # sum of err
    "min",
    "max",
    "lastFlux",
    "lastMjd",
    "maxSlope",
    "fpN",  # forced photometry on the difference image
    "fpSw",
    "fpSwf",
    "sciN",  # forced photometry on the science image
    "sciSw",
    "sciSwf",
)

DIA_SOURCE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("diaSourceId", sa.BigInteger),
    ("diaObjectId", sa.BigInteger),
    ("visit", sa.BigInteger),
    ("detector", sa.Integer),
    ("band", sa.String(8)),
    ("midpointMjdTai", sa.Float(53)),
    ("exposureTime", sa.Float),
    ("ra", sa.Float(53)),
    ("dec", sa.Float(53)),
    ("raErr", sa.Float),
    ("decErr", sa.Float),
    ("x", sa.Float),
    ("y", sa.Float),
    ("xErr", sa.Float),
    ("yErr", sa.Float),
    ("apFlux", sa.Float),
    ("apFluxErr", sa.Float),
    ("snr", sa.Float),
    ("psfFlux", sa.Float),
    ("psfFluxErr", sa.Float),
    ("scienceFlux", sa.Float),
    ("scienceFluxErr", sa.Float),
    ("templateFlux", sa.Float),
    ("templateFluxErr", sa.Float),
    ("isNegative", sa.Boolean),
    ("isDipole", sa.Boolean),
    ("psfNdata", sa.Integer),
    ("bboxSize", sa.Integer),
    ("pixelFlags", sa.Boolean),
    ("pixelFlags_bad", sa.Boolean),
    ("pixelFlags_cr", sa.Boolean),
    ("pixelFlags_edge", sa.Boolean),
    ("pixelFlags_saturated", sa.Boolean),
    ("reliability", sa.Float),
    ("reliabilityVersion", sa.String(32)),
    ("timeProcessedMjdTai", sa.Float(53)),
)

FORCED_SOURCE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("diaForcedSourceId", sa.BigInteger),
    ("diaObjectId", sa.BigInteger),
    ("visit", sa.BigInteger),
    ("detector", sa.Integer),
    ("band", sa.String(8)),
    ("midpointMjdTai", sa.Float(53)),
    ("ra", sa.Float(53)),
    ("dec", sa.Float(53)),
    ("psfFlux", sa.Float),
    ("psfFluxErr", sa.Float),
    ("scienceFlux", sa.Float),
    ("scienceFluxErr", sa.Float),
    # Not in the alert schema's diaForcedSource: the APDB keeps them so that
    # a flux measured on a PSF cut by the image edge stays recognisable.
    ("psfFlux_flag", sa.Boolean),
    ("psfFlux_flag_edge", sa.Boolean),
    ("forced_PsfFlux_flag", sa.Boolean),
    ("timeProcessedMjdTai", sa.Float(53)),
)


def _object_columns() -> list[sa.Column[Any]]:
    cols: list[sa.Column[Any]] = [
        sa.Column("diaObjectId", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ra", sa.Float(53), nullable=False),
        sa.Column("dec", sa.Float(53), nullable=False),
        sa.Column("sumX", sa.Float(53), nullable=False),
        sa.Column("sumY", sa.Float(53), nullable=False),
        sa.Column("sumZ", sa.Float(53), nullable=False),
        sa.Column("validityStartMjdTai", sa.Float(53), nullable=False),
        sa.Column("firstDiaSourceMjdTai", sa.Float(53)),
        sa.Column("lastDiaSourceMjdTai", sa.Float(53)),
        sa.Column("nDiaSources", sa.Integer, nullable=False),
    ]
    for b in BANDS:
        cols.extend(sa.Column(f"{b}_{s}", sa.Float(53)) for s in _BAND_SUMS)
    return cols


def _build_metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("DiaObject", md, *_object_columns(), sa.Index("ix_diaobject_dec", "dec"))
    src = [
        sa.Column(n, t, primary_key=(n == "diaSourceId"), autoincrement=False)
        for n, t in DIA_SOURCE_COLUMNS
    ]
    sa.Table(
        "DiaSource",
        md,
        *src,
        sa.Index("ix_diasource_object", "diaObjectId", "midpointMjdTai"),
        sa.Index("ix_diasource_visit", "visit", "detector"),
    )
    forced = [
        sa.Column(n, t, primary_key=(n == "diaForcedSourceId"), autoincrement=False)
        for n, t in FORCED_SOURCE_COLUMNS
    ]
    sa.Table(
        "DiaForcedSource",
        md,
        *forced,
        sa.Index("ix_forced_object", "diaObjectId", "midpointMjdTai"),
    )
    # Blob columns last: SQLite then reads the small columns of a row
    # without following its overflow pages.
    sa.Table(
        "DiaHistory",
        md,
        sa.Column("diaObjectId", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("chunk", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("avroSchemaId", sa.Integer, nullable=False),
        sa.Column("nRecords", sa.Integer, nullable=False),
        sa.Column("firstMjdTai", sa.Float(53), nullable=False),
        sa.Column("lastMjdTai", sa.Float(53), nullable=False),
        sa.Column("ids", sa.LargeBinary, nullable=False),
        sa.Column("mjds", sa.LargeBinary, nullable=False),
        sa.Column("ends", sa.LargeBinary, nullable=False),
        sa.Column("avro", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "ApdbVisit",
        md,
        sa.Column("visit", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("detector", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("band", sa.String(8)),
        sa.Column("midpointMjdTai", sa.Float(53)),
        sa.Column("nDiaSources", sa.Integer),
        sa.Column("nForcedSources", sa.Integer),
    )
    return md


class Apdb:
    """The alert production database.

    Parameters
    ----------
    url : str or Path
        An SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``) or
        the path of an SQLite file (created if missing).
    """

    def __init__(self, url: str | Path) -> None:
        text = str(url)
        if "://" not in text:
            path = Path(text)
            path.parent.mkdir(parents=True, exist_ok=True)
            text = f"sqlite:///{path}"
        self.url = text
        try:
            self.engine = sa.create_engine(text)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise BadValueError(
                "apdb url", text, "an SQLite file path or an SQLAlchemy URL (sqlite/postgresql)"
            ) from exc
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.metadata = _build_metadata()
        self.metadata.create_all(self.engine)
        t = self.metadata.tables
        self.objects, self.sources = t["DiaObject"], t["DiaSource"]
        self.forced, self.visits = t["DiaForcedSource"], t["ApdbVisit"]

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    # -- reading ---------------------------------------------------------
    def has_visit(self, visit: int, detector: int) -> bool:
        """Whether (visit, detector) was already stored."""
        q = sa.select(sa.func.count()).where(
            self.visits.c.visit == visit, self.visits.c.detector == detector
        )
        with self.engine.connect() as conn:
            return bool(conn.execute(q).scalar())

    def objects_in_region(
        self, ra_ranges: Sequence[tuple[float, float]], dec_range: tuple[float, float]
    ) -> list[dict[str, Any]]:
        """DIA objects whose mean position lies in the given RA ranges and Dec range."""
        c = self.objects.c
        ra_cond = sa.or_(*(sa.and_(c.ra >= lo, c.ra <= hi) for lo, hi in ra_ranges))
        q = sa.select(self.objects).where(c.dec >= dec_range[0], c.dec <= dec_range[1], ra_cond)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def get_objects(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """DIA object rows by id."""
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                q = sa.select(self.objects).where(self.objects.c.diaObjectId.in_(chunk))
                out.update({int(r.diaObjectId): dict(r._mapping) for r in conn.execute(q)})
        return out

    # -- history ---------------------------------------------------------
    def _sql(self, sql: str) -> str:
        """``?`` placeholders in the driver's own style (psycopg: ``%s``)."""
        return sql if self.engine.dialect.name == "sqlite" else sql.replace("?", "%s")

    def read_history(
        self,
        object_ids: Sequence[int],
        *,
        since: float,
        tails_of: Sequence[int] = (),
        conn: sa.Connection | None = None,
    ) -> tuple[dict[tuple[int, int], list[HistoryChunk]], dict[tuple[int, int], HistoryChunk]]:
        """History chunks of objects, and the last chunk of each object and kind.

        Parameters
        ----------
        object_ids : sequence of int
            Objects whose history (both kinds) is wanted: every chunk holding
            a record at or after ``since``.
        since : float
            Start of the history window (MJD).
        tails_of : sequence of int
            Further objects of which only the last forced-source chunk is
            wanted (to append this visit's forced source to).

        Returns
        -------
        chunks : dict
            ``(diaObjectId, kind) -> chunks`` in the window.
        tails : dict
            ``(diaObjectId, kind) -> last chunk``, for every key that has one.
        """
        cols = (
            '"diaObjectId", kind, chunk, "avroSchemaId", ids, mjds, ends, avro '
            'FROM "DiaHistory" h WHERE '
        )
        last = (
            'chunk = (SELECT max(chunk) FROM "DiaHistory" g '
            'WHERE g."diaObjectId" = h."diaObjectId" AND g.kind = h.kind)'
        )
        chunks: dict[tuple[int, int], list[HistoryChunk]] = {}
        tails: dict[tuple[int, int], HistoryChunk] = {}
        in_window = f'"lastMjdTai" >= {float(since)!r}'
        queries = [
            (f'SELECT {cols}"diaObjectId" IN ({{}}) AND ({in_window} OR {last})', object_ids, True),
            (
                f'SELECT {cols}kind = {FORCED} AND "diaObjectId" IN ({{}}) AND {last}',
                tails_of,
                False,
            ),
        ]
        with _maybe_connect(self.engine, conn) as c:
            # Many rows per visit: the driver's own cursor (ids are integers,
            # so literal SQL is safe).
            cursor = c.connection.cursor()
            try:
                for sql, ids, wanted in queries:
                    for part in _chunks([int(i) for i in ids], 2000):
                        cursor.execute(sql.format(",".join(map(str, part))))
                        for row in cursor.fetchall():
                            ch = HistoryChunk.from_row(*row)
                            key = (ch.object_id, ch.kind)
                            if wanted:
                                chunks.setdefault(key, []).append(ch)
                            if key not in tails or tails[key].chunk < ch.chunk:
                                tails[key] = ch
            finally:
                cursor.close()
        for key, found in chunks.items():
            # The last chunk is read even when it is older than the window.
            chunks[key] = [ch for ch in found if ch.n and ch.mjds[-1] >= since]
        return chunks, tails

    def _records(
        self, kind: int, object_ids: Sequence[int], since: float, before: float
    ) -> dict[int, list[HistoryRecord]]:
        chunks, _ = self.read_history(object_ids, since=since)
        out: dict[int, list[HistoryRecord]] = {int(i): [] for i in object_ids}
        for (oid, k), found in chunks.items():
            if k == kind:
                # schema id -1 forces the record-by-record answer.
                records = window(found, since=since, before=before, schema_id=-1)
                assert isinstance(records, list)
                out[oid] = records
        return out

    def source_history(
        self, object_ids: Sequence[int], *, since: float, before: float
    ) -> dict[int, list[HistoryRecord]]:
        """Per object, its DIA sources with ``since <= midpointMjdTai < before``, oldest first.

        Each is ``(diaSourceId, midpointMjdTai, avroSchemaId, avro)``: the
        stored encoding, so that packets need not re-encode history.
        """
        return self._records(SOURCE, object_ids, since, before)

    def forced_history(
        self, object_ids: Sequence[int], *, since: float, before: float
    ) -> dict[int, list[HistoryRecord]]:
        """Like :meth:`source_history`, for forced sources."""
        return self._records(FORCED, object_ids, since, before)

    def write_history(self, conn: sa.Connection, chunks: Iterable[HistoryChunk]) -> None:
        """Insert new chunks and rewrite changed ones (inside the caller's transaction)."""
        new = [c.row() for c in chunks if c.dirty and not c.stored]
        changed = [c.row() for c in chunks if c.dirty and c.stored]
        if new:
            conn.exec_driver_sql(
                self._sql(
                    'INSERT INTO "DiaHistory" ("diaObjectId", kind, chunk, "avroSchemaId", '
                    '"nRecords", "firstMjdTai", "lastMjdTai", ids, mjds, ends, avro) '
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                ),
                new,
            )
        if changed:
            conn.exec_driver_sql(
                self._sql(
                    'UPDATE "DiaHistory" SET "avroSchemaId"=?, "nRecords"=?, "firstMjdTai"=?, '
                    '"lastMjdTai"=?, ids=?, mjds=?, ends=?, avro=? '
                    'WHERE "diaObjectId"=? AND kind=? AND chunk=?'
                ),
                [(*r[3:], *r[:3]) for r in changed],
            )

    def rows_by_id(self, table: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Full rows of ``DiaSource`` or ``DiaForcedSource`` by id (without the encoding)."""
        t = self.metadata.tables[table]
        key = t.c.diaSourceId if table == "DiaSource" else t.c.diaForcedSourceId
        cols = [col for col in t.c if col.name not in ("avro", "avroSchemaId")]
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                for r in conn.execute(sa.select(*cols).where(key.in_(chunk))):
                    m = dict(r._mapping)
                    out[int(m[key.name])] = m
        return out

    def count(self, table: str) -> int:
        """Number of rows of ``DiaObject``, ``DiaSource`` or ``DiaForcedSource``."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(self.metadata.tables[table])
                ).scalar()
                or 0
            )

    def sources_of_visit(self, visit: int, detector: int) -> list[dict[str, Any]]:
        """The DIA sources stored for one visit/detector."""
        c = self.sources.c
        q = sa.select(self.sources).where(c.visit == visit, c.detector == detector)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(c.diaSourceId))]

    # -- writing ---------------------------------------------------------
    def store_visit(
        self,
        *,
        visit: int,
        detector: int,
        band: str,
        mjd: float,
        sources: Sequence[dict[str, Any]],
        forced: Sequence[dict[str, Any]],
        new_objects: Sequence[dict[str, Any]],
        updated_objects: Sequence[dict[str, Any]],
        tails: dict[tuple[int, int], HistoryChunk] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Store one visit's results in one transaction.

        Sources and forced sources carry their Avro encoding (``avro``, with
        ``avroSchemaId``); it is appended to their object's history chunks.

        Parameters
        ----------
        tails : dict, optional
            ``(diaObjectId, kind) -> last history chunk`` as returned by
            :meth:`read_history` (they are not modified); read here when not
            given.
        before_commit : callable, optional
            Called once everything is written, just before the commit; an
            exception from it rolls the visit back.

        Raises
        ------
        ConflictError
            When the visit/detector was already stored (re-running a visit
            would duplicate its sources).
        """
        src_cols = [n for n, _ in DIA_SOURCE_COLUMNS]
        fs_cols = [n for n, _ in FORCED_SOURCE_COLUMNS]
        obj_cols = [c.name for c in self.objects.c]
        with self.engine.begin() as conn:
            try:
                conn.exec_driver_sql(
                    self._sql(
                        'INSERT INTO "ApdbVisit" (visit, detector, band, "midpointMjdTai", '
                        '"nDiaSources", "nForcedSources") VALUES (?,?,?,?,?,?)'
                    ),
                    (visit, detector, band, mjd, len(sources), len(forced)),
                )
            except sa.exc.IntegrityError as exc:
                raise ConflictError(
                    f"visit {visit} detector {detector} is already in the APDB at {self.url}; "
                    "alerts for it were produced before"
                ) from exc
            if tails is None:
                # Every object of this visit's sources and forced sources.
                ids = {int(r["diaObjectId"]) for r in (*sources, *forced)}
                _, tails = self.read_history([], since=_NEVER, tails_of=sorted(ids), conn=conn)
                src_ids = sorted({int(s["diaObjectId"]) for s in sources})
                _, more = self.read_history(src_ids, since=_NEVER, conn=conn)
                tails.update(more)
            q = ", ".join(f'"{c}"' for c in obj_cols)
            marks = ",".join("?" * len(obj_cols))
            if new_objects:
                conn.exec_driver_sql(
                    self._sql(f'INSERT INTO "DiaObject" ({q}) VALUES ({marks})'),
                    [_values(o, obj_cols) for o in new_objects],
                )
            if updated_objects:
                sets = ", ".join(f'"{c}"=?' for c in obj_cols[1:])
                conn.exec_driver_sql(
                    self._sql(f'UPDATE "DiaObject" SET {sets} WHERE "diaObjectId"=?'),
                    [(*_values(o, obj_cols[1:]), o["diaObjectId"]) for o in updated_objects],
                )
            for rows, name, cols in (
                (sources, "DiaSource", src_cols),
                (forced, "DiaForcedSource", fs_cols),
            ):
                if rows:
                    q = ", ".join(f'"{c}"' for c in cols)
                    conn.exec_driver_sql(
                        self._sql(
                            f'INSERT INTO "{name}" ({q}) VALUES ({",".join("?" * len(cols))})'
                        ),
                        [_values(r, cols) for r in rows],
                    )
            touched: dict[tuple[int, int, int], HistoryChunk] = {}
            for rows, kind, key in (
                (sources, SOURCE, "diaSourceId"),
                (forced, FORCED, "diaForcedSourceId"),
            ):
                for r in rows:
                    oid = int(r["diaObjectId"])
                    last = tails.get((oid, kind))
                    chunk = appended(
                        last,
                        oid,
                        kind,
                        int(r["avroSchemaId"]),
                        int(r[key]),
                        float(r["midpointMjdTai"]),
                        r["avro"],
                    )
                    tails[(oid, kind)] = chunk
                    touched[(oid, kind, chunk.chunk)] = chunk
            self.write_history(conn, touched.values())
            if before_commit is not None:
                before_commit()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # Large pages: a history chunk (~10 KB) then spans one or two pages
    # instead of a chain of overflow pages (takes effect on a new file only).
    cur.execute("PRAGMA page_size=16384")
    # WAL lets readers (a consumer of the APDB, a report) run while a visit writes.
    use_wal(dbapi_conn)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _values(row: dict[str, Any], cols: Sequence[str]) -> tuple[Any, ...]:
    """A row's values in column order, NaN as NULL (``v != v`` only for NaN):
    a million values per visit, so no function call per value."""
    return tuple([None if v != v else v for v in map(row.get, cols)])


@contextlib.contextmanager
def _maybe_connect(engine: sa.Engine, conn: sa.Connection | None) -> Iterator[sa.Connection]:
    if conn is not None:
        yield conn
        return
    with engine.connect() as own:
        yield own


def _chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
