"""UWS 1.1 behaviour over HTTP: phases, WAIT, filters, EXECUTIONDURATION, DESTRUCTION, DELETE."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from .conftest import LONG_QUERY, Service

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"


@pytest.fixture
def client(service: Service) -> httpx.Client:
    return httpx.Client(base_url=service.url, timeout=60)


def _create(client: httpx.Client, query: str, **extra: str) -> str:
    response = client.post("/async", data={"LANG": "ADQL", "QUERY": query, **extra})
    assert response.status_code == 303
    return response.headers["location"].rsplit("/", 1)[-1]


def _job(client: httpx.Client, job_id: str, **params: str) -> ET.Element:
    response = client.get(f"/async/{job_id}", params=params)
    assert response.status_code == 200
    return ET.fromstring(response.content)


def _phase(client: httpx.Client, job_id: str) -> str:
    return client.get(f"/async/{job_id}/phase").text


def test_job_document_and_phase_run(client: httpx.Client) -> None:
    job_id = _create(client, "SELECT TOP 3 objectId FROM Object", runid="mine")
    doc = _job(client, job_id)
    assert doc.findtext(f"{UWS}phase") == "PENDING"
    assert doc.findtext(f"{UWS}runId") == "mine"
    params = {p.get("id"): p.text for p in doc.iter(f"{UWS}parameter")}
    assert params["query"] == "SELECT TOP 3 objectId FROM Object"
    # Parameters can change while PENDING, then the job runs; WAIT blocks until it is done.
    assert client.post(f"/async/{job_id}/parameters", data={"MAXREC": "2"}).status_code == 303
    assert client.post(f"/async/{job_id}/phase", data={"PHASE": "RUN"}).status_code == 303
    deadline = time.monotonic() + 30
    while _phase(client, job_id) != "COMPLETED" and time.monotonic() < deadline:
        _job(client, job_id, WAIT="5")
    doc = _job(client, job_id)
    assert doc.findtext(f"{UWS}phase") == "COMPLETED"
    result = doc.find(f"{UWS}results/{UWS}result")
    assert result is not None
    assert doc.findtext(f"{UWS}jobInfo/rows") == "2"
    assert doc.findtext(f"{UWS}jobInfo/overflow") == "true"
    # A finished job cannot be changed or run again.
    assert client.post(f"/async/{job_id}/parameters", data={"MAXREC": "5"}).status_code == 409
    assert client.post(f"/async/{job_id}/phase", data={"PHASE": "RUN"}).status_code == 409
    assert client.post(f"/async/{job_id}/phase", data={"PHASE": "JUMP"}).status_code == 400
    # ACTION=DELETE removes it; it is then gone.
    assert client.post(f"/async/{job_id}", data={"ACTION": "DELETE"}).status_code == 303
    assert client.get(f"/async/{job_id}").status_code == 404


def test_wait_returns_early_on_phase_change_and_times_out(client: httpx.Client) -> None:
    job_id = _create(client, LONG_QUERY, PHASE="RUN")
    start = time.monotonic()
    doc = _job(client, job_id, WAIT="2", PHASE="QUEUED")
    assert doc.findtext(f"{UWS}phase") in ("EXECUTING", "QUEUED")
    if doc.findtext(f"{UWS}phase") == "EXECUTING":
        assert time.monotonic() - start < 2
    start = time.monotonic()
    doc = _job(client, job_id, WAIT="1")
    assert 0.9 < time.monotonic() - start < 3
    assert doc.findtext(f"{UWS}phase") == "EXECUTING"
    client.delete(f"/async/{job_id}")
    assert client.get(f"/async/{job_id}").status_code == 404


def test_execution_duration_enforced(client: httpx.Client) -> None:
    job_id = _create(client, LONG_QUERY, EXECUTIONDURATION="1")
    assert client.get(f"/async/{job_id}/executionduration").text == "1"
    client.post(f"/async/{job_id}/phase", data={"PHASE": "RUN"})
    deadline = time.monotonic() + 10
    while _phase(client, job_id) != "ERROR" and time.monotonic() < deadline:
        time.sleep(0.1)
    doc = _job(client, job_id)
    assert doc.findtext(f"{UWS}phase") == "ERROR"
    message = doc.findtext(f"{UWS}errorSummary/{UWS}message") or ""
    assert "EXECUTIONDURATION of 1 s" in message
    assert "EXECUTIONDURATION" in client.get(f"/async/{job_id}/error").text
    client.delete(f"/async/{job_id}")


def test_destruction_sweeps_job(client: httpx.Client) -> None:
    job_id = _create(client, "SELECT TOP 1 objectId FROM Object", PHASE="RUN")
    soon = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert (
        client.post(f"/async/{job_id}/destruction", data={"DESTRUCTION": soon}).status_code == 303
    )
    assert client.get(f"/async/{job_id}/destruction").text.startswith(soon[:19])
    deadline = time.monotonic() + 10
    while client.get(f"/async/{job_id}").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get(f"/async/{job_id}").status_code == 404


def test_job_list_filters(client: httpx.Client) -> None:
    before = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.01)
    ids = [_create(client, "SELECT TOP 1 objectId FROM Object") for _ in range(3)]
    client.post(f"/async/{ids[0]}/phase", data={"PHASE": "ABORT"})

    def listed(**params: str | list[str]) -> list[tuple[str, str]]:
        doc = ET.fromstring(client.get("/async", params=params).content)
        return [(r.get("id") or "", r.findtext(f"{UWS}phase") or "") for r in doc]

    after = listed(AFTER=before)
    assert [i for i, _ in after] == ids
    assert listed(AFTER=before, PHASE="ABORTED") == [(ids[0], "ABORTED")]
    assert [i for i, _ in listed(AFTER=before, PHASE=["PENDING", "ABORTED"])] == ids
    assert [i for i, _ in listed(LAST="2")] == [ids[2], ids[1]]
    assert client.get("/async", params={"LAST": "0"}).status_code == 400
    assert client.get("/async", params={"PHASE": "NAPPING"}).status_code == 400
    for job_id in ids:
        client.delete(f"/async/{job_id}")


def test_bad_job_is_created_then_errors(client: httpx.Client) -> None:
    job_id = _create(client, "SELECT TOP 1 objectId FROM Object", LANG="PQL", PHASE="RUN")
    doc = _job(client, job_id)
    assert doc.findtext(f"{UWS}phase") == "ERROR"
    assert "LANG" in (doc.findtext(f"{UWS}errorSummary/{UWS}message") or "")
    job_id2 = _create(client, "SELECT nonsense FROM Object", PHASE="RUN")
    deadline = time.monotonic() + 20
    while _phase(client, job_id2) != "ERROR" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "nonsense" in (_job(client, job_id2).findtext(f"{UWS}errorSummary/{UWS}message") or "")
    assert client.get(f"/async/{job_id2}/results/result").status_code == 404
    for j in (job_id, job_id2):
        client.delete(f"/async/{j}")
