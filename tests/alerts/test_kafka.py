"""Alert distribution through a real Kafka-protocol broker (tansu)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from skydm.alerts.consumer import AlertConsumer, DedupStore
from skydm.alerts.outbox import Outbox
from skydm.alerts.produce import produce_visit_alerts
from skydm.alerts.schema import load_schema
from skydm.alerts.transport import KafkaTransport, stream_outbox
from skydm.ap.apdb import Apdb
from skydm.ap.synthetic import SyntheticField

pytestmark = pytest.mark.kafka

TOPIC = load_schema().default_topic
FAST = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def _produce(tmp: Path, visits: range, n: int = 40, **kw: object) -> tuple[Outbox, list]:
    field = SyntheticField(seed=5, n_variables=n)
    apdb = Apdb(tmp / "apdb.sqlite3")
    results = []
    for v in visits:
        sci, tmpl, diff, table = field.visit(v)
        results.append(
            produce_visit_alerts(
                table,
                diff,
                apdb=apdb,
                archive_dir=tmp / "archive",
                science=sci,
                template=tmpl,
                **kw,
            )
        )
    return Outbox(tmp / "archive" / "outbox.sqlite3"), results


def _ids(results: list) -> set[int]:
    from skydm.alerts.archive import read_archive

    return {p["diaSourceId"] for r in results for p in read_archive(r.archive)}


def _all_of(consumer: AlertConsumer, n: int) -> list:
    """The ``n`` alerts expected, then a check that nothing else is on the topic.

    Stops at ``n`` instead of waiting out seconds of silence: anything unwanted
    (an older alert a replay should skip, a duplicate, a rejected alert) lies
    in its partition before or among the wanted ones, so it is among the first
    ``n`` and fails the caller's comparison; what could only come after them
    (a duplicate or an extra at a partition's end) is already fetched when the
    last wanted alert is (``fetch.wait.max.ms`` is 50 ms), and the final poll
    must find it empty.
    """
    got = consumer.consume_until(n, timeout=30)
    assert len(got) == n, (len(got), n)
    rest = consumer.poll(1000, 0.5)
    consumer.close()
    assert rest == [], [a.dia_source_id for a in rest]
    return got


def test_stream_and_consume_decodes_what_was_archived(tmp_path: Path, broker) -> None:
    box, results = _produce(tmp_path, range(1, 3))
    expected = _ids(results)
    res = stream_outbox(box, KafkaTransport(broker.bootstrap, partitions=4))
    assert res.delivered == len(expected) and res.pending == 0 and not res.errors
    assert box.counts() == {"pending": 0, "delivered": len(expected)}
    consumer = AlertConsumer(broker.bootstrap, "g1", [TOPIC], config=FAST)
    got = consumer.consume_until(len(expected), timeout=60)
    consumer.close()
    assert {a.dia_source_id for a in got} == expected and len(got) == len(expected)
    one = got[0].decode()
    assert one["diaSourceId"] == got[0].dia_source_id
    assert one["diaObject"]["diaObjectId"] == got[0].dia_object_id
    assert len({a.partition for a in got}) > 1


def test_group_of_two_gets_every_alert_exactly_once_across_a_rebalance(
    tmp_path: Path, broker
) -> None:
    box, results = _produce(tmp_path, range(1, 5), n=60)
    expected = _ids(results)
    assert stream_outbox(box, KafkaTransport(broker.bootstrap, partitions=6)).pending == 0
    # Member A starts alone and reads part of the stream, then B joins: the
    # group rebalances while A is mid-stream.
    a = AlertConsumer(broker.bootstrap, "pair", [TOPIC], config=FAST)
    got_a = a.consume_until(len(expected) // 3, timeout=60)
    assert 0 < len(got_a) < len(expected)
    b = AlertConsumer(broker.bootstrap, "pair", [TOPIC], config=FAST)
    got_b: list = []
    stop = threading.Event()

    def run_b() -> None:
        while not stop.is_set():
            got_b.extend(b.poll(200, 0.3))
            b.commit()

    t = threading.Thread(target=run_b)
    t.start()
    # A goes on slowly until the group has rebalanced and B owns partitions.
    deadline = time.monotonic() + 60
    while not b.assignment and time.monotonic() < deadline:
        got_a.extend(a.poll(2, 0.1))
        a.commit()
        time.sleep(0.1)
    assert b.assignment and a.assignment, "the group should have rebalanced onto both members"
    assert len(got_a) + len(got_b) < len(expected)
    deadline = time.monotonic() + 90
    while len(got_a) + len(got_b) < len(expected) and time.monotonic() < deadline:
        got_a.extend(a.poll(200, 0.3))
        a.commit()
    time.sleep(1.0)  # anything more would be a duplicate: give it time to show up
    got_a.extend(a.poll(200, 0.5))
    stop.set()
    t.join()
    a.close()
    b.close()
    ids = [x.dia_source_id for x in got_a + got_b]
    assert len(got_b) > 0
    assert sorted(ids) == sorted(expected)  # every alert, exactly once


def test_replay_from_a_time_and_from_an_offset(tmp_path: Path, broker) -> None:
    box, first = _produce(tmp_path, range(1, 2))
    transport = KafkaTransport(broker.bootstrap, partitions=3)
    assert stream_outbox(box, transport).pending == 0
    time.sleep(1.0)
    cut = time.time()
    time.sleep(0.5)
    box.close()
    box, second = _produce(tmp_path, range(2, 3))
    assert stream_outbox(box, transport).pending == 0
    late = AlertConsumer(broker.bootstrap, "replay", [TOPIC], config=FAST, from_time=cut)
    got = _all_of(late, len(_ids(second)))
    assert {a.dia_source_id for a in got} == _ids(second)
    everything = AlertConsumer(broker.bootstrap, "replay-all", [TOPIC], config=FAST, from_offset=0)
    got = _all_of(everything, len(_ids(first) | _ids(second)))
    assert {a.dia_source_id for a in got} == _ids(first) | _ids(second)


def test_filtered_topic_gets_only_what_the_predicate_accepts(tmp_path: Path, broker) -> None:
    def brightening(alert: dict) -> bool:
        return alert["diaSource"]["psfFlux"] > 0

    box, results = _produce(
        tmp_path, range(1, 3), filtered_topics={"skydm-brightening": brightening}
    )
    assert stream_outbox(box, KafkaTransport(broker.bootstrap, partitions=2)).pending == 0
    from skydm.alerts.archive import read_archive

    want = {
        p["diaSourceId"]
        for r in results
        for p in read_archive(r.archive)
        if p["diaSource"]["psfFlux"] > 0
    }
    c = AlertConsumer(broker.bootstrap, "filt", ["skydm-brightening"], config=FAST)
    got = _all_of(c, len(want))
    assert want and {a.dia_source_id for a in got} == want
    assert all(a.decode()["diaSource"]["psfFlux"] > 0 for a in got)


def test_broker_killed_mid_visit_and_restarted_loses_nothing(tmp_path: Path, broker) -> None:
    box, results = _produce(tmp_path, range(1, 4), n=80)
    expected = _ids(results)
    total = len(expected)
    transport = KafkaTransport(broker.bootstrap, partitions=4, config={"message.timeout.ms": 3000})
    # Send the first part of the stream, then kill -9 the broker mid-visit.
    first = box.pending(total // 3)
    transport.ensure_topics([TOPIC])
    box.mark_delivered(transport.send(first, timeout=10))
    assert box.counts()["delivered"] == len(first)
    broker.kill()
    down = stream_outbox(box, transport, batch=50, send_timeout=4, retry_for=0)
    assert down.errors and down.pending == total - len(first)  # kept, not lost
    # The reason names the broker and says what to do, without librdkafka's repr.
    assert f"no answer from the Kafka broker at {broker.bootstrap}" in down.errors[0]
    assert "--bootstrap HOST:PORT" in down.errors[0] and "KafkaError{" not in down.errors[0]
    # Restart on the same port: memory storage, so the topic and the
    # acknowledged messages are gone; the outbox finds that out from the
    # offsets and sends everything again.
    broker.start()
    up = stream_outbox(box, transport, batch=50, send_timeout=10, retry_for=30)
    assert up.pending == 0 and up.requeued >= len(first)
    dedup = DedupStore(tmp_path / "seen.sqlite3")
    c = AlertConsumer(broker.bootstrap, "after-crash", [TOPIC], config=FAST, dedup=dedup)
    got = c.consume_until(total, timeout=60)
    c.close()
    assert {a.dia_source_id for a in got} == expected
    assert len(got) == total


def test_produce_streams_when_a_broker_is_given(tmp_path: Path, broker) -> None:
    _, results = _produce(
        tmp_path, range(1, 2), bootstrap=broker.bootstrap, kafka_config={"linger.ms": 1}
    )
    assert results[0].stream is not None and results[0].stream.pending == 0
    assert results[0].stream.delivered == results[0].n_alerts
    # The packets went ahead, block by block, while the visit was being made:
    # the outbox needed no send of its own, yet records every acknowledgement.
    assert results[0].stream.attempts == 0
    box = Outbox(tmp_path / "archive" / "outbox.sqlite3")
    rows = box._db.execute("SELECT count(*) FROM message WHERE state=1 AND kafka_offset >= 0")
    assert rows.fetchone()[0] == results[0].n_alerts
    c = AlertConsumer(broker.bootstrap, "p", [TOPIC], config=FAST)
    got = c.consume_until(results[0].n_alerts, timeout=30)
    c.close()
    assert {a.dia_source_id for a in got} == _ids(results)


def test_produce_with_the_broker_down_keeps_the_visit_for_later(tmp_path: Path, broker) -> None:
    from skydm.alerts.localbroker import free_port

    dead = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    box, results = _produce(
        tmp_path, range(1, 2), bootstrap=dead, kafka_config={"message.timeout.ms": 2000}
    )
    res = results[0]
    assert res.stream is not None and res.stream.errors and res.stream.delivered == 0
    assert res.stream.pending == res.n_alerts > 0
    assert any(dead in e and "check that a Kafka broker is running" in e for e in res.stream.errors)
    assert time.monotonic() - t0 < 60
    # The broker comes up: the outbox sends the whole visit.
    up = stream_outbox(box, KafkaTransport(broker.bootstrap, partitions=4), retry_for=30)
    assert up.pending == 0 and up.delivered == res.n_alerts
    c = AlertConsumer(broker.bootstrap, "late", [TOPIC], config=FAST)
    got = c.consume_until(res.n_alerts, timeout=30)
    c.close()
    assert {a.dia_source_id for a in got} == _ids(results)


def test_cli_produce_stream_consume(tmp_path: Path, broker, capsys: pytest.CaptureFixture) -> None:
    from skydm.cli.main import main

    field = SyntheticField(seed=9, n_variables=15)
    sci, tmpl, diff, table = field.visit(1)
    for name, exp in (("sci", sci), ("tmpl", tmpl), ("diff", diff)):
        exp.write(tmp_path / f"{name}.fits")
    table.write(tmp_path / "sources.ecsv")
    arch = tmp_path / "arch"
    common = ["--archive-dir", str(arch)]
    rc = main(
        [
            "alerts",
            "produce",
            "--diff",
            str(tmp_path / "diff.fits"),
            "--sources",
            str(tmp_path / "sources.ecsv"),
            "--science",
            str(tmp_path / "sci.fits"),
            "--template",
            str(tmp_path / "tmpl.fits"),
            *common,
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"{len(table)} alerts" in out
    rc = main(
        [
            "alerts",
            "stream",
            *common,
            "--bootstrap",
            broker.bootstrap,
            "--kafka-config",
            "linger.ms=2",
            # What a consumer without lz4 needs (the consumer below reads it).
            "--compression",
            "gzip",
        ]
    )
    assert rc == 0 and f"{len(table)} delivered, 0 pending" in capsys.readouterr().out
    rc = main(
        [
            "alerts",
            "consume",
            "--bootstrap",
            broker.bootstrap,
            "--group",
            "cli",
            "--kafka-config",
            "session.timeout.ms=6000",
            "--idle",
            "3",
            "--out",
            str(tmp_path / "got"),
        ]
    )
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "diaSourceId=" in ln]
    assert len(lines) == len(table) == len(list((tmp_path / "got").glob("*.json")))
    rc = main(["alerts", "stream", *common, "--bootstrap", "x", "--kafka-config", "bad"])
    assert rc == 2  # a usage error, as argparse's own
    assert "KEY=VALUE" in capsys.readouterr().err
