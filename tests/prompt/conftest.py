"""Shared fixtures of the prompt-processing tests: templates made once, a service process."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from skydm.prompt.simulate import NightConfig, prepare_night

#: The focal plane of every service test: 4 detectors of 256x256 pixels.
DETECTORS, SIZE = 4, 256


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding templates (3 visits of the simulated field coadded)."""
    root = tmp_path_factory.mktemp("prompt-templates") / "repo"
    prepare_night(
        root, NightConfig(visits=1, detectors=DETECTORS, size=SIZE, templates=3), render=False
    )
    return root


@pytest.fixture
def repo(template_repo: Path, tmp_path: Path) -> Path:
    """A copy of the template repository for one test."""
    dest = tmp_path / "repo"
    shutil.copytree(template_repo, dest)
    return dest


def skydm(*args: str) -> list[str]:
    """The command line of ``skydm ARGS`` with this interpreter."""
    return [sys.executable, "-m", "skydm", *args]


class Service:
    """``skydm prompt serve`` running in a process of its own."""

    def __init__(self, repo: Path, bootstrap: str, *extra: str) -> None:
        self.log = repo.parent / f"serve-{uuid.uuid4().hex[:6]}.log"
        self._fh = self.log.open("w")
        self.proc = subprocess.Popen(
            skydm("prompt", "serve", "--repo", str(repo), "--bootstrap", bootstrap, *extra),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def ended(self) -> int:
        """Detector-visits the service logged as ended (done, timed out or failed for good)."""
        text = self.log.read_text()
        return len(re.findall(r"^(?:done|timed_out|failed): visit ", text, flags=re.MULTILINE))

    def stop_after(self, n: int, timeout: float) -> tuple[int, str]:
        """Exit status and output, once the service logged ``n`` detector-visits ended.

        The service is then stopped with SIGTERM (as an operator stops it)
        instead of waiting out its ``--until-idle`` time, which stays as the
        backstop: a service that exits by itself first (a detector that
        never ends) is waited for as usual.  Its log line comes after its
        table's row, so every row is final by then.
        """
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline and self.ended() < n:
            time.sleep(0.2)
        if self.proc.poll() is None and time.monotonic() < deadline:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(max(60.0, deadline - time.monotonic()))

    def wait(self, timeout: float) -> tuple[int, str]:
        """Exit status and output, once it ended."""
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._fh.close()
        return rc, self.log.read_text()


def poll_table(
    repo: Path,
    sql: str,
    params: Sequence[Any] = (),
    *,
    timeout: float,
    until: Callable[[list[Any]], bool] = bool,
    interval: float = 0.05,
) -> list[Any]:
    """Rows of ``sql`` on the service's table, polled until ``until(rows)`` holds.

    Returns the last rows read once ``until`` holds, or raises
    :class:`TimeoutError` after ``timeout`` seconds (the table may not
    exist yet: the service makes it when it starts).
    """
    db = repo / "prompt" / "prompt.sqlite3"
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        if db.exists():
            con = sqlite3.connect(db, timeout=30)
            try:
                rows = con.execute(sql, tuple(params)).fetchall()
            except sqlite3.OperationalError:  # the service has not made its table yet
                rows = []
            finally:
                con.close()
            if until(rows):
                return rows
        time.sleep(interval)
    raise TimeoutError(f"{sql!r} gave {rows} after {timeout:.0f} s")


@dataclass
class TwoDetectorVisit:
    """The first two detectors of a one-visit night, ready to send (topics made).

    Attributes
    ----------
    night : NightConfig
        The night (one visit of the test focal plane).
    visit : int
        Its visit number.
    dets : list
        ``(SimVisit, raw path)`` of its first two detectors.
    prompt : PromptConfig
        The topics and settings saved with the templates.
    producer : EventProducer
        Connected to the test's broker.
    """

    night: NightConfig
    visit: int
    dets: list[Any]
    prompt: Any
    producer: Any

    @classmethod
    def prepare(cls, repo: Path, bootstrap: str) -> TwoDetectorVisit:
        """Render the night in ``repo`` and make the service's topics."""
        from skydm.prompt.events import EventProducer

        night = NightConfig(visits=1, detectors=DETECTORS, size=SIZE, templates=3)
        prepared = prepare_night(repo, night)
        visit = min(prepared.visits)
        prompt = prepared.prompt
        producer = EventProducer(bootstrap)
        producer.ensure_topics([prompt.next_visit_topic, prompt.raw_topic])
        return cls(night, visit, prepared.visits[visit][:2], prompt, producer)

    def send_event(self, at: float) -> None:
        """Send the visit's next-visit event."""
        from skydm.prompt.simulate import send_next_visit

        send_next_visit(self.producer, self.prompt, self.visit, self.dets, self.night, at)

    def land(self, repo: Path) -> int:
        """Ingest both raws and announce them; returns how many landed."""
        from skydm.prompt.simulate import land_raws
        from skydm.repo import Repository

        with Repository.open(repo, create=False) as r:
            return land_raws(r, self.producer, self.prompt, self.dets)

    def done_rows(self, repo: Path, attempts: int) -> list[Any]:
        """The service's rows, asserted ``done`` after ``attempts``, with every stamp."""
        from skydm.prompt.timing import STAMPS, TimingStore

        store = TimingStore(repo)
        rows = store.rows()
        store.close()
        expected = [(v.detector, "done") for v, _ in self.dets]
        assert [(r.detector, r.state) for r in rows] == expected, [
            (r.detector, r.state, r.error) for r in rows
        ]
        assert all(set(STAMPS) <= set(r.stamps) and r.attempts == attempts for r in rows)
        return rows


def ended_count(repo: Path, states: tuple[str, ...] = ("done", "timed_out")) -> int:
    """Detector-visits of the service's table in one of ``states`` (0 before it exists)."""
    db = repo / "prompt" / "prompt.sqlite3"
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    marks = ",".join("?" * len(states))
    try:
        row = con.execute(
            f"SELECT count(*) FROM detector_visit WHERE state IN ({marks})", states
        ).fetchone()
        return int(row[0])
    except sqlite3.OperationalError:  # the service has not made its table yet
        return 0
    finally:
        con.close()


@pytest.fixture
def service() -> Iterator[list[Service]]:
    """Started services, killed at the end of the test if still running."""
    started: list[Service] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def read_alerts(bootstrap: str, topic: str, *, expect: int, timeout: float = 60.0) -> list[int]:
    """diaSourceIds of every message on ``topic``, read by a plain confluent-kafka consumer.

    Reads until ``expect`` messages came and then 3 s more pass with none
    (so that duplicates beyond ``expect`` are seen too), or ``timeout``.
    """
    import confluent_kafka as ck

    from skydm.alerts.consumer import dia_source_id_of

    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"independent-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    # Every partition assigned from its start, without a consumer group: a
    # group's JoinGroup is held by the broker for half the session timeout
    # (23 s with librdkafka's default) before the first message.
    parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in parts])
    ids: list[int] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(500, timeout=0.5)
            got = [m for m in msgs if m.error() is None]
            if got:
                ids += [dia_source_id_of(m.value()) for m in got]
                quiet_since = time.monotonic()
            elif len(ids) >= expect and time.monotonic() - quiet_since > 3.0:
                break
    finally:
        consumer.close()
    return ids


def assert_every_alert_once(repo: Path, bootstrap: str, rows: Sequence[Any]) -> None:
    """Every DIA source of the APDB delivered once, counted by an independent consumer.

    ``rows`` are the service's detector-visit rows (their ``n_alerts`` sum to
    the APDB's DiaSource count).
    """
    from skydm.alerts.schema import load_schema
    from skydm.ap.apdb import Apdb

    apdb = Apdb(repo / "apdb.sqlite3")
    n_sources = apdb.count("DiaSource")
    apdb.close()
    assert n_sources == sum(r.n_alerts or 0 for r in rows) > 0
    ids = read_alerts(bootstrap, load_schema().default_topic, expect=n_sources)
    assert len(ids) == len(set(ids)), "a diaSourceId was delivered twice"
    assert len(ids) == n_sources, "alerts lost"
