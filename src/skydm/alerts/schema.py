"""The official LSST alert schemas, as shipped by the ``lsst-alert-packet`` package.

The schemas are never copied into skydm: every version packaged under
``lsst/alert/packet/schema/<major>/<minor>/`` is loaded from there, so the
version Rubin publishes is the version skydm writes.  This module describes a
loaded schema in the terms the packet builder and the encoder need: the
fields of each record type (diaSource, diaObject, diaForcedSource), which of
them are required, and the Avro type of each.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Any

from skydm.errors import BadValueError, require_extra

#: Record kinds skydm fills; other record types of the alert (ssSource,
#: mpc_orbits, ssObject) are left null because skydm has no solar-system
#: pipeline.
RECORD_KINDS = ("diaSource", "diaObject", "diaForcedSource")


@dataclass(frozen=True)
class FieldSpec:
    """One field of an Avro record.

    Attributes
    ----------
    name : str
        The field name.
    base : str
        The non-null Avro type: ``long``, ``int``, ``float``, ``double``,
        ``boolean``, ``string``, ``bytes`` or ``timestamp-micros``.
    nullable : bool
        Whether ``null`` is allowed.
    null_first : bool
        Whether ``null`` is the first branch of the union (its index is 0).
    """

    name: str
    base: str
    nullable: bool
    null_first: bool = True


@dataclass(frozen=True)
class AlertSchema:
    """One version of the LSST alert schema.

    Attributes
    ----------
    major, minor : int
        The schema version.
    definition : dict
        The parsed definition of the top-level ``alert`` record, as
        ``lsst.alert.packet.Schema`` holds it.
    records : dict
        ``kind -> tuple of FieldSpec`` for ``diaSource``, ``diaObject`` and
        ``diaForcedSource``.
    record_schemas : dict
        ``kind -> standalone Avro schema`` of each record type, for encoding
        one record at a time.
    """

    major: int
    minor: int
    definition: dict[str, Any]
    records: dict[str, tuple[FieldSpec, ...]]
    record_schemas: dict[str, dict[str, Any]]

    @property
    def version(self) -> str:
        """``"MAJOR.MINOR"``."""
        return f"{self.major}.{self.minor}"

    @property
    def schema_id(self) -> int:
        """The Confluent schema registry id Rubin uses: ``major * 100 + minor``."""
        return self.major * 100 + self.minor

    @property
    def default_topic(self) -> str:
        """The topic alerts of this major version go to, ``lsst-alerts-v<major>``."""
        return f"lsst-alerts-v{self.major}"

    def lsst_schema(self) -> Any:
        """The ``lsst.alert.packet.Schema`` of this version (its own validator/deserializer)."""
        return _lsst_schema(self.major, self.minor)

    def alert_fields(self) -> list[dict[str, Any]]:
        """The fields of the top-level alert record, in wire order."""
        return list(self.definition["fields"])

    def field_names(self, kind: str) -> list[str]:
        """Names of the fields of record ``kind``."""
        return [f.name for f in self.records[kind]]


def _schema_root() -> str:
    packet = require_extra("lsst.alert.packet", "alerts")
    return str(packet.get_schema_root())


def available_versions() -> list[str]:
    """Every alert schema version packaged with lsst-alert-packet, oldest first."""
    root = _schema_root()
    found: list[tuple[int, int]] = []
    for major in os.listdir(root):
        if not major.isdigit():
            continue
        for minor in os.listdir(os.path.join(root, major)):
            name = f"lsst.v{major}_{minor}.alert.avsc"
            if minor.isdigit() and os.path.exists(os.path.join(root, major, minor, name)):
                found.append((int(major), int(minor)))
    return [f"{a}.{b}" for a, b in sorted(found)]


def latest_version() -> str:
    """The version lsst-alert-packet calls latest (its ``latest.txt``)."""
    packet = require_extra("lsst.alert.packet", "alerts")
    major, minor = packet.get_latest_schema_version()
    return f"{major}.{minor}"


@functools.cache
def _lsst_schema(major: int, minor: int) -> Any:
    packet = require_extra("lsst.alert.packet", "alerts")
    path = os.path.join(packet.get_schema_path(major, minor), f"lsst.v{major}_{minor}.alert.avsc")
    return packet.Schema.from_file(path)


def _field_spec(field: dict[str, Any]) -> FieldSpec:
    t = field["type"]
    nullable, null_first = False, True
    if isinstance(t, list):
        branches = [b for b in t if b != "null"]
        nullable = len(branches) < len(t)
        null_first = t[0] == "null"
        if len(branches) != 1:
            raise ValueError(f"unsupported union {t!r} in field {field['name']}")
        t = branches[0]
    base = (t.get("logicalType") or t["type"]) if isinstance(t, dict) else t
    return FieldSpec(field["name"], str(base), nullable, null_first)


def _standalone(definition: dict[str, Any]) -> dict[str, Any]:
    """A record definition with fastavro's bookkeeping keys removed."""
    return {k: v for k, v in definition.items() if not k.startswith("__")}


@functools.cache
def load_schema(version: str | None = None) -> AlertSchema:
    """Load one packaged LSST alert schema version.

    Parameters
    ----------
    version : str, optional
        ``"MAJOR.MINOR"`` (e.g. ``"11.1"``); the latest packaged version when
        omitted.

    Raises
    ------
    BadValueError
        When the version is not packaged with the installed lsst-alert-packet.
    """
    fastavro = require_extra("fastavro", "alerts")
    version = version or latest_version()
    match = re.fullmatch(r"(\d+)\.(\d+)", version.strip())
    known = available_versions()
    if match is None or f"{int(match[1])}.{int(match[2])}" not in known:
        raise BadValueError(
            "schema version", version, f"one of the packaged versions {', '.join(known)}"
        )
    major, minor = int(match[1]), int(match[2])
    definition = _lsst_schema(major, minor).definition
    named = definition.get("__named_schemas", {})
    records: dict[str, tuple[FieldSpec, ...]] = {}
    record_schemas: dict[str, dict[str, Any]] = {}
    for kind in RECORD_KINDS:
        full = f"lsst.v{major}_{minor}.{kind}"
        if full not in named:
            raise BadValueError("schema version", version, f"a schema with a {kind} record")
        rec = _standalone(named[full])
        records[kind] = tuple(_field_spec(f) for f in rec["fields"])
        record_schemas[kind] = fastavro.parse_schema(rec)
    return AlertSchema(major, minor, definition, records, record_schemas)
