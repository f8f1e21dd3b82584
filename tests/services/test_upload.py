"""TAP UPLOAD through the service: pyvo sync and async, inline parts, URLs, limits."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pyarrow as pa
import pytest
import pyvo
from astropy.table import Table

from .conftest import Service, cone_truth

XMATCH = (
    "SELECT t.pid, o.objectId FROM TAP_UPLOAD.t AS t JOIN Object AS o "
    "ON 1 = CONTAINS(POINT('ICRS', o.ra, o.dec), CIRCLE('ICRS', t.ra, t.dec, 0.02))"
)


@pytest.fixture(scope="module")
def tap(service: Service) -> pyvo.dal.TAPService:
    return pyvo.dal.TAPService(service.url)


@pytest.fixture(scope="module")
def upload(truth: pa.Table) -> Table:
    """Ten positions near catalog objects plus one far from any."""
    rng = np.random.default_rng(11)
    pick = rng.choice(truth.num_rows, 10, replace=False)
    ra = np.append(truth["ra"].to_numpy()[pick] + 0.005, 200.0)
    dec = np.append(truth["dec"].to_numpy()[pick], -60.0)
    return Table({"pid": np.arange(len(ra), dtype=np.int64), "ra": ra, "dec": dec})


def expected(truth: pa.Table, upload: Table) -> set[tuple[int, int]]:
    return {
        (int(row["pid"]), obj)
        for row in upload
        for obj in cone_truth(truth, row["ra"], row["dec"], 0.02)
    }


def pairs(result: object) -> set[tuple[int, int]]:
    return set(zip(result["pid"].tolist(), result["objectId"].tolist(), strict=True))  # type: ignore[index]


def test_sync_upload_crossmatch(tap: pyvo.dal.TAPService, truth: pa.Table, upload: Table) -> None:
    result = tap.run_sync(XMATCH, uploads={"t": upload})
    want = expected(truth, upload)
    assert len(want) >= 10
    assert pairs(result) == want


def test_async_upload_crossmatch(tap: pyvo.dal.TAPService, truth: pa.Table, upload: Table) -> None:
    job = tap.submit_job(XMATCH, uploads={"t": upload})
    try:
        job.run().wait(timeout=60)
        assert job.phase == "COMPLETED", job.phase
        assert pairs(job.fetch_result()) == expected(truth, upload)
    finally:
        job.delete()


def test_upload_select_star(tap: pyvo.dal.TAPService, upload: Table) -> None:
    result = tap.run_sync("SELECT * FROM TAP_UPLOAD.t ORDER BY pid", uploads={"t": upload})
    assert result["ra"].tolist() == list(upload["ra"])


def _post(
    service: Service, data: dict[str, str], files: dict[str, bytes] | None = None
) -> httpx.Response:
    return httpx.post(f"{service.url}/sync", data=data, files=files, timeout=30)


def test_upload_errors_are_clear(service: Service, upload: Table) -> None:
    buf = io.BytesIO()
    upload.write(buf, format="votable")
    query = {"LANG": "ADQL", "QUERY": "SELECT * FROM TAP_UPLOAD.t"}
    r = _post(service, {**query, "UPLOAD": "t,param:missing"}, {"other": buf.getvalue()})
    assert r.status_code == 400 and "missing" in r.text
    r = _post(service, {**query, "UPLOAD": "t,http://127.0.0.1:1/t.vot"})
    assert r.status_code == 400 and "non-public address" in r.text
    r = _post(service, {**query, "UPLOAD": "t,ftp://example.org/t.vot"})
    assert r.status_code == 400 and "UPLOAD" in r.text
    r = _post(service, {**query, "UPLOAD": "t,param:f"}, {"f": b"<nope/>"})
    assert r.status_code == 400 and "not a readable VOTable" in r.text
    r = _post(service, query)  # no upload: the table does not exist
    assert r.status_code == 400 and "TAP_UPLOAD" in r.text


def test_capabilities_declare_uploads(service: Service) -> None:
    caps = httpx.get(f"{service.url}/capabilities", timeout=30).text
    assert "ivo://ivoa.net/std/TAPRegExt#upload-inline" in caps
    assert '<uploadLimit><default unit="byte">' in caps
