"""``skydm prompt serve --dask local:2``: detectors as tasks on a real Dask ``LocalCluster``.

The service runs on a ``distributed.LocalCluster`` of two worker processes
(one thread each) against a real Kafka-protocol broker (tansu); one visit of
4 detectors (256x256) is sent by ``skydm prompt simulate`` and every alert
is counted by an independent confluent-kafka consumer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import DETECTORS, Service, assert_every_alert_once, skydm
from skydm.alerts.localbroker import LocalBroker
from skydm.prompt.timing import STAMPS, TimingStore

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def test_a_visit_served_on_a_dask_local_cluster(
    repo: Path, broker: LocalBroker, service: list[Service]
) -> None:
    pytest.importorskip("distributed")
    svc = Service(
        repo, broker.bootstrap, "--dask", "local:2", "--workers", "2", "--until-idle", "4"
    )
    service.append(svc)
    sim = subprocess.run(
        skydm("prompt", "simulate", "--repo", str(repo), "--bootstrap", broker.bootstrap,
              "--visits", "1", "--detectors", str(DETECTORS), "--size", "256",
              "--cadence", "30", "--speedup", "15"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stdout + sim.stderr
    rc, log = svc.stop_after(DETECTORS, 300)
    assert rc == 0, log

    store = TimingStore(repo)
    rows = store.rows()
    store.close()
    assert len(rows) == DETECTORS
    assert all(r.state == "done" for r in rows), [(r.detector, r.error) for r in rows]
    for r in rows:
        assert set(STAMPS) <= set(r.stamps), (r.detector, r.stamps)
    # The Dask workers, not the service, ran them: worker pids other than the service's.
    assert {r.pid for r in rows}.isdisjoint({svc.proc.pid})

    assert_every_alert_once(repo, broker.bootstrap, rows)
