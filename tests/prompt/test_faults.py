"""Faults, as Rubin's Prompt Processing handles them: a worker killed, a raw that never lands.

Each test runs ``skydm prompt serve`` (2 worker processes) against a real
Kafka-protocol broker (tansu) and drives it with ``skydm prompt simulate``:
4 detectors of 256x256 pixels, a 30 s cadence run 15 times faster than real
time (a visit every 2 s of wall time) to fit CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import DETECTORS, Service, assert_every_alert_once, poll_table, skydm
from skydm.alerts.localbroker import LocalBroker
from skydm.prompt.timing import STAMPS, TimingStore

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def _simulate(repo: Path, bootstrap: str, visits: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        skydm("prompt", "simulate", "--repo", str(repo), "--bootstrap", bootstrap,
              "--visits", str(visits), "--detectors", str(DETECTORS), "--size", "256",
              "--cadence", "30", "--speedup", "15", *extra),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _running_mid_visit(repo: Path, timeout: float) -> tuple[int, int, int]:
    """(visit, detector, pid) of a worker that started on its raw but has not associated."""
    try:
        rows = poll_table(
            repo,
            "SELECT visit, detector, pid FROM detector_visit WHERE state='running' "
            "AND t_start IS NOT NULL AND t_association IS NULL AND pid IS NOT NULL "
            "ORDER BY visit LIMIT 1",
            timeout=timeout,
        )
    except TimeoutError:
        raise AssertionError("no worker was ever seen mid-detector") from None
    visit, det, pid = rows[0]
    return int(visit), int(det), int(pid)


def test_worker_killed_mid_visit_loses_and_duplicates_no_alert(
    repo: Path, broker: LocalBroker, service: list[Service]
) -> None:
    svc = Service(repo, broker.bootstrap, "--workers", "2", "--until-idle", "10")
    service.append(svc)
    sim = _simulate(repo, broker.bootstrap, 3)
    visit, det, pid = _running_mid_visit(repo, timeout=600)
    os.kill(pid, signal.SIGKILL)
    out, _ = sim.communicate(timeout=600)
    assert sim.returncode == 0, out
    rc, log = svc.stop_after(3 * DETECTORS, 900)
    assert rc == 0, log
    assert f"retry: visit {visit} detector {det} (its worker died" in log

    store = TimingStore(repo)
    rows = store.rows()
    store.close()
    assert len(rows) == 3 * DETECTORS
    assert all(r.state == "done" for r in rows), [(r.visit, r.detector, r.error) for r in rows]
    killed = next(r for r in rows if (r.visit, r.detector) == (visit, det))
    assert killed.attempts >= 2 and set(STAMPS) <= set(killed.stamps)

    assert_every_alert_once(repo, broker.bootstrap, rows)


def test_a_raw_that_never_arrives_times_out_and_the_service_goes_on(
    repo: Path, broker: LocalBroker, service: list[Service], capsys: pytest.CaptureFixture[str]
) -> None:
    from skydm.cli.main import main

    svc = Service(repo, broker.bootstrap, "--raw-timeout", "6", "--until-idle", "10")
    service.append(svc)
    sim = _simulate(repo, broker.bootstrap, 3, "--missing", "2:1")
    out, _ = sim.communicate(timeout=600)
    assert sim.returncode == 0 and "1 withheld" in out, out
    rc, log = svc.stop_after(3 * DETECTORS, 900)
    assert rc == 0, log
    store = TimingStore(repo)
    rows = store.rows()
    store.close()
    visits = sorted({r.visit for r in rows})
    lost = [r for r in rows if r.state != "done"]
    assert [(r.visit, r.detector, r.state) for r in lost] == [(visits[1], 1, "timed_out")]
    assert "timed out" in (lost[0].error or "")
    assert f"timed_out: visit {visits[1]} detector 1" in log
    # The visit after it was processed in full.
    assert all(r.state == "done" for r in rows if r.visit == visits[2])
    capsys.readouterr()
    assert main(["prompt", "status", "--repo", str(repo)]) == 0
    text = capsys.readouterr().out
    assert "11 done, 1 timed_out" in text
    assert f"timed_out: visit {visits[1]} detector 1: no raw arrived" in text
