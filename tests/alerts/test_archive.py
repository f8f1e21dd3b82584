"""The archive writer (blocks written in a thread) and the outbox serving from memory."""

from __future__ import annotations

import os
from pathlib import Path

import fastavro
import pytest
from lsst.alert.packet import retrieve_alerts

from skydm.alerts.archive import ArchiveWriter, read_archive
from skydm.alerts.outbox import Outbox
from skydm.alerts.packet import alert_record, build_record
from skydm.alerts.schema import load_schema
from skydm.alerts.serialize import WIRE_HEADER_SIZE, PacketEncoder
from skydm.errors import BadFileError

SCHEMA = load_schema()
ENC = PacketEncoder(SCHEMA)


def _packet(i: int) -> dict:
    src = {
        "diaSourceId": 1000 + i,
        "visit": 3,
        "detector": 0,
        "diaObjectId": 50 + i,
        "midpointMjdTai": 60000.5,
        "ra": 10.0 + i * 1e-4,
        "dec": -5.0,
        "x": 10.0,
        "y": 20.0,
        "psfFlux": 100.0 * i,
        "band": "r",
        "timeProcessedMjdTai": 60000.6,
    }
    return alert_record(
        SCHEMA,
        dia_source=build_record("diaSource", src, SCHEMA),
        prv_dia_sources=[build_record("diaSource", {**src, "diaSourceId": i}, SCHEMA)] * (i % 3),
        prv_forced_sources=[],
        dia_object=None,
        cutouts={"difference": bytes([i % 256]) * (100 + i)},
    )


def test_wire_messages_written_in_blocks_read_back_by_fastavro_and_lsst(tmp_path: Path) -> None:
    packets = [_packet(i) for i in range(1203)]
    wire = [ENC.to_wire(p) for p in packets]
    path = tmp_path / "a.avro"
    writer = ArchiveWriter(path, SCHEMA, skip=WIRE_HEADER_SIZE)
    spans = writer.add(wire[:700]) + writer.add(wire[700:])
    assert not path.exists()  # appears only when complete
    writer.finish()
    data = path.read_bytes()
    # Each span is exactly the message without its wire header.
    assert all(
        data[p : p + n] == m[WIRE_HEADER_SIZE:] for (p, n), m in zip(spans, wire, strict=True)
    )
    with open(path, "rb") as fh:
        assert list(fastavro.reader(fh)) == packets
    with open(path, "rb") as fh:
        _, records = retrieve_alerts(fh)
        assert list(records) == packets
    assert list(read_archive(path)) == packets


def test_an_aborted_archive_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "a.avro"
    writer = ArchiveWriter(path, SCHEMA)
    writer.add([ENC.encode(_packet(1))])
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_a_failed_write_is_reported_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_bytes(b"")
    path = tmp_path / "not-a-dir" / "a.avro"
    writer = ArchiveWriter(path, SCHEMA)
    for _ in range(20):  # more blocks than the queue holds: add() must not hang
        writer.add([ENC.encode(_packet(1))] * 600)
    with pytest.raises(BadFileError, match="a.avro"):
        writer.finish()


def test_outbox_serves_the_wire_messages_from_the_archive(tmp_path: Path) -> None:
    wire = [ENC.to_wire(_packet(i)) for i in range(30)]
    path = tmp_path / "a.avro"
    writer = ArchiveWriter(path, SCHEMA, skip=WIRE_HEADER_SIZE)
    spans = writer.add(wire)
    writer.finish()
    box = Outbox(tmp_path / "outbox.sqlite3")
    box.add_archive(
        path,
        visit=3,
        detector=0,
        schema_id=SCHEMA.schema_id,
        entries=[("t", 1000 + i, 50 + i, p, n) for i, (p, n) in enumerate(spans)],
    )
    got = box.pending(100)
    assert [m.value for m in got] == wire
    assert [m.key for m in got] == [str(50 + i).encode() for i in range(30)]
    # A truncated archive is reported with its name, not sent short.
    with open(path, "r+b") as fh:
        fh.truncate(spans[-1][0] + 10)
    box2 = Outbox(tmp_path / "outbox.sqlite3")
    with pytest.raises(BadFileError, match="truncated"):
        box2.pending(100)
    box.close()
    box2.close()


def test_block_writes_resume_after_short_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel may write only part of a writev (a full pipe, a signal); the
    # rest must follow in order.  Each real writev here is cut to 7 bytes.
    from skydm.alerts import archive

    real = os.writev

    def short(fd: int, bufs: list[memoryview]) -> int:
        return real(fd, [bytes(b"".join(bytes(b) for b in bufs)[:7])])

    monkeypatch.setattr(archive.os, "writev", short)
    bufs = [b"head", memoryview(b"xxabcdefghij")[2:], b"", b"0123456789" * 5, b"SYNC"]
    r, w = os.pipe()  # 4+10+0+50+4 bytes: well within a pipe's buffer
    with os.fdopen(r, "rb") as reader:
        with os.fdopen(w, "wb", buffering=0) as writer:
            archive._write_all(writer.fileno(), list(bufs))
        assert reader.read() == b"".join(bytes(b) for b in bufs)
