"""TAP and UWS parameters fuzzed through the real FastAPI application (issue 14).

Every request, whatever its parameters, must be answered with a success or a
4xx error document, never a 5xx (an unhandled exception in a handler).
Async jobs are created and changed but not run: running them starts worker
processes, which the other TAP tests exercise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import budget
from skydm.repo import Repository
from skydm.services.app import create_app

from .conftest import make_catalog

KEYS = ["LANG", "QUERY", "REQUEST", "FORMAT", "RESPONSEFORMAT", "MAXREC", "UPLOAD", "RUNID"]
KEYS += ["VERSION", "PHASE", "DESTRUCTION", "EXECUTIONDURATION", "WAIT", "ACTION", "lang", "X"]
GOOD = {
    "LANG": ["ADQL", "adql", "ADQL-2.0", "PQL", ""],
    "QUERY": ["SELECT TOP 3 objectId FROM Object", "SELECT * FROM TAP_SCHEMA.tables", "SELEC"],
    "REQUEST": ["doQuery", "getCapabilities", ""],
    "FORMAT": ["votable", "csv", "tsv", "application/x-votable+xml;serialization=TABLEDATA"],
    "RESPONSEFORMAT": ["votable/td", "text/csv", "fits", "parquet", "html"],
    "MAXREC": ["0", "1", "-1", "1e9", "99999999999999999999", "x", " 5"],
    "UPLOAD": ["t,param:t", "bad", "t,http://127.0.0.1:1/x", "a,b,c"],
    "PHASE": ["ABORT", "abort", "SUSPEND", "", "PENDING"],
    "DESTRUCTION": ["2030-01-01T00:00:00Z", "yesterday", "0", "9999-99-99"],
    "EXECUTIONDURATION": ["0", "-5", "1e12", "abc", "600"],
    "WAIT": ["0", "-1", "0.1", "x"],
    "ACTION": ["DELETE", "delete", "RUN", ""],
}
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@st.composite
def params(draw: st.DrawFn) -> list[tuple[str, str]]:
    out = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(KEYS))
        value = draw(st.one_of(st.sampled_from(GOOD.get(key, [""])), texts))
        out.append((key, value))
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = tmp_path_factory.mktemp("tapfuzz")
    Repository.open(repo).close()
    make_catalog(repo)
    with TestClient(create_app(Path(repo), workers=1)) as c:
        yield c


def _ok(response: object) -> None:
    status = response.status_code  # type: ignore[attr-defined]
    assert status < 500, (status, response.text[:500])  # type: ignore[attr-defined]
    if status >= 400:
        assert response.content  # type: ignore[attr-defined]


@budget(120)
@given(data=params(), method=st.sampled_from(["GET", "POST"]))
def test_fuzz_sync_parameters(client: TestClient, data: list[tuple[str, str]], method: str) -> None:
    if method == "GET":
        response = client.get("/tap/sync", params=data)
    else:
        response = client.post("/tap/sync", data=dict(data))
    _ok(response)


ACTIONS = st.sampled_from(
    ["phase", "executionduration", "destruction", "parameters", "delete", "get", "results"]
)


@budget(60)
@given(
    create=params(),
    steps=st.lists(st.tuples(ACTIONS, params()), max_size=4),
    other_id=st.one_of(st.just(None), texts.filter(lambda s: "/" not in s and s.strip())),
)
def test_fuzz_uws_jobs(
    client: TestClient,
    create: list[tuple[str, str]],
    steps: list[tuple[str, list[tuple[str, str]]]],
    other_id: str | None,
) -> None:
    create = [(k, v) for k, v in create if not (k.upper() == "PHASE" and v.upper() == "RUN")]
    response = client.post("/tap/async", data=dict(create), follow_redirects=False)
    _ok(response)
    if response.status_code != 303:
        return
    created = response.headers["location"].rsplit("/", 1)[-1]
    job = created if other_id is None else quote(other_id, safe="")
    for action, data in steps:
        data = [(k, v) for k, v in data if not (k.upper() in ("PHASE", "ACTION") and "RUN" in v)]
        if action == "get":
            _ok(client.get(f"/tap/async/{job}", params=data))
        elif action == "results":
            _ok(client.get(f"/tap/async/{job}/results/result"))
        elif action == "delete":
            _ok(client.post(f"/tap/async/{job}", data=dict(data), follow_redirects=False))
        else:
            _ok(client.post(f"/tap/async/{job}/{action}", data=dict(data), follow_redirects=False))
            _ok(client.get(f"/tap/async/{job}/{action}"))
    client.delete(f"/tap/async/{created}")
