"""Output writers and parameter validation, without a server: checked with astropy and pyarrow."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse

from skydm.services.tap.config import TapConfig
from skydm.services.tap.errors import QueryTooDeepError, QueryTooLargeError, TapParameterError
from skydm.services.tap.formats import ResultStream, find_format
from skydm.services.tap.params import collect_params, parse_query_request
from skydm.services.tap.votable import FieldSpec


def _columns() -> list[FieldSpec]:
    return [
        FieldSpec("id", "long", ucd="meta.id"),
        FieldSpec("flux", "double", unit="nJy", description="a <flux> & more"),
        FieldSpec("ok", "boolean"),
        FieldSpec("name", "char", "*"),
        FieldSpec("mag", "float"),
        FieldSpec("code", "char", "4"),
        FieldSpec("vec", "double", "*"),
    ]


def _batches() -> list[pa.RecordBatch]:
    rng = np.random.default_rng(3)
    batches = []
    for start in (0, 700):
        n = 700
        ids = np.arange(start, start + n, dtype=np.int64)
        flux = rng.normal(size=n)
        flux[5] = np.nan
        names = [None if i % 11 == 0 else f'é<{i}>&"x' for i in ids]
        batches.append(
            pa.RecordBatch.from_arrays(
                [
                    pa.array(ids),
                    pa.array(flux, mask=(ids % 7 == 0)),
                    pa.array([bool(i % 2) if i % 5 else None for i in ids]),
                    pa.array(names),
                    pa.array(rng.normal(size=n).astype(np.float32)),
                    pa.array([f"c{i % 1000}" for i in ids]),
                    pa.array([[float(i), 0.5] if i % 3 else [] for i in ids]),
                ],
                names=[c.name for c in _columns()],
            )
        )
    return batches


def _encode(fmt: str, *, overflow: bool = False) -> tuple[bytes, ResultStream]:
    batches = _batches()
    stream = ResultStream(
        find_format(fmt), _columns(), iter(batches), lambda: overflow, query="SELECT 1"
    )
    return b"".join(stream.chunks()), stream


@pytest.mark.parametrize("fmt", ["votable", "votable/td"])
def test_votable_round_trip(fmt: str) -> None:
    data, stream = _encode(fmt, overflow=True)
    assert stream.rows == 1400
    votable = parse(io.BytesIO(data), verify="exception")
    infos = [(i.name, i.value) for i in votable.resources[0].infos]
    assert infos[0] == ("QUERY_STATUS", "OK") and infos[-1] == ("QUERY_STATUS", "OVERFLOW")
    table = votable.get_first_table()
    assert table.get_field_by_id_or_name("flux").unit == "nJy"
    got = table.array
    expected = pa.Table.from_batches(_batches())
    assert got["id"].tolist() == expected["id"].to_pylist()
    flux = expected["flux"].to_pylist()
    for i in (0, 5, 7, 8, 1399):
        if flux[i] is None:
            assert got["flux"].mask[i]
        elif np.isnan(flux[i]):
            assert np.isnan(got["flux"].data[i])  # astropy also masks NaN
        else:
            assert got["flux"][i] == flux[i]
    assert [None if m else v for v, m in zip(got["ok"].data, got["ok"].mask, strict=True)] == (
        expected["ok"].to_pylist()
    )
    names = expected["name"].to_pylist()
    assert names[12] == 'é<12>&"x'
    # BINARY2 char is ASCII (VOTable 1.4): other characters become "?".
    assert got["name"][12] == (names[12] if fmt == "votable/td" else '?<12>&"x')
    assert got["name"].mask[11] or got["name"][11] == ""
    assert got["code"][1234] == "c234"
    assert list(got["vec"][4]) == [4.0, 0.5] and len(got["vec"][3]) == 0
    np.testing.assert_array_equal(
        got["mag"].astype(np.float32), expected["mag"].to_numpy().astype(np.float32)
    )


def test_csv_and_parquet() -> None:
    data, _ = _encode("csv")
    lines = data.decode().splitlines()
    assert lines[0] == "id,flux,ok,name,mag,code,vec"
    assert len(lines) == 1401
    assert lines[2].split(",")[0] == "1"
    data, _ = _encode("parquet", overflow=True)
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 1400
    meta = pq.read_metadata(io.BytesIO(data)).metadata
    assert meta[b"QUERY_STATUS"] == b"OVERFLOW"
    assert table.schema.field("flux").metadata[b"unit"] == b"nJy"


def test_empty_result_still_declares_columns() -> None:
    stream = ResultStream(find_format("votable"), _columns(), iter([]), lambda: False)
    table = parse(io.BytesIO(b"".join(stream.chunks()))).get_first_table()
    assert len(table.array) == 0 and len(table.fields) == 7


def test_params_case_insensitive_and_checked() -> None:
    config = TapConfig(repo_dir=None, default_maxrec=50, max_query_bytes=1000, max_nesting=5)  # type: ignore[arg-type]
    params = collect_params([("lang", "adql"), ("query", "SELECT 1"), ("Format", "text/csv")])
    request = parse_query_request(params, config)
    assert (request.maxrec, request.output.key, request.lang) == (50, "csv", "adql")
    for fmt in ("votable/td", "application/x-votable+xml", "parquet", "VOTABLE"):
        assert find_format(fmt).key.startswith(fmt.lower().split("/")[0][:3]) or fmt
    with pytest.raises(TapParameterError, match="MAXREC"):
        parse_query_request(collect_params([("QUERY", "x"), ("MAXREC", "lots")]), config)
    with pytest.raises(QueryTooLargeError, match="1000 bytes"):
        parse_query_request(collect_params([("QUERY", "x" * 1001)]), config)
    with pytest.raises(QueryTooDeepError):
        parse_query_request(
            collect_params([("QUERY", "SELECT " + "(" * 6 + "1" + ")" * 6)]), config
        )
    # Parentheses inside string literals and comments do not count.
    deep_text = "SELECT '" + "(" * 50 + "' -- " + "(" * 50 + "\n"
    parse_query_request(collect_params([("QUERY", deep_text)]), config)
