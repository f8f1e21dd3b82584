"""Association of a visit's DIA sources with DIA objects, and object summaries.

Each DIA source goes to the nearest DIA object within the match radius
(nearest neighbours with a KD-tree on unit vectors, so distances are right at
any declination and across RA = 0); each object takes at most one source per
visit, the closest, and a source left without an object starts a new one.
Object summaries are running sums (see :mod:`skydm.ap.apdb`), so an update
needs only the object row and the new measurements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from skydm.ap.apdb import _BAND_SUMS, BANDS
from skydm.errors import BadValueError

#: Bits of a 64-bit id: (visit * 1024 + detector) << 20 | index.
_INDEX_BITS = 20
_MAX_VISIT = (2**63 >> _INDEX_BITS) // 1024


def make_id(visit: int, detector: int, index: int) -> int:
    """A deterministic 64-bit id for the ``index``-th source of (visit, detector).

    Raises
    ------
    BadValueError
        When visit, detector or index do not fit the packing.
    """
    if not 0 <= detector < 1024:
        raise BadValueError("detector", detector, "an integer in [0, 1023]")
    if not 0 <= visit < _MAX_VISIT:
        raise BadValueError("visit", visit, f"an integer in [0, {_MAX_VISIT})")
    if not 0 <= index < 2**_INDEX_BITS:
        raise BadValueError("source index", index, f"fewer than {2**_INDEX_BITS} per detector")
    return ((visit * 1024 + detector) << _INDEX_BITS) | index


def unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """(N, 3) unit vectors of positions in degrees."""
    r, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    cd = np.cos(d)
    return np.column_stack([cd * np.cos(r), cd * np.sin(r), np.sin(d)])


def radec_of(v: np.ndarray) -> tuple[float, float]:
    """RA, Dec in degrees of a (not necessarily unit) vector."""
    x, y, z = (float(c) for c in v)
    ra = math.degrees(math.atan2(y, x)) % 360.0
    dec = math.degrees(math.atan2(z, math.hypot(x, y)))
    return ra, dec


@dataclass
class Match:
    """Result of associating one visit.

    Attributes
    ----------
    object_ids : list of int or None
        Per source, the matched existing object id, or ``None`` (new object).
    distances_arcsec : list of float
        Per source, distance to the matched object (NaN for new objects).
    """

    object_ids: list[int | None]
    distances_arcsec: list[float]


def associate(
    ra: np.ndarray,
    dec: np.ndarray,
    objects: Sequence[dict[str, Any]],
    *,
    radius_arcsec: float = 1.0,
) -> Match:
    """Match sources to objects one-to-one, closest pairs first.

    Parameters
    ----------
    ra, dec : numpy.ndarray
        Source positions in degrees.
    objects : sequence of dict
        Candidate DIA objects (rows with ``diaObjectId``, ``ra``, ``dec``).
    radius_arcsec : float
        Match radius.
    """
    if not radius_arcsec > 0:
        raise BadValueError("radius_arcsec", radius_arcsec, "a positive radius in arcseconds")
    n = len(ra)
    ids: list[int | None] = [None] * n
    dist = [math.nan] * n
    if n == 0 or not objects:
        return Match(ids, dist)
    ovec = unit_vectors(np.array([o["ra"] for o in objects]), np.array([o["dec"] for o in objects]))
    svec = unit_vectors(ra, dec)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    tree = cKDTree(ovec)
    # A few neighbours each, so that a source that loses its nearest object
    # to a closer source can still take its second-nearest.
    k = min(4, len(objects))
    d, j = tree.query(svec, k=k, distance_upper_bound=chord)
    d, j = np.atleast_2d(d).reshape(n, k), np.atleast_2d(j).reshape(n, k)
    pairs = [(d[s, m], s, int(j[s, m])) for s in range(n) for m in range(k) if np.isfinite(d[s, m])]
    pairs.sort()
    taken: set[int] = set()
    for dd, s, o in pairs:
        if ids[s] is not None or o in taken:
            continue
        ids[s] = int(objects[o]["diaObjectId"])
        taken.add(o)
        dist[s] = math.degrees(2.0 * math.asin(min(dd / 2.0, 1.0))) * 3600.0
    return Match(ids, dist)


def new_object(source: dict[str, Any]) -> dict[str, Any]:
    """An empty DIA object at a source's position (its id is the source's id)."""
    obj: dict[str, Any] = {
        "diaObjectId": int(source["diaSourceId"]),
        "ra": float(source["ra"]),
        "dec": float(source["dec"]),
        "sumX": 0.0,
        "sumY": 0.0,
        "sumZ": 0.0,
        "validityStartMjdTai": float(source["midpointMjdTai"]),
        "firstDiaSourceMjdTai": None,
        "lastDiaSourceMjdTai": None,
        "nDiaSources": 0,
    }
    for b in BANDS:
        for s in _BAND_SUMS:
            obj[f"{b}_{s}"] = None
    return obj


def _add(obj: dict[str, Any], key: str, value: float) -> None:
    obj[key] = (obj.get(key) or 0.0) + value


def add_source(obj: dict[str, Any], src: dict[str, Any]) -> None:
    """Update an object's running sums with one new DIA source (in place)."""
    v = unit_vectors(np.array([src["ra"]]), np.array([src["dec"]]))[0]
    obj["sumX"] += float(v[0])
    obj["sumY"] += float(v[1])
    obj["sumZ"] += float(v[2])
    obj["ra"], obj["dec"] = radec_of(np.array([obj["sumX"], obj["sumY"], obj["sumZ"]]))
    mjd = float(src["midpointMjdTai"])
    obj["nDiaSources"] = int(obj["nDiaSources"]) + 1
    first = obj.get("firstDiaSourceMjdTai")
    obj["firstDiaSourceMjdTai"] = mjd if first is None else min(first, mjd)
    last = obj.get("lastDiaSourceMjdTai")
    obj["lastDiaSourceMjdTai"] = mjd if last is None else max(last, mjd)
    band = src.get("band")
    flux, err = src.get("psfFlux"), src.get("psfFluxErr")
    if band not in BANDS or flux is None or not math.isfinite(flux):
        return
    p = f"{band}_"
    _add(obj, p + "n", 1.0)
    _add(obj, p + "sf", flux)
    _add(obj, p + "sf2", flux * flux)
    obj[p + "min"] = flux if obj.get(p + "min") is None else min(obj[p + "min"], flux)
    obj[p + "max"] = flux if obj.get(p + "max") is None else max(obj[p + "max"], flux)
    if err is not None and math.isfinite(err) and err > 0:
        _add(obj, p + "sw", 1.0 / err**2)
        _add(obj, p + "swf", flux / err**2)
        _add(obj, p + "serr", err)
    last_mjd = obj.get(p + "lastMjd")
    if last_mjd is not None and mjd != last_mjd:
        slope = abs(flux - obj[p + "lastFlux"]) / abs(mjd - last_mjd)
        obj[p + "maxSlope"] = max(obj.get(p + "maxSlope") or 0.0, slope)
    if last_mjd is None or mjd >= last_mjd:
        obj[p + "lastFlux"], obj[p + "lastMjd"] = flux, mjd


def add_forced(obj: dict[str, Any], fs: dict[str, Any]) -> None:
    """Update an object's forced-photometry sums with one forced source (in place)."""
    band = fs.get("band")
    if band not in BANDS:
        return
    for flux_key, err_key, pre in (
        ("psfFlux", "psfFluxErr", "fp"),
        ("scienceFlux", "scienceFluxErr", "sci"),
    ):
        f, e = fs.get(flux_key), fs.get(err_key)
        if f is None or e is None or not (math.isfinite(f) and math.isfinite(e) and e > 0):
            continue
        _add(obj, f"{band}_{pre}N", 1.0)
        _add(obj, f"{band}_{pre}Sw", 1.0 / e**2)
        _add(obj, f"{band}_{pre}Swf", f / e**2)


def object_summary(obj: dict[str, Any]) -> dict[str, Any]:
    """The summary fields of the LSST ``diaObject`` record from an object row."""
    out: dict[str, Any] = {
        k: obj[k]
        for k in (
            "diaObjectId",
            "ra",
            "dec",
            "validityStartMjdTai",
            "firstDiaSourceMjdTai",
            "lastDiaSourceMjdTai",
            "nDiaSources",
        )
    }
    for b in BANDS:
        p = f"{b}_"
        n = int(obj.get(p + "n") or 0)
        out[p + "psfFluxNdata"] = n
        sw = obj.get(p + "sw") or 0.0
        if n > 0:
            sf, sf2 = obj[p + "sf"], obj[p + "sf2"]
            out[p + "psfFluxMin"], out[p + "psfFluxMax"] = obj[p + "min"], obj[p + "max"]
            if sw > 0:
                out[p + "psfFluxMean"] = obj[p + "swf"] / sw
                out[p + "psfFluxMeanErr"] = 1.0 / math.sqrt(sw)
                out[p + "psfFluxErrMean"] = obj[p + "serr"] / n
            else:
                out[p + "psfFluxMean"] = sf / n
            if n > 1:
                var = max(sf2 - sf * sf / n, 0.0) / (n - 1)
                out[p + "psfFluxSigma"] = math.sqrt(var)
            if obj.get(p + "maxSlope") is not None:
                out[p + "psfFluxMaxSlope"] = obj[p + "maxSlope"]
        for pre, name in (("fp", "fpFlux"), ("sci", "scienceFlux")):
            fsw = obj.get(f"{p}{pre}Sw") or 0.0
            if fsw > 0:
                out[f"{p}{name}Mean"] = obj[f"{p}{pre}Swf"] / fsw
                out[f"{p}{name}MeanErr"] = 1.0 / math.sqrt(fsw)
    return out
