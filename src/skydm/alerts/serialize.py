"""Avro encoding of alert packets, fast, and the Confluent wire format.

Most of a packet's bytes are the previous DIA sources and forced sources of
its object, and their records never change once written.  Avro's binary
encoding of a record is the concatenation of its fields' encodings, and an
array is a block count, the items, and a zero; so a packet is assembled here
from byte pieces: each previous record is encoded once (the APDB keeps the
bytes), and only the new DIA source, the updated DIA object and the cutouts
are encoded per packet.  The result is byte-for-byte what fastavro's
``schemaless_writer`` makes for the same packet, which the tests check with
lsst-alert-packet's own deserializer.

Wire format (what Rubin's alert stream sends): magic byte ``0``, the schema
id as a big-endian 4-byte integer (``major * 100 + minor``), then the
schemaless Avro packet.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from skydm.alerts.schema import AlertSchema, FieldSpec, load_schema
from skydm.ap.history import EncodedArray
from skydm.errors import BadValueError, require_extra

_HEADER = struct.Struct(">bI")
WIRE_HEADER_SIZE = _HEADER.size


def zigzag_varint(n: int) -> bytes:
    """Avro's encoding of a ``long``/``int``: zig-zag then base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


class Encoded(bytes):
    """Bytes that are already the Avro encoding of one record."""

    __slots__ = ()


_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _compile_record(specs: tuple[FieldSpec, ...]) -> list[tuple[str, bool, bytes, bytes, str]]:
    """Per field: name, nullable, null bytes, non-null union prefix, base type."""
    out = []
    for f in specs:
        if f.nullable:
            null, some = (b"\x00", b"\x02") if f.null_first else (b"\x02", b"\x00")
        else:
            null, some = b"", b""
        out.append((f.name, f.nullable, null, some, f.base))
    return out


def _encode_flat(
    plan: list[tuple[str, bool, bytes, bytes, str]], record: Mapping[str, Any]
) -> bytes:
    """Avro binary of a record of primitive fields (what fastavro writes, faster)."""
    parts: list[bytes] = []
    append = parts.append
    for name, nullable, null, some, base in plan:
        v = record[name]
        if v is None:
            if not nullable:
                raise ValueError(f"field {name!r} is required but None")
            append(null)
            continue
        if some:
            append(some)
        if base == "float":
            append(_FLOAT.pack(v))
        elif base == "double":
            append(_DOUBLE.pack(v))
        elif base == "long" or base == "int":
            append(zigzag_varint(v))
        elif base == "boolean":
            append(b"\x01" if v else b"\x00")
        elif base == "string":
            data = v.encode()
            append(zigzag_varint(len(data)))
            append(data)
        elif base == "timestamp-micros":
            delta = v - _EPOCH
            us = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
            append(zigzag_varint(us))
        else:  # bytes
            append(zigzag_varint(len(v)))
            append(v)
    return b"".join(parts)


class PacketEncoder:
    """Encode alert packets of one schema version, assembling cached pieces.

    Parameters
    ----------
    schema : AlertSchema
        The schema version to write.
    """

    def __init__(self, schema: AlertSchema) -> None:
        self.schema = schema
        self._fastavro = require_extra("fastavro", "alerts")
        self._plan: list[tuple[str, str, int]] = []
        for field in schema.alert_fields():
            self._plan.append(self._field_plan(field))
        self.header = _HEADER.pack(0, schema.schema_id)
        self._flat = {k: _compile_record(v) for k, v in schema.records.items()}

    def _field_plan(self, field: dict[str, Any]) -> tuple[str, str, int]:
        """``(name, how, index of the non-null union branch)`` for one alert field."""
        name, t = field["name"], field["type"]
        prefix = f"lsst.v{self.schema.major}_{self.schema.minor}."
        if isinstance(t, str) and t in ("long", "int"):
            return name, "long", 0
        if (isinstance(t, dict) and t.get("type") == "record") or t == prefix + "diaSource":
            return name, "record", 0
        if isinstance(t, list) and len(t) == 2 and "null" in t:
            branch = t[1] if t[0] == "null" else t[0]
            index = t.index(branch)
            if isinstance(branch, dict) and branch.get("type") == "array":
                return name, "array", index
            if branch in ("bytes", "string"):
                return name, branch, index
            return name, "optrecord", index
        raise BadValueError(f"alert field {name}", t, "a type skydm knows how to encode")

    def encode_record(self, kind: str, record: Mapping[str, Any]) -> Encoded:
        """The Avro encoding of one diaSource/diaObject/diaForcedSource record.

        ``record`` must be as :func:`skydm.alerts.packet.build_record` makes
        it (every field present, values of the field's Avro type).
        """
        return Encoded(_encode_flat(self._flat[kind], record))

    def encode_record_fastavro(self, kind: str, record: Mapping[str, Any]) -> Encoded:
        """The same encoding made by fastavro (the reference the tests compare with)."""
        buf = io.BytesIO()
        self._fastavro.schemaless_writer(buf, self.schema.record_schemas[kind], record)
        return Encoded(buf.getvalue())

    def _piece(self, kind: str, value: Any) -> bytes:
        return value if isinstance(value, Encoded) else self.encode_record(kind, value)

    def encode(self, packet: Mapping[str, Any], *, wire: bool = False) -> bytes:
        """Schemaless Avro bytes of one packet.

        ``packet`` is a dict as made by :func:`skydm.alerts.packet.alert_record`;
        any record in it (the diaSource, the diaObject, items of the previous
        source arrays) may be given as :class:`Encoded` bytes instead of a
        dict (an array's items are either all bytes or all dicts), and an
        array may be given as one :class:`~skydm.ap.history.EncodedArray`.
        Fields that are not records (ssSource, mpc_orbits...) must be ``None``.
        With ``wire``, the result starts with the Confluent wire header (one
        copy of the packet's bytes either way).
        """
        parts: list[bytes] = [self.header] if wire else []
        append = parts.append
        for name, how, index in self._plan:
            value = packet.get(name)
            if how == "long":
                append(zigzag_varint(int(value)))  # type: ignore[arg-type]
            elif how == "record":
                append(self._piece("diaSource", value))
            elif value is None:
                append(zigzag_varint(1 - index))
            elif how == "array":
                append(zigzag_varint(index))
                kind = "diaForcedSource" if "Forced" in name else "diaSource"
                if isinstance(value, EncodedArray):
                    # A stored history window: already the items' bytes.
                    if value.count:
                        append(zigzag_varint(value.count))
                        parts.extend(value.pieces)
                elif value:
                    append(zigzag_varint(len(value)))
                    if isinstance(value[0], bytes):
                        # Stored encodings: the common case, one join.
                        append(b"".join(value))
                    else:
                        parts.extend(self._piece(kind, v) for v in value)
                append(b"\0")
            elif how in ("bytes", "string"):
                data = value.encode() if isinstance(value, str) else value
                append(zigzag_varint(index))
                append(zigzag_varint(len(data)))
                append(data)
            elif name == "diaObject":
                append(zigzag_varint(index))
                append(self._piece("diaObject", value))
            else:
                raise BadValueError(name, type(value).__name__, "None: skydm does not fill it")
        return b"".join(parts)

    def to_wire(self, packet: Mapping[str, Any]) -> bytes:
        """The Confluent wire-format message of one packet."""
        return self.encode(packet, wire=True)


def wire_header(schema_id: int) -> bytes:
    """Magic byte and big-endian schema id."""
    return _HEADER.pack(0, schema_id)


def parse_wire(message: bytes) -> tuple[int, bytes]:
    """Split a Confluent wire-format message into ``(schema_id, avro_bytes)``.

    Raises
    ------
    BadValueError
        When the message does not start with the magic byte 0.
    """
    if len(message) < WIRE_HEADER_SIZE or message[0] != 0:
        raise BadValueError(
            "message", message[:8], "a Confluent wire-format message (magic byte 0 + schema id)"
        )
    _magic, schema_id = _HEADER.unpack_from(message)
    return int(schema_id), bytes(message[WIRE_HEADER_SIZE:])


def schema_for_id(schema_id: int) -> AlertSchema:
    """The packaged schema whose Confluent id is ``schema_id`` (``major*100+minor``)."""
    return load_schema(f"{schema_id // 100}.{schema_id % 100}")


def decode(message: bytes) -> dict[str, Any]:
    """Decode a wire-format message with lsst-alert-packet's deserializer."""
    schema_id, body = parse_wire(message)
    return dict(schema_for_id(schema_id).lsst_schema().deserialize(body))


def decode_many(messages: Sequence[bytes]) -> list[dict[str, Any]]:
    """Decode several wire-format messages."""
    return [decode(m) for m in messages]
