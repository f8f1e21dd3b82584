"""Alert commands with a wrong broker, topic or signal (issue 14, items 6, 8 and 9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skydm.alerts.localbroker import LocalBroker, free_port
from skydm.cli.main import main
from skydm.errors import MissingExtraError
from skydm_testing import require_tool

pytestmark = pytest.mark.kafka


def _skydm(*args: str) -> list[str]:
    return [sys.executable, "-m", "skydm", *args]


def test_unreachable_broker_is_reported_within_the_stated_time() -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    proc = subprocess.run(
        _skydm(
            "alerts",
            "consume",
            "--group",
            "g",
            "--bootstrap",
            f"127.0.0.1:{port}",
            "--idle",
            "3",
            "--max",
            "1",
            "--connect-timeout",
            "2",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"no answer from the Kafka broker at 127.0.0.1:{port} within 2 s" in lines[0]
    assert "check --bootstrap" in lines[0]
    assert "Traceback" not in proc.stderr
    assert elapsed < 2 + 20  # the stated time plus start-up on a busy machine


def test_unknown_topic_is_named(broker: LocalBroker, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "alerts",
            "consume",
            "--group",
            "g",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            "nosuchtopic",
            "--idle",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert f"topic 'nosuchtopic' does not exist on {broker.bootstrap}" in err
    assert "give an existing one with --topic" in err
    assert "KafkaException" not in err and "UNKNOWN_TOPIC" not in err


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--max", "-1", "--max -1 is not allowed"),
        ("--idle", "0", "--idle 0.0 is not allowed"),
        ("--connect-timeout", "-5", "--connect-timeout -5.0 is not allowed"),
    ],
)
def test_consume_options_checked_before_connecting(
    option: str, value: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["alerts", "consume", "--group", "g", "--bootstrap", "127.0.0.1:1", option, value]
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start_broker_command(port: int) -> tuple[subprocess.Popen[str], int]:
    try:
        LocalBroker(port)  # finds the binary, or says which extra to install
    except MissingExtraError as exc:
        require_tool("tansu broker", False, str(exc))
    proc = subprocess.Popen(
        _skydm("alerts", "broker", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "SKYDM_KAFKA_BOOTSTRAP" in line:
            break
    (child,) = _children(proc.pid)
    return proc, child


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigterm_stops_the_broker_child_and_frees_the_port() -> None:
    port = free_port()
    proc, child = _start_broker_command(port)
    assert _alive(child) and not _port_free(port)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in err and "stopped (SIGTERM)" in err
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
    assert _port_free(port)


def test_a_broker_child_that_dies_is_reported_without_traceback() -> None:
    port = free_port()
    proc, child = _start_broker_command(port)
    os.kill(child, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in err and "ProcessLookupError" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert f"the tansu broker on 127.0.0.1:{port} exited by itself" in lines[0]
    assert "start it again with `skydm alerts broker`" in lines[0]


def test_stream_detects_a_lost_log_at_start_up(
    tmp_path: Path, broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    from skydm.alerts.outbox import Outbox
    from skydm.alerts.produce import produce_visit_alerts
    from skydm.ap.apdb import Apdb
    from skydm.ap.synthetic import SyntheticField

    field = SyntheticField(seed=4, n_variables=8)
    arch = tmp_path / "arch"
    arch.mkdir()
    apdb = Apdb(arch / "apdb.sqlite3")
    try:
        for visit in (1, 2):
            _, _, diff, table = field.visit(visit)
            produce_visit_alerts(table, diff, apdb=apdb, archive_dir=arch)
    finally:
        apdb.close()
    common = ["alerts", "stream", "-q", "--archive-dir", str(arch), "--partitions", "2"]
    assert main([*common, "--bootstrap", broker.bootstrap]) == 0
    total = int(capsys.readouterr().out.split()[0])
    assert total > 0
    broker.kill()
    broker.start()  # same port, memory storage: every log is gone
    assert main([*common, "--bootstrap", broker.bootstrap, "--retry-for", "30"]) == 0
    captured = capsys.readouterr()
    lost = [line for line in captured.err.splitlines() if "lost partition" in line]
    assert lost, captured.err
    assert all("messages are queued again" in line for line in lost)
    assert sum(int(line.split("its ")[1].split()[0]) for line in lost) == total
    assert captured.out.strip().endswith(f"{total} delivered, 0 pending")
    box = Outbox(arch / "outbox.sqlite3")
    try:
        assert box.counts() == {"pending": 0, "delivered": total}
    finally:
        box.close()


def test_stream_progress_never_counts_past_its_total(tmp_path: Path, broker: LocalBroker) -> None:
    """Messages re-queued mid-stream (a lost log found from the offsets) grow the total."""
    from skydm.alerts.outbox import Outbox
    from skydm.alerts.produce import produce_visit_alerts
    from skydm.alerts.transport import KafkaTransport, stream_outbox
    from skydm.ap.apdb import Apdb
    from skydm.ap.synthetic import SyntheticField
    from skydm.progress import Progress

    field = SyntheticField(seed=6, n_variables=30)
    apdb = Apdb(tmp_path / "apdb.sqlite3")
    try:
        _, _, diff, table = field.visit(1)
        produce_visit_alerts(table, diff, apdb=apdb, archive_dir=tmp_path / "arch")
        box = Outbox(tmp_path / "arch" / "outbox.sqlite3")
        transport = KafkaTransport(broker.bootstrap, partitions=1)
        try:
            first = stream_outbox(box, transport, retry_for=30)
            assert first.pending == 0
            broker.kill()
            broker.start()  # the log is gone; the outbox does not know yet
            transport.close()
            transport = KafkaTransport(broker.bootstrap, partitions=1)
            _, _, diff, table = field.visit(2)
            produce_visit_alerts(table, diff, apdb=apdb, archive_dir=tmp_path / "arch")
            pending = box.counts()["pending"]
            bar = Progress("alerts: sent", pending, quiet=True)
            second = stream_outbox(box, transport, retry_for=30, progress=bar)
        finally:
            transport.close()
            box.close()
    finally:
        apdb.close()
    assert second.requeued == first.delivered > 0
    assert second.pending == 0
    assert bar.total == pending + second.requeued
    assert bar.done <= bar.total


def test_unreachable_broker_message_says_what_to_do() -> None:
    """librdkafka's error, as ``KafkaTransport`` gets it, becomes one readable line."""
    ck = pytest.importorskip("confluent_kafka")
    from skydm.alerts.transport import BrokerUnavailableError, broker_unreachable

    exc = ck.KafkaException(ck.KafkaError(ck.KafkaError._TRANSPORT, "Broker transport failure"))
    err = broker_unreachable("db.example:9092", exc)
    assert isinstance(err, BrokerUnavailableError)
    text = str(err)
    assert text.startswith("no answer from the Kafka broker at db.example:9092 (")
    assert "Broker transport failure" in text and "KafkaError{" not in text
    assert "check that a Kafka broker is running at that address" in text
    assert "--bootstrap HOST:PORT" in text and "\n" not in text
