"""The TAP service driven by a real client (pyvo): sync, async, abort, delete, overflow."""

from __future__ import annotations

import os
import time
import warnings

import pyarrow as pa
import pytest
import pyvo
from pyvo.dal import DALOverflowWarning

from skydm.services.tap.uws.store import JobStore

from .conftest import DEFAULT_MAXREC, LONG_QUERY, Service, cone_truth

CONE = (
    "SELECT objectId, ra, dec FROM Object "
    "WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 10.0, 20.0, 0.2))"
)


@pytest.fixture(scope="module")
def tap(service: Service) -> pyvo.dal.TAPService:
    return pyvo.dal.TAPService(service.url)


def test_run_sync_cone_matches_truth(tap: pyvo.dal.TAPService, truth: pa.Table) -> None:
    result = tap.run_sync(CONE)
    expected = cone_truth(truth, 10.0, 20.0, 0.2)
    assert 50 < len(expected) < DEFAULT_MAXREC
    assert set(result["objectId"].tolist()) == expected
    ra = result.resultstable.get_field_by_id_or_name("ra")
    assert (ra.ucd, str(ra.unit), ra.datatype) == ("pos.eq.ra;meta.main", "deg", "double")
    assert result.status[0] == "OK"


def test_maxrec_overflow_seen_by_pyvo(tap: pyvo.dal.TAPService) -> None:
    result = tap.run_sync("SELECT objectId FROM Object", maxrec=10)
    assert len(result) == 10
    assert result.status[0] == "OVERFLOW"
    # Without MAXREC the service default (2000 rows) cuts the 5000-row table.
    with pytest.warns(DALOverflowWarning):
        result = tap.run_sync("SELECT objectId FROM Object")
    assert len(result) == DEFAULT_MAXREC
    with warnings.catch_warnings():
        warnings.simplefilter("error", DALOverflowWarning)
        assert len(tap.run_sync("SELECT objectId FROM Object", maxrec=6000)) == 5000


def test_async_submit_run_wait_fetch_delete(tap: pyvo.dal.TAPService, truth: pa.Table) -> None:
    job = tap.submit_job(CONE, maxrec=100000)
    assert job.phase == "PENDING"
    job.run()
    job.wait(timeout=60)
    assert job.phase == "COMPLETED"
    result = job.fetch_result()
    assert set(result["objectId"].tolist()) == cone_truth(truth, 10.0, 20.0, 0.2)
    url = job.url
    job.delete()
    assert all(j.jobid != url.rsplit("/", 1)[-1] for j in tap.get_job_list())


def test_async_overflow(tap: pyvo.dal.TAPService) -> None:
    job = tap.submit_job("SELECT objectId FROM Object", maxrec=25)
    job.run().wait(timeout=60)
    result = job.fetch_result()
    assert len(result) == 25
    assert result.status[0] == "OVERFLOW"
    job.delete()


def test_abort_long_query_within_one_second(tap: pyvo.dal.TAPService, service: Service) -> None:
    job = tap.submit_job(LONG_QUERY)
    job.run()
    deadline = time.monotonic() + 30
    while job.phase != "EXECUTING" and time.monotonic() < deadline:
        time.sleep(0.05)
    job_id = job.url.rsplit("/", 1)[-1]
    store = JobStore(service.repo / "tap" / "jobs" / "jobs.sqlite")
    deadline = time.monotonic() + 10
    while store.get(job_id).worker_pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = store.get(job_id).worker_pid
    assert pid is not None
    os.kill(pid, 0)  # the query is running in its worker process
    start = time.monotonic()
    job.abort()
    assert job.phase == "ABORTED"
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, elapsed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    job.delete()
