"""TABLEDATA text as unicodeChar; DALI cone examples that find rows (issue 14, item 22)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pyarrow as pa
import pytest
from astropy.io.votable import parse
from fastapi.testclient import TestClient

from skydm.catalog import load_table
from skydm.repo import Repository
from skydm.services.app import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = tmp_path_factory.mktemp("text")
    Repository.open(repo).close()
    stars = pa.table(
        {
            "id": [1, 2, 3],
            "ra": [200.5, 200.51, 201.0],
            "dec": [-30.2, -30.21, -31.0],
            "name": ["Vénus", "plain", "Ωmega ★"],
        }
    )
    load_table(Path(repo) / "catalog", "stars", stars)
    with TestClient(create_app(Path(repo), workers=1)) as c:
        yield c


def test_tabledata_declares_text_unicodechar(client: TestClient) -> None:
    response = client.get(
        "/tap/sync",
        params={
            "LANG": "ADQL",
            "QUERY": "SELECT id, name FROM stars ORDER BY id",
            "RESPONSEFORMAT": "application/x-votable+xml;serialization=TABLEDATA",
        },
    )
    assert response.status_code == 200, response.text
    assert '<FIELD name="name" datatype="unicodeChar"' in response.text
    table = parse(io.BytesIO(response.content)).get_first_table()
    assert table.get_field_by_id_or_name("name").datatype == "unicodeChar"
    assert [str(v) for v in table.array["name"]] == ["Vénus", "plain", "Ωmega ★"]


def test_cone_examples_find_rows(client: TestClient) -> None:
    page = client.get("/tap/examples").text
    queries = [unescape(q) for q in re.findall(r'<pre property="query">(.*?)</pre>', page, re.S)]
    (cone,) = [q for q in queries if "FROM stars WHERE 1 = CONTAINS" in q]
    centre = re.search(r"CIRCLE\('ICRS', ([-\d.]+), ([-\d.]+), ", cone)
    assert centre is not None
    assert (float(centre[1]), float(centre[2])) in {
        (200.5, -30.2),
        (200.51, -30.21),
        (201.0, -31.0),
    }
    response = client.get(
        "/tap/sync", params={"LANG": "ADQL", "QUERY": cone, "RESPONSEFORMAT": "csv"}
    )
    assert response.status_code == 200
    rows = response.text.strip().splitlines()[1:]
    assert len(rows) >= 1
