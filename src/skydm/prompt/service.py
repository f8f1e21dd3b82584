"""The prompt-processing service: events in, one job per detector, retries, metrics.

:class:`PromptService` consumes the next-visit and raw-arrival topics.  A
next-visit event makes one :class:`~skydm.prompt.worker.DetectorJob` per
detector, queued for the pool at once so that its worker preloads while the
exposure is taken; a raw-arrival notification stamps ``raw``.  A job whose
worker died, or that failed, is queued again (in front) until it has had
``max_attempts`` tries; a raw that does not land by the deadline (the
visit's expected start plus ``raw_timeout_s``) is recorded as timed out by
its worker and the service carries on.
"""

from __future__ import annotations

import collections
import hashlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skydm.errors import BadValueError, require_extra
from skydm.prompt.config import PromptConfig
from skydm.prompt.events import EventProducer, NextVisit, RawArrival, parse_event
from skydm.prompt.pool import JobPool, open_pool
from skydm.prompt.timing import DetectorVisit, Metrics, TimingStore, now
from skydm.prompt.worker import DetectorJob, apdb_location


@dataclass
class ServeReport:
    """What a :meth:`PromptService.run` did."""

    events: int = 0
    arrivals: int = 0
    bad_messages: int = 0
    retries: int = 0
    ended: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """One line for humans."""
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.ended.items())) or "none"
        return (
            f"{self.events} next-visit events, {self.arrivals} raw arrivals, "
            f"{self.bad_messages} bad messages; detector-visits: {states}; "
            f"{self.retries} retries"
        )


class PromptService:
    """The long-running service over one repository.

    Parameters
    ----------
    root : Path
        Repository root (it must exist and hold the templates).
    bootstrap : str
        Kafka bootstrap servers (events in, alerts out).
    config : PromptConfig
        Tunables.
    dask : str, optional
        ``local:N`` or a Dask scheduler address; worker processes of the
        service's own otherwise.
    metrics_port : int, optional
        Port of the Prometheus ``/metrics`` endpoint (0: any free port).
    on_end : callable, optional
        Called with each detector-visit's row when it ends (done, timed out
        or failed for good).
    """

    def __init__(
        self,
        root: str | Path,
        bootstrap: str,
        config: PromptConfig,
        *,
        dask: str | None = None,
        metrics_port: int | None = None,
        on_end: Callable[[DetectorVisit], None] | None = None,
    ) -> None:
        from skydm.ap.apdb import Apdb

        self.root = Path(root)
        self.bootstrap = bootstrap
        self.config = config
        self.dask = dask
        self.on_end = on_end
        self.metrics = Metrics(metrics_port)
        self.store = TimingStore(self.root)
        self.stop_event = threading.Event()
        # Made here, once: workers creating the tables at the same moment would race.
        Apdb(apdb_location(config, self.root)).close()
        self._queue: collections.deque[DetectorJob] = collections.deque()
        self._known: set[tuple[str, int, int]] = set()
        self.pool: JobPool | None = None

    def close(self) -> None:
        """Stop the metrics endpoint and close the table."""
        self.metrics.close()
        self.store.close()

    def _consumer(self) -> Any:
        ck = require_extra("confluent_kafka", "alerts")
        from skydm.alerts.transport import KAFKA_LOG

        topics = [self.config.next_visit_topic, self.config.raw_topic]
        EventProducer(self.bootstrap).ensure_topics(topics)
        consumer = ck.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "logger": KAFKA_LOG,
                # One consumer group per repository: a restarted service
                # carries on from the offsets its predecessor committed.
                "group.id": "skydm-prompt-"
                + hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16],
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "session.timeout.ms": round(self.config.session_timeout_s * 1000),
                # Kafka's rule: heartbeats at most a third of the session timeout.
                "heartbeat.interval.ms": round(self.config.session_timeout_s * 1000 / 3),
            }
        )
        consumer.subscribe(topics)
        return consumer

    def run(
        self,
        *,
        idle_exit_s: float | None = None,
        max_seconds: float | None = None,
        log: Callable[[str], None] | None = None,
    ) -> ServeReport:
        """Serve until stopped (SIGTERM, SIGINT, :attr:`stop_event`), or idle.

        Parameters
        ----------
        idle_exit_s : float, optional
            Return once no job is queued or running and no message came for
            this many seconds (after at least one event).
        max_seconds : float, optional
            Return after this long whatever is left.
        log : callable, optional
            Gets one line per detector-visit that ends and per bad message.
        """
        say = log or (lambda _line: None)
        report = ServeReport()
        consumer = self._consumer()
        started = last_activity = time.monotonic()
        restore = _stop_on_signals(self.stop_event)
        try:
            with open_pool(self.config.workers, self.dask) as pool:
                self.pool = pool
                while not self.stop_event.is_set():
                    # Block on Kafka only when no queued job could start now.
                    ready = bool(self._queue) and pool.free() > 0
                    msgs = consumer.consume(200, timeout=0.0 if ready else self.config.poll_s)
                    for msg in msgs:
                        if msg.error() is not None:
                            continue
                        last_activity = time.monotonic()
                        self._on_message(msg, report, say)
                    self._submit(pool)
                    for job, outcome in pool.finished(0.0 if msgs else self.config.poll_s):
                        last_activity = time.monotonic()
                        self._on_finished(job, outcome, report, say)
                    # A worker freed just now takes its next job at once, not
                    # after the next wait on Kafka.
                    self._submit(pool)
                    busy = bool(self._queue) or pool.free() < self.config.workers
                    t = time.monotonic()
                    if max_seconds is not None and t - started > max_seconds:
                        break
                    if (
                        idle_exit_s is not None
                        and not busy
                        and report.events
                        and t - last_activity > idle_exit_s
                    ):
                        break
        finally:
            self.pool = None
            restore()
            consumer.close()
        return report

    def _submit(self, pool: JobPool) -> None:
        """Start queued jobs on the free workers, first in first."""
        while self._queue and pool.free() > 0:
            pool.submit(self._queue.popleft())

    def _on_message(self, msg: Any, report: ServeReport, say: Callable[[str], None]) -> None:
        where = f"{msg.topic()} offset {msg.offset()}"
        try:
            event = parse_event(msg.value(), where=where)
        except BadValueError as exc:
            report.bad_messages += 1
            say(f"skipped: {exc}")
            return
        if isinstance(event, RawArrival):
            report.arrivals += 1
            self.store.arrived(
                event.instrument, event.visit, event.detector, event.band, min(event.time, now())
            )
        elif isinstance(event, NextVisit):
            report.events += 1
            self._on_next_visit(event)

    def _on_next_visit(self, event: NextVisit) -> None:
        received = now()
        # The deadline runs from the expected start, or from now for a late event.
        deadline = max(received, event.expected_time) + self.config.timeout_for(event.exptime)
        for d in event.detectors:
            key = (event.instrument, event.visit, d.detector)
            if key in self._known:
                continue  # an event delivered twice
            row = self.store.row(*key)
            if row is not None and row.state in ("done", "timed_out"):
                continue  # finished before a restart of the service
            self._known.add(key)
            self.store.expect(event.instrument, event.visit, d.detector, event.band, received)
            self._queue.append(
                DetectorJob(
                    str(self.root), event.instrument, event.visit, d.detector, event.band,
                    d.ra, d.dec, deadline, self.bootstrap, self.config,
                )
            )  # fmt: skip

    def _on_finished(
        self,
        job: DetectorJob,
        outcome: Any,
        report: ServeReport,
        say: Callable[[str], None],
    ) -> None:
        inst, visit, det = job.key
        if outcome is None or outcome.state == "failed":
            row = self.store.row(inst, visit, det)
            attempts = row.attempts if row is not None else 0
            why = "its worker died" if outcome is None else outcome.error
            retry = outcome is None or outcome.retry
            if retry and attempts < self.config.max_attempts:
                report.retries += 1
                self.metrics.retries.inc()
                say(f"retry: visit {visit} detector {det} ({why}; attempt {attempts})")
                self._queue.appendleft(job)
                return
            tries = f" (after {attempts} tries)" if retry else ""
            self.store.finish(inst, visit, det, "failed", error=f"{why}{tries}")
        row = self.store.row(inst, visit, det)
        if row is None:
            return
        report.ended[row.state] = report.ended.get(row.state, 0) + 1
        self.metrics.observe(row)
        if self.on_end is not None:
            self.on_end(row)
        lat = row.duration("latency")
        took = f" latency {lat:.2f} s" if lat is not None else ""
        tail = f": {row.error}" if row.error else ""
        say(f"{row.state}: visit {visit} detector {det}{took}, {row.n_alerts or 0} alerts{tail}")


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Set ``stop`` on SIGTERM/SIGINT (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    for s in old:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore
