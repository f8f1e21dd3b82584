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

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from skydm.errors import BadValueError, ConflictError

BANDS = ("u", "g", "r", "i", "z", "y")

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
        sa.Column("avroSchemaId", sa.Integer),
        sa.Column("avro", sa.LargeBinary),
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
        sa.Column("avroSchemaId", sa.Integer),
        sa.Column("avro", sa.LargeBinary),
        sa.Index("ix_forced_object", "diaObjectId", "midpointMjdTai"),
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

    def _history(
        self, table: sa.Table, object_ids: Sequence[int], since: float, before: float
    ) -> dict[int, list[tuple[int, float, int | None, bytes | None]]]:
        c = table.c
        key = c.diaSourceId if table is self.sources else c.diaForcedSourceId
        out: dict[int, list[tuple[int, float, int | None, bytes | None]]] = {
            int(i): [] for i in object_ids
        }
        with self.engine.connect() as conn:
            # Millions of rows per visit: read them with the driver's own
            # cursor (ids and times are numbers, so literal SQL is safe).
            cursor = conn.connection.cursor()
            for chunk in _chunks([int(i) for i in object_ids], 2000):
                q = sa.select(c.diaObjectId, key, c.midpointMjdTai, c.avroSchemaId, c.avro).where(
                    c.diaObjectId.in_(chunk),
                    c.midpointMjdTai >= float(since),
                    c.midpointMjdTai < float(before),
                )
                sql = str(q.compile(self.engine, compile_kwargs={"literal_binds": True}))
                cursor.execute(sql)
                for oid, rid, mjd, sid, blob in cursor.fetchall():
                    out[oid].append((rid, mjd, sid, bytes(blob) if blob is not None else None))
            cursor.close()
        for rows in out.values():
            rows.sort(key=lambda r: r[1])
        return out

    def source_history(
        self, object_ids: Sequence[int], *, since: float, before: float
    ) -> dict[int, list[tuple[int, float, int | None, bytes | None]]]:
        """Per object, its DIA sources with ``since <= midpointMjdTai < before``, oldest first.

        Each is ``(diaSourceId, midpointMjdTai, avroSchemaId, avro)``: the
        stored encoding, so that packets need not re-encode history.
        """
        return self._history(self.sources, object_ids, since, before)

    def forced_history(
        self, object_ids: Sequence[int], *, since: float, before: float
    ) -> dict[int, list[tuple[int, float, int | None, bytes | None]]]:
        """Like :meth:`source_history`, for forced sources."""
        return self._history(self.forced, object_ids, since, before)

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
    ) -> None:
        """Store one visit's results in one transaction.

        Raises
        ------
        ConflictError
            When the visit/detector was already stored (re-running a visit
            would duplicate its sources).
        """
        src_cols = {n for n, _ in DIA_SOURCE_COLUMNS} | {"avro", "avroSchemaId"}
        fs_cols = {n for n, _ in FORCED_SOURCE_COLUMNS} | {"avro", "avroSchemaId"}
        with self.engine.begin() as conn:
            try:
                conn.execute(
                    self.visits.insert(),
                    [
                        dict(
                            visit=visit,
                            detector=detector,
                            band=band,
                            midpointMjdTai=mjd,
                            nDiaSources=len(sources),
                            nForcedSources=len(forced),
                        )
                    ],
                )
            except sa.exc.IntegrityError as exc:
                raise ConflictError(
                    f"visit {visit} detector {detector} is already in the APDB at {self.url}; "
                    "alerts for it were produced before"
                ) from exc
            if new_objects:
                conn.execute(self.objects.insert(), [_clean(o) for o in new_objects])
            if updated_objects:
                c = self.objects.c
                stmt = (
                    self.objects.update()
                    .where(c.diaObjectId == sa.bindparam("_id"))
                    .values({k: sa.bindparam(k) for k in updated_objects[0] if k != "diaObjectId"})
                )
                conn.execute(
                    stmt, [{**_clean(o), "_id": o["diaObjectId"]} for o in updated_objects]
                )
            for rows, table, cols in (
                (sources, self.sources, src_cols),
                (forced, self.forced, fs_cols),
            ):
                for chunk in _chunks(list(rows), 5000):
                    conn.execute(
                        table.insert(), [{k: _nan_none(r.get(k)) for k in cols} for r in chunk]
                    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (a consumer of the APDB, a report) run while a visit writes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _nan_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _nan_none(v) for k, v in row.items()}


def _chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
