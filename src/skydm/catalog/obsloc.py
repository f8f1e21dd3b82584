"""ObsLocTAP: the repository's observations as the IVOA table ``ivoa.obsplan``.

IVOA ObsLocTAP 1.0 describes observations planned and performed by a
facility in one table, ``ivoa.obsplan``.  skydm publishes what it archived:
one row per raw dataset (a visit seen by one detector), with
``execution_status = 'Performed'``.  Times, band and pointing come from the
raw's registry entry and its stored header: the exposure's start and end
(MJD), the band's wavelength range for the standard ugrizy bands, the WCS
footprint as an STC-S polygon and its centre.

:func:`sync_visits` rewrites the table in the catalog when the repository's
raws changed (the TAP service calls it on start-up; ``skydm catalog
sync-visits`` runs it by hand).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from skydm.catalog.schema import OBSLOC_SCHEMA, ColumnDef, TableDef, arrow_schema
from skydm.catalog.storage import META_FILE, TableInfo, read_table_info, store_table

#: Wavelength range (metres) of the standard bands (LSST ugrizy filter edges).
BAND_WAVELENGTHS = {
    "u": (320e-9, 400e-9),
    "g": (400e-9, 552e-9),
    "r": (552e-9, 691e-9),
    "i": (691e-9, 818e-9),
    "z": (818e-9, 922e-9),
    "y": (948e-9, 1060e-9),
}
_MJD_UNIX_EPOCH = 40587.0


_CHAR = "Char."
#: Utypes of the columns (ObsLocTAP 1.0 reuses ObsCore's); the others have none.
_UTYPES = {
    "target_name": "Target.name",
    "obs_id": "DataID.observationID",
    "obs_collection": "DataID.collection",
    "s_ra": _CHAR + "SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C1",
    "s_dec": _CHAR + "SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C2",
    "s_fov": _CHAR + "SpatialAxis.Coverage.Bounds.Extent.diameter",
    "s_region": _CHAR + "SpatialAxis.Coverage.Support.Area",
    "s_resolution": _CHAR + "SpatialAxis.Resolution.Refval.value",
    "t_min": _CHAR + "TimeAxis.Coverage.Bounds.Limits.StartTime",
    "t_max": _CHAR + "TimeAxis.Coverage.Bounds.Limits.StopTime",
    "t_exptime": _CHAR + "TimeAxis.Coverage.Support.Extent",
    "t_resolution": _CHAR + "TimeAxis.Resolution.Refval.value",
    "em_min": _CHAR + "SpectralAxis.Coverage.Bounds.Limits.LoLimit",
    "em_max": _CHAR + "SpectralAxis.Coverage.Bounds.Limits.HiLimit",
    "em_res_power": _CHAR + "SpectralAxis.Resolution.ResolPower.refVal",
    "o_ucd": _CHAR + "ObservableAxis.ucd",
    "pol_states": _CHAR + "PolarizationAxis.stateList",
    "pol_xel": _CHAR + "PolarizationAxis.numBins",
    "facility_name": "Provenance.ObsConfig.Facility.name",
    "instrument_name": "Provenance.ObsConfig.Instrument.name",
    "t_plan_exptime": _CHAR + "TimeAxis.Coverage.Support.Extent",
}


def _col(name: str, datatype: str, unit: str, ucd: str, description: str) -> ColumnDef:
    return ColumnDef(
        name,
        datatype,
        unit,
        ucd,
        description,
        arraysize="*" if datatype == "char" else None,
        principal=True,
        indexed=name in ("s_ra", "s_dec"),
        std=True,
        utype=_UTYPES.get(name),
    )


#: ``ivoa.obsplan`` as ObsLocTAP 1.0 (section 4) defines it.
OBSPLAN = TableDef(
    "obsplan",
    "Observations of this repository (ObsLocTAP 1.0): one row per archived raw",
    (
        _col("t_planning", "double", "d", "", "When the observation was recorded"),
        _col("target_name", "char", "", "meta.id;src", "Target (OBJECT or FIELD) name"),
        _col("obs_id", "char", "", "meta.id", "Observation identifier"),
        _col("obs_collection", "char", "", "meta.id", "Name of the data collection"),
        _col("s_ra", "double", "deg", "pos.eq.ra", "Right ascension of the field centre (ICRS)"),
        _col("s_dec", "double", "deg", "pos.eq.dec", "Declination of the field centre (ICRS)"),
        _col("s_fov", "double", "deg", "phys.angSize;instr.fov", "Diameter of the field"),
        _col("s_region", "char", "", "pos.outline;obs.field", "Footprint (STC-S polygon)"),
        _col("s_resolution", "double", "arcsec", "pos.angResolution", "Seeing (PSF FWHM)"),
        _col("t_min", "double", "d", "time.start;obs.exposure", "Start of exposure (MJD)"),
        _col("t_max", "double", "d", "time.end;obs.exposure", "End of exposure (MJD)"),
        _col("t_exptime", "double", "s", "time.duration;obs.exposure", "Exposure time"),
        _col("t_resolution", "double", "s", "time.resolution", "Time resolution"),
        _col("em_min", "double", "m", "em.wl;stat.min", "Shortest wavelength of the band"),
        _col("em_max", "double", "m", "em.wl;stat.max", "Longest wavelength of the band"),
        _col("em_res_power", "double", "", "spect.resolution", "Spectral resolving power"),
        _col("o_ucd", "char", "", "meta.ucd", "UCD of the observable"),
        _col("pol_states", "char", "", "meta.code;phys.polarization", "Polarization states"),
        _col("pol_xel", "long", "", "meta.number", "Number of polarization samples"),
        _col("facility_name", "char", "", "meta.id;instr.tel", "Telescope"),
        _col("instrument_name", "char", "", "meta.id;instr", "Instrument"),
        _col("t_plan_exptime", "double", "s", "time.duration;obs.exposure", "Planned exposure"),
        _col("category", "char", "", "", "Fixed, Coordinated, Window or Other"),
        _col("priority", "int", "", "", "Priority (0: highest)"),
        _col("execution_status", "char", "", "", "Planned, ..., Performed"),
        _col("tracking_type", "char", "", "", "Telescope tracking"),
    ),
    ra_col="s_ra",
    dec_col="s_dec",
    key="obs_id",
    schema=OBSLOC_SCHEMA,
    utype="ivo://ivoa.net/std/obsloctap#table-1.0",
)


def _mjd(when: datetime | None) -> float | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _MJD_UNIX_EPOCH + when.timestamp() / 86400.0


def _image_header(path: Path) -> Any:
    """The header of the first image of a stored raw (compressed HDUs give the image's)."""
    from astropy.io import fits

    with fits.open(path, lazy_load_hdus=True) as hdul:
        for hdu in hdul:
            if hdu.header.get("NAXIS", 0) >= 2 or isinstance(hdu, fits.CompImageHDU):
                return hdu.header.copy()
    return None


def _footprint(header: Any) -> tuple[float, float, float, str] | None:
    """(ra, dec, fov diameter, STC-S polygon) of an image's WCS, or None without one."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
        if not wcs.has_celestial:
            return None
        nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
        px = np.array([0.5, nx + 0.5, nx + 0.5, 0.5, (nx + 1) / 2]) - 1
        py = np.array([0.5, 0.5, ny + 0.5, ny + 0.5, (ny + 1) / 2]) - 1
        ra, dec = wcs.celestial.all_pix2world(px, py, 0)
    except Exception:  # a broken WCS leaves the position empty, not the table
        return None
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        return None
    r, d = np.radians(ra), np.radians(dec)
    vec = np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)
    centre = vec[4]
    fov = 2 * max(math.degrees(math.acos(min(1.0, float(v @ centre)))) for v in vec[:4])
    corners = " ".join(f"{a % 360.0:.7f} {b:.7f}" for a, b in zip(ra[:4], dec[:4], strict=True))
    return float(ra[4] % 360.0), float(dec[4]), fov, f"Polygon ICRS {corners}"


def _card(header: Any, name: str) -> Any:
    if header is None:
        return None
    value = header.get(name)
    return value.strip() if isinstance(value, str) else value


def visits_table(repo_dir: Path | str) -> pa.Table:
    """The rows of ``ivoa.obsplan`` for the raws of the repository in ``repo_dir``."""
    from skydm.repo import Repository

    rows: dict[str, list[Any]] = {c.name: [] for c in OBSPLAN.columns}
    with Repository.open(repo_dir, create=False) as repo:
        refs = repo.query(dataset_type="raw")
        for ref in sorted(refs, key=lambda r: (r.data_id.instrument, r.data_id.visit, str(r))):
            meta = dict(ref.meta)
            header = _image_header(Path(ref.path)) if Path(ref.path).exists() else None
            place = _footprint(header) if header is not None else None
            mid = meta.get("mjd")
            exptime = meta.get("exptime")
            half = (exptime or 0.0) / 2 / 86400.0
            band = str(ref.data_id.band)
            wl = BAND_WAVELENGTHS.get(band.lower())
            seeing = _card(header, "SEEING")
            did = ref.data_id
            values: dict[str, Any] = {
                "t_planning": _mjd(ref.created),
                "target_name": _card(header, "OBJECT") or _card(header, "FIELD") or "",
                "obs_id": f"{did.instrument}/{did.visit}/{did.detector}/{band}",
                "obs_collection": "skydm raw",
                "s_ra": place[0] if place else None,
                "s_dec": place[1] if place else None,
                "s_fov": place[2] if place else None,
                "s_region": place[3] if place else None,
                "s_resolution": float(seeing) if isinstance(seeing, int | float) else None,
                "t_min": mid - half if mid is not None else None,
                "t_max": mid + half if mid is not None else None,
                "t_exptime": exptime,
                "t_resolution": exptime,
                "em_min": wl[0] if wl else None,
                "em_max": wl[1] if wl else None,
                "em_res_power": (wl[0] + wl[1]) / 2 / (wl[1] - wl[0]) if wl else None,
                "o_ucd": "phot.count",
                "pol_states": None,
                "pol_xel": None,
                "facility_name": _card(header, "TELESCOP") or str(did.instrument),
                "instrument_name": _card(header, "INSTRUME") or str(did.instrument),
                "t_plan_exptime": exptime,
                "category": "Fixed",
                "priority": 0,
                "execution_status": "Performed",
                "tracking_type": "Sidereal",
            }
            for name, value in values.items():
                rows[name].append(value)
    return pa.table(rows, schema=arrow_schema(OBSPLAN))


def sync_visits(repo_dir: Path | str) -> TableInfo | None:
    """Rewrite ``ivoa.obsplan`` in ``<repo>/catalog`` if the repository's raws changed.

    Parameters
    ----------
    repo_dir : Path or str
        The repository.  Without a registry (a catalog-only directory), nothing
        is written and None is returned.

    Returns
    -------
    TableInfo or None
        The table as stored (unchanged tables are not rewritten, so engines
        need not reload them).
    """
    import pyarrow.parquet as pq

    from skydm.errors import UserError

    try:
        table = visits_table(repo_dir)
    except UserError:
        return None  # no repository here: a catalog without raws
    catalog = Path(repo_dir) / "catalog"
    target = catalog / OBSPLAN.qualified
    if (target / META_FILE).exists():
        info = read_table_info(target)
        if info.definition == OBSPLAN:
            names = [c.name for c in OBSPLAN.columns]
            old = pa.concat_tables([pq.read_table(f, columns=names) for f in info.files]).cast(
                arrow_schema(OBSPLAN)
            )
            if old.sort_by("obs_id").equals(table.sort_by("obs_id")):
                return info
    return store_table(catalog, OBSPLAN, table)
