"""Alert packet content: records in the shape of one LSST schema version.

skydm keeps DIA sources, DIA objects and forced sources as plain dicts keyed
by the field names of the latest LSST schema (``ra``, ``dec``,
``midpointMjdTai``, ``psfFlux`` ...).  :func:`build_record` turns such a dict
into a record of any packaged schema version: it renames fields that older
versions called differently (``decl``, ``midPointTai``, ``psFlux``,
``ccdVisitId`` ...), rounds values to the Avro type of each field (so that a
record equals its own round trip), turns non-finite numbers into nulls, and
checks every required field, naming the DIA source and the field at fault.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from skydm.alerts.schema import AlertSchema, FieldSpec
from skydm.errors import UserError

_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)

#: Older schema versions name some fields differently; values are looked up
#: under the latest name.
_RENAMED: dict[str, str] = {
    "decl": "dec",
    "midPointTai": "midpointMjdTai",
    "filterName": "band",
    "psFlux": "psfFlux",
    "psFluxErr": "psfFluxErr",
    "totFlux": "scienceFlux",
    "totFluxErr": "scienceFluxErr",
    "time_processed": "timeProcessedMjdTai",
    "time_withdrawn": "timeWithdrawnMjdTai",
    "validityStart": "validityStartMjdTai",
    "radecTai": "lastDiaSourceMjdTai",
    "radecMjdTai": "lastDiaSourceMjdTai",
    "alertId": "diaSourceId",
}


def ccd_visit_id(values: Mapping[str, Any]) -> int:
    """The ``ccdVisitId`` of schemas before 7.0: visit and detector packed in one long."""
    return int(values["visit"]) * 1024 + int(values["detector"])


#: Required fields that no skydm measurement fills, with the value meaning
#: "not measured" (counts of pixels in fits that were not attempted, empty
#: flag words, the default observing program).
def _zero(_: Mapping[str, Any]) -> int:
    return 0


_COMPUTED: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "ccdVisitId": ccd_visit_id,
    "flags": _zero,
    "programId": _zero,
    "psfNdata": _zero,
    "trailNdata": _zero,
    "dipoleNdata": _zero,
    "bboxSize": _zero,
}


class AlertValidationError(UserError):
    """A DIA source (or its object) cannot make a valid alert packet.

    Parameters
    ----------
    dia_source_id : int or None
        The DIA source at fault.
    field : str
        The field that is missing or bad.
    problem : str
        What is wrong with it.
    """

    def __init__(self, dia_source_id: object, field: str, problem: str) -> None:
        self.dia_source_id = dia_source_id
        self.field = field
        super().__init__(
            f"DIA source {dia_source_id}: field {field!r} {problem}; "
            "this source is left out of the alert stream, the rest of the visit is sent"
        )


def mjd_to_datetime(mjd: float) -> datetime:
    """UTC datetime of an MJD, rounded to the microsecond (Avro ``timestamp-micros``)."""
    return _MJD_EPOCH + timedelta(microseconds=round(mjd * 86400e6))


def _coerce(spec: FieldSpec, value: Any, ident: object) -> Any:
    """``value`` as the Avro type of ``spec`` would decode it, or ``None``."""
    base = spec.base
    if base in ("float", "double", "timestamp-micros"):
        v = float(value)
        if not math.isfinite(v):
            return None
        if base == "float":
            # Round to float32 now so that the record equals its own round trip.
            try:
                return float(_FLOAT32.unpack(_FLOAT32.pack(v))[0])
            except OverflowError:
                return None
        if base == "timestamp-micros":
            return mjd_to_datetime(v)
        return v
    if base in ("long", "int"):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        v = int(value)
        limit = 2**31 if base == "int" else 2**63
        if not -limit <= v < limit:
            raise AlertValidationError(ident, spec.name, f"= {v} does not fit an Avro {base}")
        return v
    if base == "boolean":
        return bool(value)
    if base == "string":
        return str(value)
    if base == "bytes":
        return bytes(value)
    raise AlertValidationError(ident, spec.name, f"has unsupported Avro type {base}")


def _is_missing(value: Any) -> bool:
    if value is None or value is np.ma.masked:
        return True
    return isinstance(value, float) and math.isnan(value)


def _plan(schema: AlertSchema, kind: str) -> list[tuple[FieldSpec, str | None]]:
    key = (schema.version, kind)
    if key not in _PLANS:
        _PLANS[key] = [(spec, _RENAMED.get(spec.name)) for spec in schema.records[kind]]
    return _PLANS[key]


_PLANS: dict[tuple[str, str], list[tuple[FieldSpec, str | None]]] = {}
_FLOAT32 = struct.Struct("<f")


def build_record(
    kind: str, values: Mapping[str, Any], schema: AlertSchema, *, ident: object = None
) -> dict[str, Any]:
    """A record of type ``kind`` in ``schema`` from values keyed by latest-schema names.

    Parameters
    ----------
    kind : str
        ``diaSource``, ``diaObject`` or ``diaForcedSource``.
    values : mapping
        Field values; absent keys, ``None`` and NaN mean "not measured".
    schema : AlertSchema
        The target schema version.
    ident : object, optional
        The DIA source the record belongs to, for error messages.

    Raises
    ------
    AlertValidationError
        When a required field is missing or not finite (NaN coordinates,
        for instance).
    """
    out: dict[str, Any] = {}
    get = values.get
    for spec, alias in _plan(schema, kind):
        name = spec.name
        value = get(name)
        if value is None and alias is not None:
            value = get(alias)
        base = spec.base
        # The common cases inline: this runs for every field of every packet.
        if value is not None and base == "float" and type(value) is float:
            if value - value == 0.0:  # finite
                try:
                    out[name] = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
                    continue
                except OverflowError:
                    pass
            value = None
        if _is_missing(value):
            if spec.nullable:
                out[name] = None
                continue
            if name in _COMPUTED and (name != "ccdVisitId" or "visit" in values):
                value = _COMPUTED[name](values)
            else:
                raise AlertValidationError(ident, name, "is required by the schema but missing")
        coerced = _coerce(spec, value, ident)
        if coerced is None and not spec.nullable:
            raise AlertValidationError(ident, name, f"is required but not finite ({value!r})")
        out[name] = coerced
    return out


def check_source_values(values: Mapping[str, Any]) -> None:
    """Sanity checks on one DIA source beyond its schema: coordinates on the sky.

    Raises
    ------
    AlertValidationError
        Naming the source and the field, when ``ra``/``dec`` are missing, not
        finite or out of range.
    """
    ident = values.get("diaSourceId")
    for name, lo, hi in (("ra", 0.0, 360.0), ("dec", -90.0, 90.0)):
        v = values.get(name)
        if _is_missing(v):
            raise AlertValidationError(ident, name, "is missing or NaN")
        f = float(v)  # type: ignore[arg-type]
        if not (math.isfinite(f) and lo <= f <= hi):
            raise AlertValidationError(ident, name, f"= {v!r} is outside [{lo}, {hi}]")


def alert_record(
    schema: AlertSchema,
    *,
    dia_source: dict[str, Any],
    prv_dia_sources: list[dict[str, Any]] | None,
    prv_forced_sources: list[dict[str, Any]] | None,
    dia_object: dict[str, Any] | None,
    cutouts: Mapping[str, bytes | None],
    dia_source_id: int | None = None,
) -> dict[str, Any]:
    """The full alert packet as a dict (records already in ``schema``'s shape).

    Parameters
    ----------
    cutouts : mapping
        ``difference``/``science``/``template`` -> FITS bytes or ``None``.
    dia_source_id : int, optional
        Needed when ``dia_source`` is given as encoded bytes.
    """
    if dia_source_id is None:
        dia_source_id = int(dia_source["diaSourceId"])
    values: dict[str, Any] = {
        "diaSourceId": dia_source_id,
        "alertId": dia_source_id,
        "diaSource": dia_source,
        "prvDiaSources": prv_dia_sources,
        "prvDiaForcedSources": prv_forced_sources,
        "diaObject": dia_object,
        "cutoutDifference": cutouts.get("difference"),
        "cutoutScience": cutouts.get("science"),
        "cutoutTemplate": cutouts.get("template"),
    }
    return {f["name"]: values.get(f["name"]) for f in schema.alert_fields()}
