"""``skydm ingest --notify``: one raw-arrival notification per raw, after it is registered."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from skydm.alerts.localbroker import LocalBroker
from skydm.prompt.events import RawArrival, parse_event
from skydm.repo import DataId, Repository

pytestmark = pytest.mark.kafka


def test_ingest_notifies_each_raw(tmp_path: Path, broker: LocalBroker) -> None:
    import confluent_kafka as ck

    from skydm.cli.main import main
    from skydm.sim import SurveyConfig, simulate_survey
    from skydm.sim.io import write_visit

    survey = simulate_survey(
        SurveyConfig(seed=3, shape=(64, 64), n_visits=1, n_stars=5, n_galaxies=1,
                     n_detectors=2, artefacts=(), n_transients=0, n_variables=0, n_movers=0)
    )  # fmt: skip
    files = [write_visit(v, tmp_path / "raws", clean=False) for v in survey.visits]
    repo = tmp_path / "repo"
    argv = ["ingest", "--repo", str(repo), "--notify", broker.bootstrap, "-q", *map(str, files)]
    assert main(argv) == 0

    consumer = ck.Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": uuid.uuid4().hex,
         "auto.offset.reset": "earliest"}
    )  # fmt: skip
    # Every partition from its start, without a consumer group (whose join the
    # broker holds for half the session timeout).
    topic = "skydm-raw-arrivals"
    parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in parts])
    got: list[RawArrival] = []
    try:
        for _ in range(60):
            for m in consumer.consume(10, timeout=0.5):
                if m.error() is None:
                    event = parse_event(m.value())
                    assert isinstance(event, RawArrival)
                    got.append(event)
            if len(got) >= 2:
                break
    finally:
        consumer.close()
    assert sorted((e.visit, e.detector) for e in got) == [(1, 0), (1, 1)]
    with Repository.open(repo) as r:
        for e in got:
            assert r.find("raw", DataId(e.instrument, detector=e.detector, visit=e.visit,
                                        band=e.band)) is not None  # fmt: skip
