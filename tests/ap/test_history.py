"""History chunks: windows sliced from stored encodings equal the records they hold."""

from __future__ import annotations

import io
from pathlib import Path

import fastavro
import pytest

from skydm.alerts.archive import read_archive
from skydm.alerts.packet import build_record
from skydm.alerts.produce import produce_visit_alerts
from skydm.alerts.schema import load_schema
from skydm.alerts.serialize import PacketEncoder
from skydm.ap.apdb import Apdb
from skydm.ap.history import (
    CHUNK_RECORDS,
    FORCED,
    SOURCE,
    EncodedArray,
    HistoryChunk,
    appended,
    window,
)
from skydm.ap.synthetic import SyntheticField

SCHEMA = load_schema()
K = CHUNK_RECORDS[FORCED]
ENC = PacketEncoder(SCHEMA)


def _record(i: int, mjd: float) -> bytes:
    values = {
        "diaForcedSourceId": i,
        "diaObjectId": 7,
        "ra": 10.0,
        "dec": -5.0,
        "visit": i,
        "detector": 1,
        "psfFlux": float(i),
        "psfFluxErr": 1.5,
        "midpointMjdTai": mjd,
        "band": "g",
        "timeProcessedMjdTai": mjd + 0.1,
    }
    return bytes(
        ENC.encode_record("diaForcedSource", build_record("diaForcedSource", values, SCHEMA))
    )


def _decode_items(arr: EncodedArray) -> list[dict]:
    buf = io.BytesIO(b"".join(arr.pieces))
    items = [
        fastavro.schemaless_reader(buf, SCHEMA.record_schemas["diaForcedSource"], None)
        for _ in range(arr.count)
    ]
    assert buf.read() == b""  # exactly count records, nothing left over
    return items


def _history(mjds: list[float]) -> tuple[dict[int, HistoryChunk], list[HistoryChunk]]:
    """Chunks of an object's forced sources at ``mjds``, appended one by one."""
    last: HistoryChunk | None = None
    chunks: dict[int, HistoryChunk] = {}
    for i, mjd in enumerate(mjds):
        last = appended(last, 7, FORCED, SCHEMA.schema_id, i, mjd, _record(i, mjd))
        chunks[last.chunk] = last
    return chunks, list(chunks.values())


def test_window_slices_exactly_the_records_in_the_time_range() -> None:
    n = 3 * K + 4
    _, chunks = _history([60000.0 + d for d in range(n)])
    assert [c.n for c in chunks] == [K, K, K, 4]
    got = window(chunks, since=60010.5, before=60000.0 + n - 2, schema_id=SCHEMA.schema_id)
    assert isinstance(got, EncodedArray)
    items = _decode_items(got)
    assert [r["diaForcedSourceId"] for r in items] == list(range(11, n - 2))
    assert [r["psfFlux"] for r in items] == [float(i) for i in range(11, n - 2)]
    # Whole chunks are passed on without a copy.
    assert any(p is c.avro for p in got.pieces for c in chunks)
    empty = window(chunks, since=70000.0, before=70001.0, schema_id=SCHEMA.schema_id)
    assert isinstance(empty, EncodedArray) and empty.count == 0


def test_a_late_visit_keeps_its_chunk_in_time_order() -> None:
    mjds = [60000.0 + d for d in range(K + 8)] + [60005.5]  # the last one processed late
    _, chunks = _history(mjds)
    last = chunks[-1]
    assert list(last.mjds) == sorted(last.mjds)
    got = window(chunks, since=0.0, before=1e6, schema_id=SCHEMA.schema_id)
    # Chunk 1 now starts before chunk 0 ends: records come back one by one, sorted.
    assert isinstance(got, list)
    assert [r[1] for r in got] == sorted(mjds)
    assert [r[0] for r in got][:7] == [0, 1, 2, 3, 4, 5, K + 8]
    assert got[6][3] == _record(K + 8, 60005.5)


def test_records_of_another_schema_are_returned_for_re_encoding() -> None:
    mjds = [60000.0, 60001.0, 60002.0]
    _, chunks = _history(mjds)
    old = appended(None, 7, FORCED, 1000, 99, 59999.0, b"old bytes")
    got = window([old, *chunks], since=0.0, before=1e6, schema_id=SCHEMA.schema_id)
    assert isinstance(got, list)
    sid = SCHEMA.schema_id
    assert [(r[0], r[2]) for r in got] == [(99, 1000), (0, sid), (1, sid), (2, sid)]
    # Outside the window the old chunk does not matter.
    fast = window([old, *chunks], since=60000.0, before=1e6, schema_id=SCHEMA.schema_id)
    assert isinstance(fast, EncodedArray) and fast.count == 3


def test_chunks_round_trip_through_the_database(tmp_path: Path) -> None:
    apdb = Apdb(tmp_path / "apdb.sqlite3")
    _, chunks = _history([60000.0 + d for d in range(2 * K + 6)])
    with apdb.engine.begin() as conn:
        apdb.write_history(conn, chunks)
    found, tails = apdb.read_history([7], since=60000.0 + K + 8)
    # The window needs chunks 1 and 2; chunk 0 ends before it.
    assert sorted(c.chunk for c in found[(7, FORCED)]) == [1, 2]
    assert tails[(7, FORCED)].chunk == 2 and tails[(7, FORCED)].n == 6
    assert (7, SOURCE) not in found
    for c in found[(7, FORCED)]:
        assert c == chunks[c.chunk]
    _, only_tails = apdb.read_history([], since=1e300, tails_of=[7, 8])
    assert list(only_tails) == [(7, FORCED)]
    apdb.close()


def test_history_written_in_an_older_schema_is_re_encoded(tmp_path: Path) -> None:
    """Two visits written with schema 9.0, the third with the latest: the third's
    packets carry all earlier sources, decoded equal to their full rows."""
    field = SyntheticField(seed=5, n_variables=10)
    apdb = Apdb(tmp_path / "apdb.sqlite3")
    for v, version in ((1, "9.0"), (2, "9.0"), (3, None)):
        sci, tmpl, diff, table = field.visit(v)
        r = produce_visit_alerts(
            table,
            diff,
            apdb=apdb,
            archive_dir=tmp_path,
            science=sci,
            template=tmpl,
            schema_version=version,
        )
    lsst = SCHEMA.lsst_schema()
    packets = list(read_archive(r.archive))
    assert packets and max(len(p["prvDiaSources"]) for p in packets) == 2
    for p in packets:
        assert lsst.validate(p)
        ids = [s["diaSourceId"] for s in p["prvDiaSources"]]
        rows = apdb.rows_by_id("DiaSource", ids)
        assert p["prvDiaSources"] == [build_record("diaSource", rows[i], SCHEMA) for i in ids]
        fids = [s["diaForcedSourceId"] for s in p["prvDiaForcedSources"]]
        frows = apdb.rows_by_id("DiaForcedSource", fids)
        assert p["prvDiaForcedSources"] == [
            build_record("diaForcedSource", frows[i], SCHEMA) for i in fids
        ]
    apdb.close()


@pytest.mark.parametrize("n", [0, 1, K, K + 1])
def test_appended_never_changes_the_chunk_it_was_given(n: int) -> None:
    _, chunks = _history([60000.0 + d for d in range(n)])
    last = chunks[-1] if chunks else None
    before = (list(last.ids), bytes(last.avro)) if last else None
    new = appended(last, 7, FORCED, SCHEMA.schema_id, 1000, 70000.0, _record(1000, 70000.0))
    if last is not None:
        assert (list(last.ids), bytes(last.avro)) == before
    assert new.ids[-1] == 1000 and new.n <= K
    # A full chunk is followed by a new one.
    assert new.chunk == (0 if last is None else last.chunk + (last.n == K))
