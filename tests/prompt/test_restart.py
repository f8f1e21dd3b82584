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
import time
from pathlib import Path

import pytest

from conftest import Service, TwoDetectorVisit, assert_every_alert_once, poll_table
from skydm.alerts.localbroker import LocalBroker
from skydm.prompt.timing import TimingStore

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def _preloads(repo: Path, after: float, n: int, timeout: float) -> dict[int, float]:
    """detector -> t_preload, once ``n`` detector-visits were preloaded after ``after``."""
    try:
        rows = poll_table(
            repo,
            "SELECT detector, t_preload FROM detector_visit WHERE t_preload > ?",
            (after,),
            timeout=timeout,
            until=lambda rows: len(rows) >= n,
            interval=0.1,
        )
    except TimeoutError as exc:
        raise AssertionError(f"fewer than {n} detectors preloaded: {exc}") from None
    return {int(d): float(t) for d, t in rows}


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
    two = TwoDetectorVisit.prepare(repo, broker.bootstrap)
    visit, dets = two.visit, two.dets

    args = ("--workers", "1", "--raw-timeout", "900", "--until-idle", "60")
    first = Service(repo, broker.bootstrap, *args)
    service.append(first)
    t0 = time.time()
    two.send_event(t0)
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
    assert two.land(repo) == 2
    two.producer.close()
    rc, log = second.stop_after(2, 600)
    assert rc == 0, log
    for v, _ in dets:
        assert f"resumed: visit {visit} detector {v.detector} (waiting)" in log

    rows = two.done_rows(repo, attempts=1)
    landed = min(r.stamps["raw"] for r in rows)
    assert max(preloaded.values()) < landed, "a preload waited for a raw"
    a, b = sorted(rows, key=lambda r: r.stamps["start"])
    # The second detector waited only for the first one's processing (one
    # worker), neither for its own preload nor for a raw.
    assert 0.0 <= b.stamps["start"] - a.stamps["alerts"] < 10.0, (a.stamps, b.stamps)

    assert_every_alert_once(repo, broker.bootstrap, rows)
    assert os.path.exists(repo / "prompt" / "prompt.sqlite3")
