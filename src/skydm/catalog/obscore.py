"""ObsCore: the repository's images as the IVOA table ``ivoa.ObsCore`` (ObsCore 1.1).

One row per stored image (raw, calexp, diff, warp, coadd, template), every
mandatory ObsCore 1.1 column filled from the registry and the image's header
and WCS (its footprint from :class:`~skydm.image.datasets.ImageIndex`).
``obs_publisher_did`` is the image's opaque ID and ``access_url`` its
DataLink document, which lists the file, the SODA cutout service and, for
coadds, their inputs.

:func:`sync_obscore` rewrites the table when the repository's images changed
(the image service calls it on start-up), as :mod:`skydm.catalog.obsloc` does
for ``ivoa.obsplan``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from skydm.catalog.obsloc import BAND_WAVELENGTHS
from skydm.catalog.schema import OBSLOC_SCHEMA, ColumnDef, TableDef, arrow_schema
from skydm.catalog.storage import META_FILE, TableInfo, read_table_info, store_table

#: The ObsCore 1.1 data model identifier as TAPRegExt capabilities declare it.
OBSCORE_DM = "ivo://ivoa.net/std/ObsCore#core-1.1"
_C = "Char."
_X = "Char.SpatialAxis."
_COLUMNS: tuple[tuple[str, str, str, str, str, str], ...] = (
    # name, datatype, unit, ucd, utype (without "obscore:"), description
    ("dataproduct_type", "char", "", "meta.code.class", "ObsDataset.dataProductType",
     "Data product type (image)"),
    ("dataproduct_subtype", "char", "", "meta.code.class", "ObsDataset.dataProductSubtype",
     "skydm dataset type: raw, calexp, diff, warp, coadd, template"),
    ("calib_level", "int", "", "meta.code;obs.calib", "ObsDataset.calibLevel",
     "Calibration level: 1 raw, 2 calibrated, 3 coadds and differences"),
    ("obs_collection", "char", "", "meta.id", "DataID.Collection", "Name of the data collection"),
    ("obs_id", "char", "", "meta.id", "DataID.observationID", "Observation identifier"),
    ("obs_publisher_did", "char", "", "meta.ref.ivoid", "Curation.PublisherDID",
     "Dataset identifier (the ID for DataLink and SODA)"),
    ("access_url", "char", "", "meta.ref.url", "Access.Reference", "DataLink document"),
    ("access_format", "char", "", "meta.code.mime", "Access.Format", "Format of access_url"),
    ("access_estsize", "long", "kbyte", "phys.size;meta.file", "Access.Size",
     "Size of the stored file"),
    ("target_name", "char", "", "meta.id;src", "Target.Name", "Target (OBJECT or FIELD)"),
    ("s_ra", "double", "deg", "pos.eq.ra", _X + "Coverage.Location.Coord.Position2D.Value2.C1",
     "Right ascension of the image centre (ICRS)"),
    ("s_dec", "double", "deg", "pos.eq.dec", _X + "Coverage.Location.Coord.Position2D.Value2.C2",
     "Declination of the image centre (ICRS)"),
    ("s_fov", "double", "deg", "phys.angSize;instr.fov", _X + "Coverage.Bounds.Extent.diameter",
     "Diameter of the circle through the corners"),
    ("s_region", "char", "", "pos.outline;obs.field", _X + "Coverage.Support.Area",
     "Footprint (STC-S polygon of the corners)"),
    ("s_resolution", "double", "arcsec", "pos.angResolution", _X + "Resolution.Refval.value",
     "Seeing (PSF FWHM)"),
    ("s_xel1", "long", "", "meta.number", _X + "numBins1", "Pixels along the first axis"),
    ("s_xel2", "long", "", "meta.number", _X + "numBins2", "Pixels along the second axis"),
    ("t_min", "double", "d", "time.start;obs.exposure",
     _C + "TimeAxis.Coverage.Bounds.Limits.StartTime", "Start of exposure (MJD)"),
    ("t_max", "double", "d", "time.end;obs.exposure",
     _C + "TimeAxis.Coverage.Bounds.Limits.StopTime", "End of exposure (MJD)"),
    ("t_exptime", "double", "s", "time.duration;obs.exposure",
     _C + "TimeAxis.Coverage.Support.Extent", "Exposure time"),
    ("t_resolution", "double", "s", "time.resolution", _C + "TimeAxis.Resolution.Refval.value",
     "Time resolution"),
    ("t_xel", "long", "", "meta.number", _C + "TimeAxis.numBins", "Samples along time"),
    ("em_min", "double", "m", "em.wl;stat.min",
     _C + "SpectralAxis.Coverage.Bounds.Limits.LoLimit", "Shortest wavelength of the band"),
    ("em_max", "double", "m", "em.wl;stat.max",
     _C + "SpectralAxis.Coverage.Bounds.Limits.HiLimit", "Longest wavelength of the band"),
    ("em_res_power", "double", "", "spect.resolution",
     _C + "SpectralAxis.Resolution.ResolPower.refVal", "Spectral resolving power"),
    ("em_xel", "long", "", "meta.number", _C + "SpectralAxis.numBins", "Samples along wavelength"),
    ("o_ucd", "char", "", "meta.ucd", _C + "ObservableAxis.ucd", "UCD of the pixel values"),
    ("pol_states", "char", "", "meta.code;phys.polarization", _C + "PolarizationAxis.stateList",
     "Polarization states"),
    ("pol_xel", "long", "", "meta.number", _C + "PolarizationAxis.numBins",
     "Polarization samples"),
    ("facility_name", "char", "", "meta.id;instr.tel", "Provenance.ObsConfig.Facility.name",
     "Telescope"),
    ("instrument_name", "char", "", "meta.id;instr", "Provenance.ObsConfig.Instrument.name",
     "Instrument"),
)  # fmt: skip

#: ``ivoa.ObsCore`` as ObsCore 1.1 defines it (every mandatory column, plus the subtype).
OBSCORE = TableDef(
    "ObsCore",
    "Images of this repository (ObsCore 1.1): one row per stored image",
    tuple(
        ColumnDef(
            name,
            datatype,
            unit,
            ucd,
            description,
            arraysize="*" if datatype == "char" else None,
            principal=True,
            indexed=name in ("s_ra", "s_dec", "obs_publisher_did"),
            std=name != "dataproduct_subtype",
            utype=f"obscore:{utype}",
        )
        for name, datatype, unit, ucd, utype, description in _COLUMNS
    ),
    ra_col="s_ra",
    dec_col="s_dec",
    key="obs_publisher_did",
    schema=OBSLOC_SCHEMA,
    utype="ivo://ivoa.net/std/obscore#core-1.1",
)
_O_UCD = {"raw": "phot.count", "diff": "phot.count", "warp": "phot.count"}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(header: Any, *names: str) -> str | None:
    for name in names:
        value = header.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def datalink_url(public_url: str, image_id: str) -> str:
    """The DataLink document of an image on the service at ``public_url``."""
    return f"{public_url.rstrip('/')}/datalink/links?ID={quote(image_id, safe='')}"


def obscore_table(footprints: list[Any], public_url: str) -> pa.Table:
    """``ivoa.ObsCore`` for ``footprints`` (:class:`ImageFootprint` objects)."""
    rows: dict[str, list[Any]] = {c.name: [] for c in OBSCORE.columns}
    for fp in sorted(footprints, key=lambda f: f.id):
        for name, value in obscore_row(fp, public_url).items():
            rows[name].append(value)
    return pa.table(rows, schema=arrow_schema(OBSCORE))


def obscore_row(fp: Any, public_url: str) -> dict[str, Any]:
    """The ``ivoa.ObsCore`` row of one :class:`ImageFootprint` (also SIA's answer rows)."""
    from skydm.image.datasets import CALIB_LEVEL

    did, header = fp.ref.data_id, fp.header
    kind = fp.dataset_type
    mjd, exptime = fp.mjd, fp.exptime
    half = (exptime or 0.0) / 2 / 86400.0
    wl = BAND_WAVELENGTHS.get(str(did.band).lower())
    obs_id = (
        f"{did.instrument}/{did.skycell}/{did.band}"
        if did.skycell is not None
        else f"{did.instrument}/{did.visit}/{did.detector}/{did.band}"
    )
    corners = " ".join(f"{a:.7f} {d:.7f}" for a, d in fp.corners)
    values: dict[str, Any] = {
        "dataproduct_type": "image",
        "dataproduct_subtype": kind,
        "calib_level": CALIB_LEVEL.get(kind, 2),
        "obs_collection": f"skydm/{kind}",
        "obs_id": obs_id,
        "obs_publisher_did": fp.id,
        "access_url": datalink_url(public_url, fp.id),
        "access_format": "application/x-votable+xml;content=datalink",
        "access_estsize": max(1, fp.ref.size // 1024),
        "target_name": _text(header, "OBJECT", "FIELD") or "",
        "s_ra": fp.ra,
        "s_dec": fp.dec,
        "s_fov": 2 * fp.radius,
        "s_region": f"Polygon ICRS {corners}",
        "s_resolution": _number(header.get("SEEING")),
        "s_xel1": fp.shape[1],
        "s_xel2": fp.shape[0],
        "t_min": mjd - half if mjd is not None else None,
        "t_max": mjd + half if mjd is not None else None,
        "t_exptime": exptime,
        "t_resolution": exptime,
        "t_xel": 1,
        "em_min": wl[0] if wl else None,
        "em_max": wl[1] if wl else None,
        "em_res_power": (wl[0] + wl[1]) / 2 / (wl[1] - wl[0]) if wl else None,
        "em_xel": 1,
        "o_ucd": _O_UCD.get(kind, "phot.flux"),
        "pol_states": None,
        "pol_xel": None,
        "facility_name": _text(header, "TELESCOP", "OBSERVAT") or str(did.instrument),
        "instrument_name": _text(header, "INSTRUME") or str(did.instrument),
    }
    return values


def sync_obscore(repo_dir: Path | str, public_url: str) -> TableInfo | None:
    """Rewrite ``ivoa.ObsCore`` in ``<repo>/catalog`` if the repository's images changed.

    Parameters
    ----------
    repo_dir : Path or str
        The repository.  Without a registry (a catalog-only directory), nothing
        is written and None is returned.
    public_url : str
        The services' public root URL (``access_url`` points under it).

    Returns
    -------
    TableInfo or None
        The table as stored (an unchanged table is not rewritten).
    """
    import pyarrow.parquet as pq

    from skydm.errors import UserError
    from skydm.image.datasets import ImageIndex
    from skydm.repo import Repository

    try:
        repo = Repository.open(repo_dir, create=False)
    except UserError:
        return None
    with repo:
        table = obscore_table(ImageIndex(repo).refresh(), public_url)
    target = Path(repo_dir) / "catalog" / OBSCORE.qualified
    if (target / META_FILE).exists():
        info = read_table_info(target)
        if info.definition == OBSCORE and info.files:
            names = [c.name for c in OBSCORE.columns]
            old = pa.concat_tables([pq.read_table(f, columns=names) for f in info.files]).cast(
                arrow_schema(OBSCORE)
            )
            key = "obs_publisher_did"
            if old.sort_by(key).equals(table.sort_by(key)):
                return info
    return store_table(Path(repo_dir) / "catalog", OBSCORE, table)
