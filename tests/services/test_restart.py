"""Job state survives a restart: COMPLETED jobs keep their results, orphaned ones become ERROR."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pytest
import pyvo
from pyvo.dal import DALQueryError

from skydm.services.tap.uws.store import JobStore

from .conftest import LONG_QUERY, Service, make_catalog


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited.

    An exited worker stays a zombie until its parent reaps it; its parent
    (the forkserver) exits with the service, and whether the orphan is then
    reaped at once depends on the machine's init, so a zombie counts as gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # vanished between the two looks
    # The state is the field after the command, which is in parentheses.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_restart_keeps_completed_jobs(tmp_path: Path) -> None:
    truth: pa.Table = make_catalog(tmp_path)
    first = Service(tmp_path).start()
    try:
        tap = pyvo.dal.TAPService(first.url)
        done = tap.submit_job("SELECT objectId FROM Object WHERE objectId <= 7", maxrec=100)
        done.run().wait(timeout=60)
        assert done.phase == "COMPLETED"
        running = tap.submit_job(LONG_QUERY)
        running.run()
        deadline = time.monotonic() + 60  # generous: the machine may be loaded
        while running.phase != "EXECUTING" and time.monotonic() < deadline:
            time.sleep(0.05)
        store = JobStore(tmp_path / "tap" / "jobs" / "jobs.sqlite")
        running_id = running.url.rsplit("/", 1)[-1]
        while store.get(running_id).worker_pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = store.get(running_id).worker_pid
        assert worker is not None
    finally:
        first.stop(kill=True)  # no shutdown handlers: as if the machine crashed
    # The orphaned worker notices its service is gone and exits.  It checks
    # every 0.5 s, but it runs niced beside its query's threads: on a loaded
    # machine it may take seconds to be scheduled, so poll with a generous
    # deadline rather than expect it within a fixed time.
    deadline = time.monotonic() + 60
    while not _gone(worker):
        if time.monotonic() > deadline:
            pytest.fail(f"worker {worker} outlived the service by 60 s")
        time.sleep(0.1)

    second = Service(tmp_path).start()
    try:
        tap = pyvo.dal.TAPService(second.url)
        again = pyvo.dal.AsyncTAPJob(done.url.replace(str(first.port), str(second.port)))
        assert again.phase == "COMPLETED"
        result = again.fetch_result()
        assert sorted(result["objectId"].tolist()) == list(range(1, 8))
        assert truth.num_rows == 5000
        orphan = pyvo.dal.AsyncTAPJob(running.url.replace(str(first.port), str(second.port)))
        assert orphan.phase == "ERROR"
        with pytest.raises(DALQueryError, match="restarted"):
            orphan.raise_if_error()
    finally:
        second.stop()
