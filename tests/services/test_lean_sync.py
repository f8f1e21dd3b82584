"""The lean /sync route (url-encoded and GET requests, straight from ASGI) answers as FastAPI's.

Multipart requests still take the FastAPI route, so sending the same
parameters both ways compares the two paths byte for byte.
"""

from __future__ import annotations

import io

import httpx
import pyarrow as pa
import pytest
from astropy.io.votable import parse_single_table

from .conftest import DEFAULT_MAXREC, Service, cone_truth

CONE = (
    "SELECT objectId, ra, dec, g_psfFlux FROM Object WHERE "
    "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 10.1, 19.9, 0.2)) = 1"
)
#: A result of ~2 MB: streamed in chunks rather than sent whole.
LARGE = "SELECT TOP 30000 a.objectId, b.ra FROM Object AS a, Object AS b"


def _both(service: Service, params: dict[str, str]) -> tuple[httpx.Response, httpx.Response]:
    """The answer of the lean route (url-encoded) and of the FastAPI route (multipart)."""
    lean = httpx.post(f"{service.url}/sync", data=params, timeout=60)
    # A file part makes httpx send multipart/form-data: the FastAPI route.
    full = httpx.post(f"{service.url}/sync", data=params, files={"unused": ("x", b"")}, timeout=60)
    return lean, full


#: A cone holding no row (the catalog lies around (10, 20)): after its first
#: query, the lean route answers its shape from memory, on the event loop.
EMPTY_CONE = (
    "SELECT objectId, ra, dec, g_psfFlux FROM Object WHERE "
    "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 200.5, -30.25, 0.01)) = 1"
)


@pytest.mark.parametrize(
    "params",
    [
        {"LANG": "ADQL", "QUERY": EMPTY_CONE},
        {"LANG": "ADQL", "QUERY": EMPTY_CONE, "RESPONSEFORMAT": "csv"},
        {"LANG": "ADQL", "QUERY": EMPTY_CONE, "RESPONSEFORMAT": "votable/td"},
        {"LANG": "ADQL", "QUERY": CONE},
        {"lang": "adql", "query": CONE, "responseformat": "csv"},
        {"LANG": "ADQL", "QUERY": CONE, "RESPONSEFORMAT": "votable/td", "MAXREC": "3"},
        {"LANG": "ADQL", "QUERY": CONE, "FORMAT": "parquet"},
        {"LANG": "ADQL", "QUERY": "SELECT TOP 3 * FROM Object", "REQUEST": "doQuery"},
        {"LANG": "SQL", "QUERY": CONE},  # refused: 400
        {"LANG": "ADQL", "QUERY": "SELECT nothing FROM Object"},  # ADQL error: 400
        {"LANG": "ADQL"},  # no QUERY
        {"LANG": "ADQL", "QUERY": "SELECT " + "(" * 100 + "1" + ")" * 100},  # too deep
    ],
)
def test_lean_route_answers_as_fastapi(service: Service, params: dict[str, str]) -> None:
    lean, full = _both(service, params)
    assert lean.status_code == full.status_code
    assert lean.headers["content-type"] == full.headers["content-type"]
    if params.get("FORMAT") == "parquet":
        # Parquet files name their writer's build; compare the data.
        import pyarrow.parquet as pq

        a, b = pq.read_table(io.BytesIO(lean.content)), pq.read_table(io.BytesIO(full.content))
        assert a.equals(b) and a.num_rows > 0
    else:
        assert lean.content == full.content
    if lean.status_code != 200:
        assert b'value="ERROR"' in lean.content


def test_get_and_post_agree(service: Service) -> None:
    params = {"LANG": "ADQL", "QUERY": CONE, "RESPONSEFORMAT": "csv"}
    got = httpx.get(f"{service.url}/sync", params=params, timeout=60)
    posted = httpx.post(f"{service.url}/sync", data=params, timeout=60)
    assert got.status_code == posted.status_code == 200
    assert got.content == posted.content


def test_lean_votable_is_valid_and_right(service: Service, truth: pa.Table) -> None:
    response = httpx.post(f"{service.url}/sync", data={"LANG": "ADQL", "QUERY": CONE}, timeout=60)
    assert response.status_code == 200
    table = parse_single_table(io.BytesIO(response.content), verify="exception")
    ids = {int(i) for i in table.array["objectId"]}
    assert ids == cone_truth(truth, 10.1, 19.9, 0.2)
    assert 0 < len(ids) < DEFAULT_MAXREC


def test_large_results_stream_alike(service: Service) -> None:
    params = {"LANG": "ADQL", "QUERY": LARGE, "MAXREC": "30000", "RESPONSEFORMAT": "votable/td"}
    lean, full = _both(service, params)
    assert lean.status_code == full.status_code == 200
    assert "content-length" not in lean.headers  # streamed, not sent whole
    assert len(lean.content) > 1 << 20
    # TOP without ORDER BY on a parallel scan may pick other rows each time:
    # the documents must agree around the rows, and hold as many of them.
    lean_head, _, lean_rest = lean.content.partition(b"<TABLEDATA>")
    full_head, _, full_rest = full.content.partition(b"<TABLEDATA>")
    assert lean_head == full_head
    assert lean_rest.partition(b"</TABLEDATA>")[2] == full_rest.partition(b"</TABLEDATA>")[2]
    assert lean_rest.count(b"<TR>") == full_rest.count(b"<TR>") == 30000
    table = parse_single_table(io.BytesIO(lean.content))
    assert len(table.array) == 30000


def test_oversized_body_is_refused(service: Service) -> None:
    body = b"LANG=ADQL&QUERY=" + b"x" * (17 * 1024 * 1024)
    response = httpx.post(
        f"{service.url}/sync",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert response.status_code == 400
    assert b"bytes are accepted" in response.content
