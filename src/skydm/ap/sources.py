"""From a differencing run's DIA source table to DIA source records.

``skydm.diffim`` writes an astropy Table with ``x``, ``y`` (0-based pixels),
``ra``, ``dec``, ``snr`` (signed), ``flux``/``flux_err`` (aperture),
``psf_flux``/``psf_flux_err``, ``flagged`` and per-flag columns
``flag_dipole``, ``flag_edge``, ``flag_sat``, ``flag_cr``, ``flag_bad``;
:func:`skydm.diffim.measure.measure_dia_sources` adds columns already named
as LSST ``diaSource`` fields (``apFlux``, ``dipole*``, ``trail*``,
``pixelFlags_*`` ...), which take precedence over the detection columns
mapped to the same field.  :func:`dia_sources_from_table` turns each row into
a dict keyed by LSST ``diaSource`` field names, with a deterministic 64-bit
``diaSourceId``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from astropy.table import Table

from skydm.ap.association import make_id
from skydm.diffim import _measure_fits
from skydm.diffim.measure import FLUX_COLUMNS, MEASURED_COLUMNS
from skydm.errors import BadValueError
from skydm.image import VisitInfo

#: DIA-table column -> LSST diaSource field.
_COLUMNS = {
    "x": "x",
    "y": "y",
    "x_err": "xErr",
    "y_err": "yErr",
    "ra": "ra",
    "dec": "dec",
    "ra_err": "raErr",
    "dec_err": "decErr",
    "snr": "snr",
    "flux": "apFlux",
    "flux_err": "apFluxErr",
    "psf_flux": "psfFlux",
    "psf_flux_err": "psfFluxErr",
    "science_flux": "scienceFlux",
    "science_flux_err": "scienceFluxErr",
    "template_flux": "templateFlux",
    "template_flux_err": "templateFluxErr",
    "reliability": "reliability",
    "reliability_version": "reliabilityVersion",
    "flagged": "pixelFlags",
    "flag_dipole": "isDipole",
    "flag_edge": "pixelFlags_edge",
    "flag_sat": "pixelFlags_saturated",
    "flag_cr": "pixelFlags_cr",
    "flag_bad": "pixelFlags_bad",
    "bbox_size": "bboxSize",
    "psf_ndata": "psfNdata",
}

#: Columns named as the diaSource field they fill, passed through unchanged.
_PASSTHROUGH = MEASURED_COLUMNS | {"reliability", "reliabilityVersion"}

#: diaSource fields in flux units (nJy in the LSST schema).
FLUX_FIELDS = frozenset(
    {f for f in _COLUMNS.values() if f.endswith("Flux") or f.endswith("FluxErr")}
    | set(FLUX_COLUMNS)
)

#: diaSource fields that skydm leaves null, with the reason (listed in
#: docs/alerts.md; a test checks that every other field the schema describes
#: is filled wherever the data allow).
NULL_FIELDS: dict[str, str] = {
    "ssObjectId": "skydm has no solar-system pipeline: no DIA source is attributed to an ssObject",
    "parentDiaSourceId": "DIA sources are not deblended, so none has a parent",
    "timeWithdrawnMjdTai": "set only when a record is withdrawn, which skydm never does",
    "trailAlgorithm": (
        "the schema's codes (1 = SDSSShape, 2 = HSMShape) name moment algorithms; "
        "skydm's trail fit is the Vereš et al. (2012) model, which has no code"
    ),
    "glint_trail": "skydm does not detect glint trails (chains of sources along a line)",
    "reliability": "filled by the real/bogus classifier (issue 13 item 6) when it is run",
    "reliabilityVersion": "filled by the real/bogus classifier together with reliability",
}

#: diaSource fields filled only where a fit ran and converged (their rules
#: are in skydm.diffim.measure): dipole fields on sources with both signs,
#: trail fields on elongated ones.  One list, kept with the fits.
DIPOLE_FIELDS = _measure_fits.DIPOLE_FIELDS
TRAIL_FIELDS = _measure_fits.TRAIL_FIELDS

#: Columns a DIA table must have at all (a row may still hold NaN in them).
REQUIRED_COLUMNS = ("x", "y", "ra", "dec")


def now_mjd() -> float:
    """The current time as an MJD (UTC; TAI differs by 37 s, below what alerts resolve)."""
    return time.time() / 86400.0 + 40587.0


def _value(v: Any) -> Any:
    if v is np.ma.masked:
        return None
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        f = float(v)
        return None if math.isnan(f) else f
    return v


def dia_sources_from_table(
    table: Table,
    visit_info: VisitInfo,
    *,
    detector: int | None = None,
    time_processed: float | None = None,
    first_index: int = 0,
    flux_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """DIA source dicts (LSST ``diaSource`` field names) from a DIA table.

    Parameters
    ----------
    table : astropy.table.Table
        The DIA source table of one visit and detector.
    visit_info : VisitInfo
        The visit's metadata (visit, detector, band, mjd, exptime).
    detector : int, optional
        Overrides ``visit_info.detector``.
    time_processed : float, optional
        MJD of processing; now by default.
    first_index : int
        Index of the first row in the id packing (for tables split in parts).
    flux_scale : float
        nJy per unit of the table's fluxes (LSST fluxes are in nJy; a
        differencing table is in the image's counts: give
        ``difference.nanojansky_per_count(...)``).

    Returns
    -------
    list of dict
        One dict per row; rows are not checked here (that happens per source
        when packets are built, so that one bad row does not stop a visit).
        A ``dia_source_id`` column, when present, gives the ids.

    Raises
    ------
    BadValueError
        When the table lacks one of the columns ``x``, ``y``, ``ra``, ``dec``.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.colnames]
    if missing:
        raise BadValueError(
            "DIA source table columns",
            table.colnames,
            f"a table with columns {', '.join(REQUIRED_COLUMNS)} (missing: {', '.join(missing)})",
        )
    det = int(visit_info.detector if detector is None else detector)
    visit = int(visit_info.visit)
    processed = now_mjd() if time_processed is None else float(time_processed)
    named = [c for c in table.colnames if c in _PASSTHROUGH]
    present = [(c, f) for c, f in _COLUMNS.items() if c in table.colnames and f not in named]
    present += [(c, c) for c in named]
    columns = {
        c: table[c].tolist() if not hasattr(table[c], "mask") else list(table[c])
        for c, _ in present
    }
    ids = list(table["dia_source_id"]) if "dia_source_id" in table.colnames else None
    common: dict[str, Any] = {
        "visit": visit,
        "detector": det,
        "band": visit_info.band if visit_info.band != "unknown" else None,
        "midpointMjdTai": visit_info.mjd if math.isfinite(visit_info.mjd) else None,
        "exposureTime": visit_info.exptime if math.isfinite(visit_info.exptime) else None,
        "timeProcessedMjdTai": processed,
    }
    out: list[dict[str, Any]] = []
    for i in range(len(table)):
        src = dict(common)
        src["diaSourceId"] = (
            int(ids[i]) if ids is not None else make_id(visit, det, first_index + i)
        )
        for col, field in present:
            src[field] = _value(columns[col][i])
            if field in FLUX_FIELDS and src[field] is not None:
                src[field] *= flux_scale
        snr = src.get("snr")
        flux = src.get("psfFlux")
        ref = flux if flux is not None else snr
        if ref is not None:
            src["isNegative"] = bool(ref < 0)
        out.append(src)
    return out
