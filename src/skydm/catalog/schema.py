"""One schema definition for the standard catalog tables, and TAP_SCHEMA built from it.

The standard tables (Object, Source, ForcedSource, DiaObject, DiaSource) are
defined once here, felis-style, with column names close to Rubin's DP0/DPDD.
From that definition come the Parquet schema of stored tables
(:func:`arrow_schema`), the metadata served in ``TAP_SCHEMA`` and the VOTable
field descriptions of query results.  Tables a user loads get the same kind of
:class:`TableDef`, built from the file's own metadata (see
:mod:`skydm.catalog.storage`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

BANDS = ("u", "g", "r", "i", "z", "y")

#: The schema every loaded table lives in (queries may name it or leave it out).
CATALOG_SCHEMA = "skydm"
TAP_SCHEMA_NAME = "TAP_SCHEMA"
#: The schema of IVOA standard tables the service publishes (ObsLocTAP's ``ivoa.obsplan``).
OBSLOC_SCHEMA = "ivoa"

# VOTable datatype -> Arrow type for the standard definitions.
_VOTABLE_TO_ARROW: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "unsignedByte": pa.uint8(),
    "short": pa.int16(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "char": pa.string(),
    "unicodeChar": pa.string(),
}


@dataclass(frozen=True)
class ColumnDef:
    """One column: name, VOTable type and the metadata TAP serves.

    Parameters
    ----------
    name : str
        Column name as queried (case preserved).
    datatype : str
        VOTable datatype (``long``, ``double``, ``char``...).
    arraysize : str or None
        VOTable arraysize (``"*"`` for variable-length strings), else None.
    unit, ucd, description : str
        VOUnit, UCD1+ word and one-line description.
    principal, indexed, std : bool
        TAP_SCHEMA flags: shown by default, indexed, defined by a standard.
    xtype : str or None
        VOTable xtype (``timestamp``...), if any.
    utype : str or None
        Data-model utype (standard tables such as ObsLocTAP's define them).
    """

    name: str
    datatype: str
    unit: str = ""
    ucd: str = ""
    description: str = ""
    arraysize: str | None = None
    principal: bool = False
    indexed: bool = False
    std: bool = False
    xtype: str | None = None
    utype: str | None = None

    def arrow_type(self) -> pa.DataType:
        """The Arrow type a stored column of this definition has."""
        return _VOTABLE_TO_ARROW[self.datatype]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (stored in each table's ``_table.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColumnDef:
        """Inverse of :meth:`to_json`."""
        return cls(**data)


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key from ``columns`` of this table to ``target_columns`` of ``target``."""

    columns: tuple[str, ...]
    target: str
    target_columns: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class TableDef:
    """A catalog table's definition.

    Parameters
    ----------
    name : str
        Table name as queried (``Object``...).
    description : str
        One-line description for TAP_SCHEMA.
    columns : tuple of ColumnDef
        The columns, in order.
    ra_col, dec_col : str or None
        The position columns (degrees, ICRS) used for HEALPix partitioning;
        None for a table without positions.
    key : str or None
        The primary key column, if any.
    foreign_keys : tuple of ForeignKey
        Foreign keys to other tables.
    schema : str
        The schema the table is queried in: the catalog schema (where table
        names need no qualifier), or another such as ``ivoa`` for standard
        tables (``ivoa.obsplan``) or ``TAP_UPLOAD`` for uploaded tables.
    utype : str or None
        Data-model utype of the table (TAP_SCHEMA.tables.utype).
    """

    name: str
    description: str
    columns: tuple[ColumnDef, ...]
    ra_col: str | None = "ra"
    dec_col: str | None = "dec"
    key: str | None = None
    foreign_keys: tuple[ForeignKey, ...] = field(default=())
    schema: str = CATALOG_SCHEMA
    utype: str | None = None

    @property
    def qualified(self) -> str:
        """``schema.name``, or ``name`` alone in the catalog schema (also its directory name)."""
        return self.name if self.schema == CATALOG_SCHEMA else f"{self.schema}.{self.name}"

    def column(self, name: str) -> ColumnDef:
        """The column called ``name`` (exact case)."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (stored in each table's ``_table.json``)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "columns": [c.to_json() for c in self.columns],
            "ra_col": self.ra_col,
            "dec_col": self.dec_col,
            "key": self.key,
            "foreign_keys": [dataclasses.asdict(fk) for fk in self.foreign_keys],
        }
        if self.schema != CATALOG_SCHEMA:
            out["schema"] = self.schema
        if self.utype is not None:
            out["utype"] = self.utype
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableDef:
        """Inverse of :meth:`to_json`."""
        fks = tuple(
            ForeignKey(
                tuple(fk["columns"]),
                fk["target"],
                tuple(fk["target_columns"]),
                fk.get("description", ""),
            )
            for fk in data.get("foreign_keys", [])
        )
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            columns=tuple(ColumnDef.from_json(c) for c in data["columns"]),
            ra_col=data.get("ra_col"),
            dec_col=data.get("dec_col"),
            key=data.get("key"),
            foreign_keys=fks,
            schema=data.get("schema", CATALOG_SCHEMA),
            utype=data.get("utype"),
        )


def arrow_schema(table: TableDef) -> pa.Schema:
    """The Arrow schema of a stored table (without the internal HEALPix columns)."""
    return pa.schema([pa.field(c.name, c.arrow_type()) for c in table.columns])


# --- the standard tables -------------------------------------------------------------


def _id(name: str, what: str, *, main: bool = False, indexed: bool = True) -> ColumnDef:
    ucd = "meta.id;meta.main" if main else "meta.id"
    return ColumnDef(name, "long", "", ucd, what, principal=True, indexed=indexed)


def _pos(kind: str) -> tuple[ColumnDef, ...]:
    return (
        ColumnDef(
            "ra",
            "double",
            "deg",
            "pos.eq.ra;meta.main",
            f"Right ascension of the {kind} (ICRS)",
            principal=True,
            indexed=True,
        ),
        ColumnDef(
            "dec",
            "double",
            "deg",
            "pos.eq.dec;meta.main",
            f"Declination of the {kind} (ICRS)",
            principal=True,
            indexed=True,
        ),
        ColumnDef("raErr", "float", "deg", "stat.error;pos.eq.ra", "Uncertainty of ra"),
        ColumnDef("decErr", "float", "deg", "stat.error;pos.eq.dec", "Uncertainty of dec"),
    )


def _flux(prefix: str, what: str, *, principal: bool = False) -> tuple[ColumnDef, ...]:
    return (
        ColumnDef(
            f"{prefix}psfFlux",
            "double",
            "nJy",
            "phot.flux.density",
            f"PSF flux{what}",
            principal=principal,
        ),
        ColumnDef(
            f"{prefix}psfFluxErr",
            "double",
            "nJy",
            "stat.error;phot.flux.density",
            f"Uncertainty of the PSF flux{what}",
            principal=principal,
        ),
    )


_TIME = ColumnDef(
    "midpointMjdTai",
    "double",
    "d",
    "time.epoch",
    "Midpoint of the exposure (MJD, TAI)",
    principal=True,
)
_BAND = ColumnDef(
    "band",
    "char",
    "",
    "meta.id;instr.filter",
    "Filter band (ugrizy)",
    arraysize="*",
    principal=True,
)
_VISIT = ColumnDef("visit", "long", "", "meta.id;obs", "Visit identifier")
_DETECTOR = ColumnDef("detector", "int", "", "meta.id;instr.det", "Detector identifier")


def _object_bands() -> tuple[ColumnDef, ...]:
    cols: list[ColumnDef] = []
    for b in BANDS:
        cols += _flux(f"{b}_", f" in band {b} (forced, aperture-corrected)", principal=False)
        cols.append(
            ColumnDef(
                f"{b}_psfFlux_flag",
                "boolean",
                "",
                "meta.code",
                f"PSF flux in band {b} unreliable (no flux, partial PSF, stamp off the cell)",
            )
        )
        cols.append(
            ColumnDef(
                f"{b}_psfMag",
                "float",
                "mag",
                "phot.mag",
                f"PSF AB magnitude in band {b}",
                principal=True,
            )
        )
        cols.append(
            ColumnDef(
                f"{b}_psfMagErr",
                "float",
                "mag",
                "stat.error;phot.mag",
                f"Uncertainty of the PSF magnitude in band {b}",
            )
        )
    return tuple(cols)


def _diaobject_bands() -> tuple[ColumnDef, ...]:
    cols: list[ColumnDef] = []
    for b in BANDS:
        cols += [
            ColumnDef(
                f"{b}_psfFluxMean",
                "double",
                "nJy",
                "phot.flux.density;stat.mean",
                f"Weighted mean PSF flux of the DIA sources in band {b}",
            ),
            ColumnDef(
                f"{b}_psfFluxMeanErr",
                "double",
                "nJy",
                "stat.error;phot.flux.density",
                f"Uncertainty of {b}_psfFluxMean",
            ),
            ColumnDef(
                f"{b}_psfFluxSigma",
                "double",
                "nJy",
                "stat.stdev;phot.flux.density",
                f"Standard deviation of the PSF fluxes in band {b}",
            ),
            ColumnDef(
                f"{b}_psfFluxNdata", "int", "", "meta.number", f"Number of PSF fluxes in band {b}"
            ),
        ]
    return tuple(cols)


STANDARD_TABLES: dict[str, TableDef] = {
    t.name: t
    for t in (
        TableDef(
            "Object",
            "Astrophysical objects detected on the deep coadds of all bands together, "
            "with forced PSF photometry in every band (skydm.drp)",
            (
                _id("objectId", "Unique identifier of the object (sky cell and number)", main=True),
                # ra/dec are the catalog's partition columns (the catalog and TAP
                # tests rely on them); coord_ra/coord_dec are Rubin's DP0.2 names
                # of the same position, which skydm.drp writes.
                *_pos("object"),
                ColumnDef(
                    "coord_ra",
                    "double",
                    "deg",
                    "pos.eq.ra",
                    "Right ascension of the object's centroid on the detection image (ICRS)",
                    principal=True,
                    indexed=True,
                ),
                ColumnDef(
                    "coord_dec",
                    "double",
                    "deg",
                    "pos.eq.dec",
                    "Declination of the object's centroid on the detection image (ICRS)",
                    principal=True,
                    indexed=True,
                ),
                ColumnDef(
                    "x",
                    "double",
                    "pix",
                    "pos.cartesian.x",
                    "Column of the centroid in its sky cell",
                ),
                ColumnDef(
                    "y", "double", "pix", "pos.cartesian.y", "Row of the centroid in its sky cell"
                ),
                ColumnDef(
                    "detect_snr",
                    "float",
                    "",
                    "stat.snr",
                    "Peak of the multi-band detection image in the footprint (sigma)",
                    principal=True,
                ),
                ColumnDef(
                    "footprintArea", "int", "pix", "phys.area", "Area of the deblended footprint"
                ),
                ColumnDef(
                    "deblend_nPeaks",
                    "int",
                    "",
                    "meta.number",
                    "Number of objects deblended from the object's parent footprint",
                ),
                ColumnDef(
                    "extendedness",
                    "float",
                    "",
                    "src.class.starGalaxy",
                    "1 when the aperture flux significantly exceeds the PSF flux "
                    "(all bands together), 0 for point sources",
                    principal=True,
                ),
                ColumnDef(
                    "flags",
                    "long",
                    "",
                    "meta.code",
                    "ObjectFlag bits: 1 edge, 2 saturated, 4 bad, 8 clipped, 16 deblended, "
                    "32 partial PSF, 64 no flux, 128 no aperture correction",
                ),
                *_object_bands(),
            ),
            key="objectId",
        ),
        TableDef(
            "Source",
            "Sources detected and measured on single-visit images",
            (
                _id("sourceId", "Unique identifier of the source", main=True),
                _VISIT,
                _DETECTOR,
                _BAND,
                *_pos("source"),
                _TIME,
                *_flux("", "", principal=True),
                ColumnDef("apFlux", "double", "nJy", "phot.flux.density", "Aperture flux"),
                ColumnDef(
                    "apFluxErr",
                    "double",
                    "nJy",
                    "stat.error;phot.flux.density",
                    "Uncertainty of the aperture flux",
                ),
                ColumnDef("x", "double", "pix", "pos.cartesian.x;instr.det", "Column position"),
                ColumnDef("y", "double", "pix", "pos.cartesian.y;instr.det", "Row position"),
            ),
            key="sourceId",
        ),
        TableDef(
            "ForcedSource",
            "Forced PSF photometry at the positions of Objects on every visit",
            (
                _id("forcedSourceId", "Unique identifier of the forced measurement", main=True),
                _id("objectId", "Object measured (Object.objectId)"),
                _VISIT,
                _DETECTOR,
                _BAND,
                *_pos("object")[:2],
                _TIME,
                *_flux("", " on the calibrated visit image", principal=True),
                *_flux("Diff", " on the difference image", principal=True),
            ),
            key="forcedSourceId",
            foreign_keys=(
                ForeignKey(
                    ("objectId",),
                    "Object",
                    ("objectId",),
                    "The object a forced measurement belongs to",
                ),
            ),
        ),
        TableDef(
            "DiaObject",
            "Objects built by associating sources detected on difference images",
            (
                _id("diaObjectId", "Unique identifier of the DIA object", main=True),
                *_pos("DIA object"),
                ColumnDef(
                    "nDiaSources",
                    "int",
                    "",
                    "meta.number",
                    "Number of DIA sources associated",
                    principal=True,
                ),
                ColumnDef(
                    "firstDiaSourceMjdTai",
                    "double",
                    "d",
                    "time.start",
                    "Time of the first DIA source (MJD, TAI)",
                ),
                ColumnDef(
                    "lastDiaSourceMjdTai",
                    "double",
                    "d",
                    "time.end",
                    "Time of the latest DIA source (MJD, TAI)",
                ),
                *_diaobject_bands(),
            ),
            key="diaObjectId",
        ),
        TableDef(
            "DiaSource",
            "Sources detected on difference images",
            (
                _id("diaSourceId", "Unique identifier of the DIA source", main=True),
                _id("diaObjectId", "DIA object it is associated with (DiaObject.diaObjectId)"),
                _VISIT,
                _DETECTOR,
                _BAND,
                *_pos("DIA source"),
                _TIME,
                *_flux("", " on the difference image", principal=True),
                ColumnDef(
                    "scienceFlux",
                    "double",
                    "nJy",
                    "phot.flux.density",
                    "PSF flux on the calibrated visit image",
                ),
                ColumnDef(
                    "scienceFluxErr",
                    "double",
                    "nJy",
                    "stat.error;phot.flux.density",
                    "Uncertainty of scienceFlux",
                ),
                ColumnDef(
                    "snr",
                    "float",
                    "",
                    "stat.snr",
                    "Signal-to-noise ratio of the detection",
                    principal=True,
                ),
                ColumnDef("x", "double", "pix", "pos.cartesian.x;instr.det", "Column position"),
                ColumnDef("y", "double", "pix", "pos.cartesian.y;instr.det", "Row position"),
                ColumnDef("isDipole", "boolean", "", "meta.code", "Fitted as a dipole"),
            ),
            key="diaSourceId",
            foreign_keys=(
                ForeignKey(
                    ("diaObjectId",),
                    "DiaObject",
                    ("diaObjectId",),
                    "The DIA object a DIA source belongs to",
                ),
            ),
        ),
    )
}
