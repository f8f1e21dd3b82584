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
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import DETECTORS, SIZE, Service, assert_every_alert_once
from skydm.alerts.localbroker import LocalBroker
from skydm.prompt.events import EventProducer
from skydm.prompt.simulate import NightConfig, land_raws, prepare_night, send_next_visit
from skydm.prompt.timing import STAMPS, TimingStore
from skydm.repo import Repository

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def _holding_while_processing(repo: Path, timeout: float) -> tuple[int, int, int]:
    """(detector held, detector in progress, pid) of a worker holding an un-exported
    detector while it processes another that it started after the first one's alerts."""
    db = repo / "prompt" / "prompt.sqlite3"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            con = sqlite3.connect(db, timeout=30)
            try:
                row = con.execute(
                    "SELECT a.detector, b.detector, a.pid FROM detector_visit a "
                    "JOIN detector_visit b ON a.pid = b.pid AND a.detector != b.detector "
                    "WHERE a.state = 'running' AND a.t_alerts IS NOT NULL "
                    "AND a.t_export IS NULL AND b.state = 'running' "
                    "AND b.t_start >= a.t_alerts AND b.t_alerts IS NULL LIMIT 1"
                ).fetchone()
            except sqlite3.OperationalError:  # the table is not made yet
                row = None
            finally:
                con.close()
            if row is not None:
                return int(row[0]), int(row[1]), int(row[2])
        time.sleep(0.05)
    raise AssertionError("no worker was seen processing a detector while holding another")


@pytest.mark.timeout(900)
def test_a_worker_processes_its_next_detector_before_exporting_and_a_kill_loses_nothing(
    repo: Path, broker: LocalBroker, service: list[Service]
) -> None:
    night = NightConfig(visits=1, detectors=DETECTORS, size=SIZE, templates=3)
    prepared = prepare_night(repo, night)
    visit = min(prepared.visits)
    dets = prepared.visits[visit][:2]
    prompt = prepared.prompt
    assert prompt.defer_export  # the default
    producer = EventProducer(broker.bootstrap)
    producer.ensure_topics([prompt.next_visit_topic, prompt.raw_topic])

    svc = Service(repo, broker.bootstrap, "--workers", "1", "--raw-timeout", "900",
                  "--until-idle", "60")  # fmt: skip
    service.append(svc)
    send_next_visit(producer, prompt, visit, dets, night, time.time())
    with Repository.open(repo, create=False) as r:
        assert land_raws(r, producer, prompt, dets) == 2
    producer.close()

    held, running, pid = _holding_while_processing(repo, timeout=300)
    os.kill(pid, signal.SIGKILL)
    rc, log = svc.stop_after(2, 600)
    assert rc == 0, log
    assert f"retry: visit {visit} detector {held} (its worker died" in log
    assert f"retry: visit {visit} detector {running} (its worker died" in log

    store = TimingStore(repo)
    rows = store.rows()
    store.close()
    assert [(r.detector, r.state) for r in rows] == [(v.detector, "done") for v, _ in dets], [
        (r.detector, r.state, r.error) for r in rows
    ]
    assert all(set(STAMPS) <= set(r.stamps) and r.attempts == 2 for r in rows)
    # The new worker, too, started its second detector before exporting the first.
    a, b = sorted(rows, key=lambda r: r.stamps["start"])
    assert a.stamps["alerts"] <= b.stamps["start"] < a.stamps["export"], (a.stamps, b.stamps)
    assert b.stamps["alerts"] <= b.stamps["export"]

    assert_every_alert_once(repo, broker.bootstrap, rows)
