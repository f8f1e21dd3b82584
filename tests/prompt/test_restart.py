"""Preloads free the worker; a service killed with ``kill -9`` resumes its queue from the table.

One real ``skydm prompt serve`` process with ONE worker, a real
Kafka-protocol broker (tansu), a 2-detector visit (256x256) whose raws land
together:

* the worker preloads both detectors on the next-visit event, before any
  raw lands (it is not held by the first detector waiting for its raw);
* the service is then killed with SIGKILL (its worker exits with it), after
  the event (whose Kafka offset it committed) and before the raws; a new
  service reads the two waiting detector-visits back from its table,
  preloads them again, and processes them when the raws land: both done,
  the second started as soon as the first ended, and an independent
  consumer sees every diaSourceId exactly once.
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


def _preloads(repo: Path, after: float, n: int, timeout: float) -> dict[int, float]:
    """detector -> t_preload, once ``n`` detector-visits were preloaded after ``after``."""
    db = repo / "prompt" / "prompt.sqlite3"
    deadline = time.monotonic() + timeout
    found: dict[int, float] = {}
    while time.monotonic() < deadline:
        if db.exists():
            con = sqlite3.connect(db, timeout=30)
            try:
                found = {
                    int(d): float(t)
                    for d, t in con.execute(
                        "SELECT detector, t_preload FROM detector_visit WHERE t_preload > ?",
                        (after,),
                    )
                }
            except sqlite3.OperationalError:  # the table is not made yet
                found = {}
            finally:
                con.close()
            if len(found) >= n:
                return found
        time.sleep(0.1)
    raise AssertionError(f"only {len(found)} of {n} detectors preloaded in {timeout:.0f} s")


def _workers_of(pid: int) -> list[int]:
    """Process ids of the service's worker processes (its multiprocessing children)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            cmd = Path(f"/proc/{k}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(int(k))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(1200)
def test_preload_frees_the_worker_and_a_killed_service_resumes_its_queue(
    repo: Path, broker: LocalBroker, service: list[Service]
) -> None:
    night = NightConfig(visits=1, detectors=DETECTORS, size=SIZE, templates=3)
    prepared = prepare_night(repo, night)
    visit = min(prepared.visits)
    dets = prepared.visits[visit][:2]
    prompt = prepared.prompt
    producer = EventProducer(broker.bootstrap)
    producer.ensure_topics([prompt.next_visit_topic, prompt.raw_topic])

    args = ("--workers", "1", "--raw-timeout", "900", "--until-idle", "60")
    first = Service(repo, broker.bootstrap, *args)
    service.append(first)
    t0 = time.time()
    send_next_visit(producer, prompt, visit, dets, night, t0)
    # One worker preloads both detectors with no raw landed: it is not held
    # by the first one waiting for its raw.
    _preloads(repo, t0, 2, timeout=300)
    workers = _workers_of(first.proc.pid)
    assert workers, "the service has no worker process"
    first.proc.send_signal(signal.SIGKILL)
    first.wait(60)
    killed_at = time.time()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "a worker outlived its killed service"
    store = TimingStore(repo)
    assert [(r.detector, r.state) for r in store.open_jobs()] == [(d.detector, "waiting")
                                                                  for d, _ in dets]  # fmt: skip
    store.close()

    second = Service(repo, broker.bootstrap, *args)
    service.append(second)
    # The event is not read again (its offset was committed): the table has it.
    preloaded = _preloads(repo, killed_at, 2, timeout=300)
    with Repository.open(repo, create=False) as r:
        assert land_raws(r, producer, prompt, dets) == 2
    producer.close()
    rc, log = second.stop_after(2, 600)
    assert rc == 0, log
    for v, _ in dets:
        assert f"resumed: visit {visit} detector {v.detector} (waiting)" in log

    store = TimingStore(repo)
    rows = store.rows()
    store.close()
    assert [(r.detector, r.state) for r in rows] == [(v.detector, "done") for v, _ in dets], [
        (r.detector, r.state, r.error) for r in rows
    ]
    assert all(set(STAMPS) <= set(r.stamps) and r.attempts == 1 for r in rows)
    landed = min(r.stamps["raw"] for r in rows)
    assert max(preloaded.values()) < landed, "a preload waited for a raw"
    a, b = sorted(rows, key=lambda r: r.stamps["start"])
    # The second detector waited only for the first one's processing (one
    # worker), neither for its own preload nor for a raw.
    assert 0.0 <= b.stamps["start"] - a.stamps["alerts"] < 10.0, (a.stamps, b.stamps)

    assert_every_alert_once(repo, broker.bootstrap, rows)
    assert os.path.exists(repo / "prompt" / "prompt.sqlite3")
