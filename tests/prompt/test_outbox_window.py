"""The duplicate window: a drainer killed after Kafka acknowledged, before the outbox recorded it.

A real ``kill -9`` of a process draining a real outbox to a real
Kafka-protocol broker (tansu), at the one moment that matters: the delivery
reports are in, the outbox has not recorded them.  The retry must send
every alert once in all (counted by an independent consumer).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import read_alerts
from skydm.alerts.archive import read_archive
from skydm.alerts.localbroker import LocalBroker
from skydm.alerts.outbox import Outbox
from skydm.alerts.produce import produce_visit_alerts
from skydm.alerts.schema import load_schema
from skydm.alerts.transport import KafkaTransport, stream_outbox
from skydm.ap.apdb import Apdb
from skydm.ap.synthetic import SyntheticField

pytestmark = pytest.mark.kafka

# Drains the outbox; killed by SIGKILL the moment the first batch's reports
# are about to be recorded (after the broker acknowledged every message).
_DRAIN_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from skydm.alerts.outbox import Outbox
    from skydm.alerts.transport import KafkaTransport, stream_outbox

    def die(self, deliveries):
        print(len(deliveries), "acknowledged", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    Outbox.mark_delivered = die
    stream_outbox(Outbox(sys.argv[1]), KafkaTransport(sys.argv[2], partitions=3), batch=10)
    """
)


def test_a_drainer_killed_after_the_ack_sends_no_alert_twice(
    tmp_path: Path, broker: LocalBroker
) -> None:
    field = SyntheticField(seed=5, n_variables=30)
    apdb = Apdb(tmp_path / "apdb.sqlite3")
    archives = []
    for v in (1,):
        sci, tmpl, diff, table = field.visit(v)
        archives.append(
            produce_visit_alerts(
                table, diff, apdb=apdb, archive_dir=tmp_path / "archive", science=sci,
                template=tmpl,
            ).archive
        )  # fmt: skip
    apdb.close()
    expected = {p["diaSourceId"] for a in archives for p in read_archive(a)}
    assert len(expected) > 10  # more than one batch: the kill leaves some unsent
    box_path = tmp_path / "archive" / "outbox.sqlite3"

    killed = subprocess.run(
        [sys.executable, "-c", _DRAIN_AND_DIE, str(box_path), broker.bootstrap],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "10 acknowledged" in killed.stdout
    box = Outbox(box_path)
    # Nothing recorded delivered: 10 messages are in Kafka, the outbox cannot tell.
    assert box.counts() == {"pending": len(expected), "delivered": 0}
    assert sum(len(v) for v in box.in_flight().values()) == 10

    result = stream_outbox(box, KafkaTransport(broker.bootstrap, partitions=3))
    assert result.pending == 0 and not result.errors
    assert result.settled == 10 and result.delivered == len(expected) - 10
    assert box.counts() == {"pending": 0, "delivered": len(expected)}
    box.close()

    ids = read_alerts(broker.bootstrap, load_schema().default_topic, expect=len(expected))
    assert len(ids) == len(set(ids)), "an alert was delivered twice"
    assert set(ids) == expected
