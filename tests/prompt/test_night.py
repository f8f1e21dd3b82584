"""A simulated night: 20 visits x 4 detectors at a 30 s cadence, served end to end.

``skydm prompt serve`` (2 worker processes, Prometheus metrics on) against a
real Kafka-protocol broker (tansu), driven by ``skydm prompt simulate``.  To
fit CI the 30 s cadence is run 15 times faster than real time (a
next-visit event every 2 s of wall time, each raw 2 s after its event), and
detectors are 256x256 pixels; the service then works through a backlog, so
visits overlap in processing (neighbouring visits' detectors share their
sky and associate under the locks).  Every alert is counted by a plain
confluent-kafka consumer.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import DETECTORS, Service, ended_count, read_alerts, skydm
from skydm.alerts.localbroker import LocalBroker
from skydm.alerts.schema import load_schema
from skydm.ap.apdb import Apdb
from skydm.prompt.timing import STAMPS, TimingStore

pytestmark = [pytest.mark.slow, pytest.mark.kafka]
VISITS = 20


@pytest.mark.timeout(3000)
def test_a_night_of_20_visits_by_4_detectors(
    repo: Path, broker: LocalBroker, service: list[Service], capsys: pytest.CaptureFixture[str]
) -> None:
    from skydm.cli.main import main

    svc = Service(
        repo, broker.bootstrap, "--workers", "2", "--until-idle", "15", "--metrics-port", "0"
    )
    service.append(svc)
    sim = subprocess.run(
        skydm("prompt", "simulate", "--repo", str(repo), "--bootstrap", broker.bootstrap,
              "--visits", str(VISITS), "--detectors", str(DETECTORS), "--size", "256",
              "--cadence", "30", "--speedup", "15"),
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stdout + sim.stderr
    assert f"{VISITS} visits x {DETECTORS} detectors" in sim.stdout

    # The metrics endpoint, while the service works through the night.
    port = int(re.search(r"metrics on http://0.0.0.0:(\d+)/metrics", svc.log.read_text())[1])  # type: ignore[index]
    deadline = time.monotonic() + 600
    while ended_count(repo, ("done",)) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    # The table says "done" before the service has the worker's result and
    # observes its latency, so the metrics are polled until they show it.
    latency_count = 0.0
    metrics = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        m = re.search(r'skydm_prompt_stage_seconds_count\{stage="latency"\} (\S+)', metrics)
        latency_count = float(m[1]) if m is not None else 0.0
        if latency_count >= 1.0:
            break
        time.sleep(0.2)
    assert latency_count >= 1.0, metrics[:2000]

    # Stopped once every detector-visit ended (--until-idle is the backstop).
    rc, log = svc.stop_after(VISITS * DETECTORS, 2400)
    assert rc == 0, log
    store = TimingStore(repo)
    rows = store.rows()
    store.close()
    # Every visit processed: every detector-visit done, with every stage stamped.
    assert len({r.visit for r in rows}) == VISITS and len(rows) == VISITS * DETECTORS
    assert all(r.state == "done" for r in rows), [(r.visit, r.detector, r.error) for r in rows]
    for r in rows:
        assert set(STAMPS) <= set(r.stamps), (r.visit, r.detector, r.stamps)
        order = [r.stamps[s] for s in ("start", "calibrate", "diffim", "association", "alerts")]
        assert order == sorted(order) and r.stamps["raw"] <= r.stamps["start"]

    # Every alert delivered, once: an independent consumer against the APDB.
    apdb = Apdb(repo / "apdb.sqlite3")
    n_sources = apdb.count("DiaSource")
    objects = apdb.objects_in_region([(0.0, 360.0)], (-90.0, 90.0))
    apdb.close()
    assert n_sources == sum(r.n_alerts or 0 for r in rows) > 0
    ids = read_alerts(broker.bootstrap, load_schema().default_topic, expect=n_sources)
    assert len(ids) == len(set(ids)) == n_sources

    # Visits overlapping in processing made no twin DIA objects (two within 0.3").
    ra = np.array([o["ra"] for o in objects])
    dec = np.array([o["dec"] for o in objects])
    for i in range(len(objects)):
        sep = np.hypot((ra - ra[i]) * np.cos(np.radians(dec[i])), dec - dec[i]) * 3600.0
        assert np.sum(sep < 0.3) == 1, objects[i]

    capsys.readouterr()
    assert main(["prompt", "status", "--repo", str(repo)]) == 0
    text = capsys.readouterr().out
    assert (
        f"{VISITS} visits, {VISITS * DETECTORS} detector-visits: {VISITS * DETECTORS} done" in text
    )
    for stage in ("preload", "calibrate", "diffim", "association", "alerts", "latency"):
        line = next(li for li in text.splitlines() if li.startswith(stage))
        n, p50, p95 = line.split()[1:4]
        assert int(n) == VISITS * DETECTORS and 0 <= float(p50) <= float(p95)
