"""Hostile ADQL over HTTP: each gets a clear VOTable error and the service stays up."""

from __future__ import annotations

import time

import httpx
import pytest

from skydm.services.client import error_message

from .conftest import N_ROWS, Service

HOSTILE = {
    "statement-after": "SELECT objectId FROM Object; DROP TABLE Object",
    "drop": "DROP TABLE Object",
    "string-injection": "SELECT objectId FROM Object WHERE 'a' = 'a'; DELETE FROM Object --'",
    "file-reader": "SELECT * FROM read_csv('/etc/passwd')",
    "disallowed-function": "SELECT pg_sleep(10) FROM Object",
    "system-table": "SELECT * FROM duckdb_settings()",
    "copy": "COPY Object TO '/tmp/stolen.csv'",
    "pragma": "PRAGMA database_list",
}


def _sync(service: Service, query: str, **extra: str) -> httpx.Response:
    return httpx.post(
        f"{service.url}/sync", data={"LANG": "ADQL", "QUERY": query, **extra}, timeout=60
    )


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_query_refused(service: Service, name: str) -> None:
    response = _sync(service, HOSTILE[name])
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/x-votable+xml")
    assert 'value="ERROR"' in response.text
    assert error_message(response.content)  # a message, not an empty document


def test_comment_cannot_smuggle_a_statement(service: Service) -> None:
    query = "SELECT objectId FROM Object WHERE objectId = 1 -- ; DELETE FROM Object"
    response = _sync(service, query, RESPONSEFORMAT="csv")
    assert response.status_code == 200
    assert response.text.splitlines() == ["objectId", "1"]


def test_huge_query_refused_before_parsing(service: Service) -> None:
    # 10 MB of query text (padding that form-encodes one byte per byte).
    query = "SELECT objectId FROM Object WHERE " + "objectId > 1 OR " + " " * 10_000_000 + "1 = 1"
    start = time.monotonic()
    response = _sync(service, query)
    assert response.status_code == 400
    message = error_message(response.content)
    assert "QUERY is 10000055 bytes long" in message
    assert "at most 100000 bytes" in message
    assert time.monotonic() - start < 10
    # A body beyond what any query could need is refused without being read.
    response = _sync(service, "SELECT objectId FROM Object WHERE objectId IN (" + "1," * 5_000_000)
    assert response.status_code == 400
    assert "request body" in error_message(response.content)


def test_deep_nesting_refused(service: Service) -> None:
    query = "SELECT objectId FROM Object WHERE " + "(" * 5000 + "1 = 1" + ")" * 5000
    response = _sync(service, query)
    assert response.status_code == 400
    assert "nests parentheses" in error_message(response.content)


def test_moderate_nesting_still_reaches_the_parser(service: Service) -> None:
    query = "SELECT COUNT(*) AS n FROM Object WHERE " + "(" * 30 + "objectId > 0" + ")" * 30
    response = _sync(service, query, RESPONSEFORMAT="csv")
    assert response.status_code == 200, response.text
    assert response.text.splitlines() == ["n", str(N_ROWS)]


def test_bad_parameters(service: Service) -> None:
    cases = {
        "LANG": ({"LANG": "SQL"}, "LANG"),
        "MAXREC": ({"MAXREC": "-3"}, "MAXREC"),
        "RESPONSEFORMAT": ({"RESPONSEFORMAT": "image/png"}, "RESPONSEFORMAT"),
        "REQUEST": ({"REQUEST": "getCapabilities"}, "REQUEST"),
    }
    for extra, word in cases.values():
        response = _sync(service, "SELECT TOP 1 objectId FROM Object", **extra)
        assert response.status_code == 400
        assert word in error_message(response.content)
    response = httpx.get(f"{service.url}/sync", params={"LANG": "ADQL"})
    assert response.status_code == 400
    assert "QUERY" in error_message(response.content)


def test_service_still_up_and_table_intact(service: Service) -> None:
    for query in HOSTILE.values():
        _sync(service, query)
    assert service.alive()
    response = _sync(service, "SELECT COUNT(*) AS n FROM Object", RESPONSEFORMAT="csv")
    assert response.text.splitlines() == ["n", str(N_ROWS)]
    assert httpx.get(f"{service.url}/availability").status_code == 200
