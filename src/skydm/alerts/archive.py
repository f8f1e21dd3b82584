"""The alert archive: one Avro object container file per visit, schema embedded.

The file is written directly from the packets' schemaless bytes (an Avro
container block is a record count, a byte size, the concatenated records and
a sync marker), so archiving costs one write and no re-encoding.  Every
record's byte range in the file is returned, which is what lets the outbox
serve messages straight from the archive.  Files are written atomically and
read back by fastavro's and lsst-alert-packet's own readers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from skydm.alerts.schema import AlertSchema
from skydm.alerts.serialize import zigzag_varint
from skydm.errors import BadFileError, require_extra
from skydm.repo.atomic import atomic_open

_MAGIC = b"Obj\x01"
#: Records per container block: small enough to bound a reader's memory.
_BLOCK_RECORDS = 500


def _strip(node: Any) -> Any:
    """A schema definition without fastavro's bookkeeping keys, as plain JSON."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def schema_json(schema: AlertSchema) -> bytes:
    """The alert schema as Avro JSON, for the container header."""
    return json.dumps(_strip(schema.definition), separators=(",", ":")).encode()


def archive_name(visit: int, detector: int) -> str:
    """File name of one visit/detector's archive."""
    return f"alerts-visit{visit:010d}-det{detector:03d}.avro"


def write_archive(
    path: Path, schema: AlertSchema, packets: Sequence[bytes]
) -> list[tuple[int, int]]:
    """Write schemaless packets as an Avro container file; returns (offset, length) each.

    Parameters
    ----------
    path : Path
        The file to write (atomically: a reader never sees half a file).
    schema : AlertSchema
        The schema the packets were encoded with; embedded in the header.
    packets : sequence of bytes
        Schemaless Avro packets (no wire header).
    """
    sync = os.urandom(16)
    header = bytearray(_MAGIC)
    meta = {b"avro.schema": schema_json(schema), b"avro.codec": b"null"}
    header += zigzag_varint(len(meta))
    for key, value in meta.items():
        header += zigzag_varint(len(key)) + key + zigzag_varint(len(value)) + value
    header += b"\0" + sync
    spans: list[tuple[int, int]] = []
    with atomic_open(Path(path)) as fh:
        fh.write(header)
        pos = len(header)
        for start in range(0, len(packets), _BLOCK_RECORDS):
            block = packets[start : start + _BLOCK_RECORDS]
            size = sum(len(p) for p in block)
            head = zigzag_varint(len(block)) + zigzag_varint(size)
            fh.write(head)
            pos += len(head)
            for p in block:
                spans.append((pos, len(p)))
                pos += len(p)
            fh.write(b"".join(block))
            fh.write(sync)
            pos += len(sync)
    return spans


def read_archive(path: Path) -> Iterator[dict[str, Any]]:
    """Decoded alert packets of an archive file, with the schema it embeds.

    Raises
    ------
    BadFileError
        When the file is not an Avro container file.
    """
    fastavro = require_extra("fastavro", "alerts")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise BadFileError(path, f"cannot open the alert archive: {exc.strerror}") from exc
    with fh:
        try:
            reader = fastavro.reader(fh)
        except ValueError as exc:
            raise BadFileError(path, f"not an Avro alert archive ({exc})") from exc
        yield from reader
