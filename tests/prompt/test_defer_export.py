"""Deferred exports: a worker processes its next detector before writing the first one's outputs.

One real ``skydm prompt serve`` process with ONE worker (``defer_export``,
the default), a real Kafka-protocol broker (tansu), a 2-detector visit
(256x256) whose raws land together:

* once the first detector's alerts are acknowledged, the worker starts the
  second one while it still holds the first one's outputs (its row
  ``running``, ``alerts`` stamped, no ``export``);
* the worker is killed with SIGKILL at that moment: the service computes
  the held detector again (and the one in progress), both end ``done``
  with every stamp, the new worker again starts its second detector
  before exporting its first, and an independent consumer sees every
  diaSourceId exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import Service, TwoDetectorVisit, assert_every_alert_once, poll_table
from skydm.alerts.localbroker import LocalBroker

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def _holding_while_processing(repo: Path, timeout: float) -> tuple[int, int, int]:
    """(detector held, detector in progress, pid) of a worker holding an un-exported
    detector while it processes another that it started after the first one's alerts."""
    try:
        rows = poll_table(
            repo,
            "SELECT a.detector, b.detector, a.pid FROM detector_visit a "
            "JOIN detector_visit b ON a.pid = b.pid AND a.detector != b.detector "
            "WHERE a.state = 'running' AND a.t_alerts IS NOT NULL "
            "AND a.t_export IS NULL AND b.state = 'running' "
            "AND b.t_start >= a.t_alerts AND b.t_alerts IS NULL LIMIT 1",
            timeout=timeout,
        )
    except TimeoutError:
        raise AssertionError(
            "no worker was seen processing a detector while holding another"
        ) from None
    held, running, pid = rows[0]
    return int(held), int(running), int(pid)


@pytest.mark.timeout(900)
def test_a_worker_processes_its_next_detector_before_exporting_and_a_kill_loses_nothing(
    repo: Path, broker: LocalBroker, service: list[Service]
) -> None:
    two = TwoDetectorVisit.prepare(repo, broker.bootstrap)
    visit = two.visit
    assert two.prompt.defer_export  # the default

    svc = Service(repo, broker.bootstrap, "--workers", "1", "--raw-timeout", "900",
                  "--until-idle", "60")  # fmt: skip
    service.append(svc)
    two.send_event(time.time())
    assert two.land(repo) == 2
    two.producer.close()

    held, running, pid = _holding_while_processing(repo, timeout=300)
    os.kill(pid, signal.SIGKILL)
    rc, log = svc.stop_after(2, 600)
    assert rc == 0, log
    assert f"retry: visit {visit} detector {held} (its worker died" in log
    assert f"retry: visit {visit} detector {running} (its worker died" in log

    rows = two.done_rows(repo, attempts=2)
    # The new worker, too, started its second detector before exporting the first.
    a, b = sorted(rows, key=lambda r: r.stamps["start"])
    assert a.stamps["alerts"] <= b.stamps["start"] < a.stamps["export"], (a.stamps, b.stamps)
    assert b.stamps["alerts"] <= b.stamps["export"]

    assert_every_alert_once(repo, broker.bootstrap, rows)
