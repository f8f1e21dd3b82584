"""The prompt-processing service: events in, two jobs per detector, a durable queue.

:class:`PromptService` consumes the next-visit and raw-arrival topics.  A
next-visit event writes one row per detector into the repository's table
(:class:`~skydm.prompt.timing.TimingStore`, state ``waiting``, with the
job's centre and deadline) before its Kafka offset is committed, and queues
a *preload* of each detector: a worker reads its templates and DIA objects
and is then free again.  When the raw lands (its notification, or the
registry), the detector becomes ``ready`` and its *processing* is queued,
first for the worker that preloaded it.  With ``defer_export`` the worker
holds the detector's outputs once its alerts are out, and the service sends
the *export* to that worker when it has no processing to start (or holds
``defer_export_max`` detectors): the row stays ``running`` until then, and a
worker that dies holding outputs has those detectors computed again.  A
processing job whose worker died, or that failed, is queued again (in
front) until it has had ``max_attempts`` tries; a raw that does not land by
the deadline (the visit's expected start plus ``raw_timeout_s``) is
recorded as timed out and the service carries on.  A service started
again (after a crash, ``kill -9``) reads the rows not ended back and
carries on with them: waiting ones are preloaded again, ready and running
ones processed (the latter as a retry; the APDB and outbox keep a retry
from sending an alert twice).
"""

from __future__ import annotations

import collections
import contextlib
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
from skydm.prompt.pool import Finished, JobPool, Work, open_pool
from skydm.prompt.timing import DetectorVisit, Metrics, TimingStore, now
from skydm.prompt.worker import DetectorJob, apdb_location
from skydm.repo import Repository

Key = tuple[str, int, int]

#: Seconds between looks in the registry for the raws of waiting detectors
#: (raws ingested without a notification; the notification is the fast path).
REGISTRY_POLL_S = 1.0


@dataclass
class _Tracked:
    """A detector-visit the service holds (not ended)."""

    job: DetectorJob
    #: "waiting" (for its raw), "ready" (queued), "running", "held" (alerts
    #: out, outputs held by :attr:`worker` for a deferred export) or "exporting".
    state: str
    #: The worker holding its preload (``None``: none, or unknown).
    preloaded_on: int | None = None
    #: The worker holding its outputs un-exported (states "held", "exporting").
    worker: int | None = None


@dataclass
class ServeReport:
    """What a :meth:`PromptService.run` did."""

    events: int = 0
    arrivals: int = 0
    bad_messages: int = 0
    retries: int = 0
    resumed: int = 0
    ended: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """One line for humans."""
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.ended.items())) or "none"
        return (
            f"{self.events} next-visit events, {self.arrivals} raw arrivals, "
            f"{self.bad_messages} bad messages; detector-visits: {states}; "
            f"{self.retries} retries, {self.resumed} resumed from the table"
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
        self._jobs: dict[Key, _Tracked] = {}
        #: Detector-visits whose raw landed, in the order to process them.
        self._ready: collections.deque[Key] = collections.deque()
        #: Detector-visits to preload (their event came), first in first.
        self._to_preload: collections.deque[Key] = collections.deque()
        self._raw_seen: set[Key] = set()
        #: Per worker, the detector-visits whose outputs it holds for export, oldest first.
        self._held: dict[int, list[Key]] = {}
        #: Whether exports are deferred (``defer_export``, with a pool of addressable workers).
        self._defer = False
        self._last_registry_poll = 0.0
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
                # Offsets are committed by hand once the events they cover are
                # in the table (the durable queue): a service killed between the
                # two reads the events again, and the table drops the repeats.
                "enable.auto.commit": False,
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
        self._resume(report, say)
        consumer = self._consumer()
        started = last_activity = time.monotonic()
        restore = _stop_on_signals(self.stop_event)
        try:
            with (
                open_pool(
                    self.config.workers, self.dask, threads=self.config.worker_threads
                ) as pool,
                Repository.open(self.root, create=False) as repo,
            ):
                self.pool = pool
                self._defer = self.config.defer_export and pool.addressable
                while not self.stop_event.is_set():
                    # Block on Kafka only when no queued item could start now.
                    ready = (bool(self._ready or self._to_preload) and pool.free() > 0) or any(
                        keys and pool.is_free(w) for w, keys in self._held.items()
                    )
                    msgs = consumer.consume(200, timeout=0.0 if ready else self.config.poll_s)
                    handled = False
                    for msg in msgs:
                        if msg.error() is not None:
                            continue
                        last_activity = time.monotonic()
                        self._on_message(msg, report, say)
                        handled = True
                    if handled:
                        _commit(consumer)
                    self._check_waiting(repo, report, say)
                    self._submit(pool)
                    for item in pool.finished(0.0 if msgs else self.config.poll_s):
                        last_activity = time.monotonic()
                        self._on_finished(item, report, say)
                    for worker in pool.replaced():
                        self._on_replaced(worker, report, say)
                    # A worker freed just now takes its next item at once, not
                    # after the next wait on Kafka.
                    self._submit(pool)
                    busy = bool(self._jobs) or pool.free() < self.config.workers
                    t = time.monotonic()
                    if max_seconds is not None and t - started > max_seconds:
                        break
                    if (
                        idle_exit_s is not None
                        and not busy
                        and (report.events or report.resumed)
                        and t - last_activity > idle_exit_s
                    ):
                        break
        finally:
            self.pool = None
            restore()
            consumer.close()
        return report

    def _job(self, inst: str, visit: int, det: int, band: str, ra: float, dec: float,
             deadline: float) -> DetectorJob:  # fmt: skip
        return DetectorJob(
            str(self.root), inst, visit, det, band, ra, dec, deadline, self.bootstrap, self.config
        )

    def _resume(self, report: ServeReport, say: Callable[[str], None]) -> None:
        """Take back the detector-visits a previous service left in the table."""
        for row in self.store.open_jobs():
            key = (row.instrument, row.visit, row.detector)
            if key in self._jobs:
                continue
            assert row.ra is not None and row.dec is not None and row.deadline is not None
            job = self._job(*key, row.band, row.ra, row.dec, row.deadline)
            report.resumed += 1
            if row.state == "running" or row.state == "ready" or "raw" in row.stamps:
                # A detector running when the service died is retried (its
                # worker died with it); the outbox keeps its alerts single.
                self._jobs[key] = _Tracked(job, "ready")
                self.store.set_state(*key, "ready")
                self._ready.append(key)
            else:
                self._jobs[key] = _Tracked(job, "waiting")
                self._to_preload.append(key)
            say(f"resumed: visit {row.visit} detector {row.detector} ({row.state})")

    def _submit(self, pool: JobPool) -> None:
        """Start queued items on the free workers: raws landed, then exports, then preloads.

        A detector's processing goes to the worker that preloaded it when that
        one is free, to any free worker otherwise (which reads the template
        itself: a worker left idle while a raw waits costs more).  With
        deferred exports, a worker holding ``defer_export_max`` detectors
        un-exported takes no processing; a free worker with nothing to
        process exports what it holds, oldest first.
        """
        while self._ready and pool.free() > 0:
            tracked = self._jobs[self._ready[0]]
            worker = tracked.preloaded_on
            if self._defer:
                worker = self._worker_for(pool, worker)
                if worker is None:  # every free worker must export first
                    break
            self._ready.popleft()
            tracked.state = "running"
            pool.submit(Work("process", tracked.job, defer_export=self._defer), prefer=worker)
        for worker, keys in self._held.items():
            if keys and pool.is_free(worker):
                tracked = self._jobs[keys.pop(0)]
                tracked.state = "exporting"
                pool.submit(Work("export", tracked.job), prefer=worker)
        while self._to_preload and pool.free() > 0:
            key = self._to_preload.popleft()
            tracked_or_none = self._jobs.get(key)
            if tracked_or_none is not None and tracked_or_none.state == "waiting":
                pool.submit(Work("preload", tracked_or_none.job))

    def _worker_for(self, pool: JobPool, prefer: int | None) -> int | None:
        """The free worker to process a detector on (``prefer`` if it may), or ``None``.

        A worker may when it holds fewer than ``defer_export_max`` detectors
        un-exported; among the others, the one holding fewest.
        """
        able = [
            w
            for w in pool.workers()
            if pool.is_free(w) and len(self._held.get(w, ())) < self.config.defer_export_max
        ]
        if not able:
            return None
        if prefer in able:
            return prefer
        return min(able, key=lambda w: len(self._held.get(w, ())))

    def _check_waiting(
        self, repo: Repository, report: ServeReport, say: Callable[[str], None]
    ) -> None:
        """Waiting detectors whose raw is registered become ready; past the deadline, timed out."""
        t = time.monotonic()
        poll = t - self._last_registry_poll >= REGISTRY_POLL_S
        if poll:
            self._last_registry_poll = t
        wall = now()
        for key, tracked in list(self._jobs.items()):
            if tracked.state != "waiting":
                continue
            job = tracked.job
            landed = key in self._raw_seen
            late = wall >= job.deadline
            if not landed and (poll or late):
                landed = repo.find("raw", job.data_id) is not None
                if landed:
                    # Found in the registry before (or without) its Kafka
                    # notice, e.g. while a restarted service's consumer still
                    # waits for the group to rebalance: the arrival is stamped
                    # when found (at most REGISTRY_POLL_S late), so that the
                    # latency of this detector is still measured.
                    self.store.stamp(*key, "raw", wall, keep=True)
            if landed:
                self._make_ready(key)
            elif late:
                row = self.store.row(*key)
                waited = job.deadline - (row.stamps.get("event", job.deadline) if row else 0.0)
                error = f"no raw arrived within {waited:.0f} s of the event (timed out)"
                self.store.finish(*key, "timed_out", error=error)
                self._end(key, report, say)

    def _make_ready(self, key: Key) -> None:
        tracked = self._jobs[key]
        tracked.state = "ready"
        self.store.set_state(*key, "ready")
        self._ready.append(key)

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
            key = (event.instrument, event.visit, event.detector)
            self.store.arrived(*key, event.band, min(event.time, now()))
            self._raw_seen.add(key)
            tracked = self._jobs.get(key)
            if tracked is not None and tracked.state == "waiting":
                self._make_ready(key)
        elif isinstance(event, NextVisit):
            report.events += 1
            self._on_next_visit(event)

    def _on_next_visit(self, event: NextVisit) -> None:
        received = now()
        # The deadline runs from the expected start, or from now for a late event.
        deadline = max(received, event.expected_time) + self.config.timeout_for(event.exptime)
        for d in event.detectors:
            key = (event.instrument, event.visit, d.detector)
            if key in self._jobs:
                continue  # an event delivered twice
            row = self.store.row(*key)
            if row is not None and row.state in ("done", "timed_out"):
                continue  # finished before a restart of the service
            job = self._job(*key, event.band, d.ra, d.dec, deadline)
            # In the table before the offset is committed: the durable queue.
            self.store.expect(*key, event.band, received, ra=d.ra, dec=d.dec, deadline=deadline)
            self._jobs[key] = _Tracked(job, "waiting")
            self._to_preload.append(key)

    def _on_finished(self, item: Finished, report: ServeReport, say: Callable[[str], None]) -> None:
        key = item.work.job.key
        tracked = self._jobs.get(key)
        if item.work.kind == "preload":
            if tracked is None:
                return
            if item.outcome is not None and item.outcome.state == "preloaded":
                tracked.preloaded_on = item.worker
            else:
                why = "its worker died" if item.outcome is None else item.outcome.error
                say(f"preload: visit {key[1]} detector {key[2]} not preloaded ({why})")
            return
        outcome = item.outcome
        if outcome is not None and outcome.state == "alerted":
            # Its outputs wait in that worker for their export (_submit).
            if tracked is not None and item.worker is not None:
                tracked.state = "held"
                tracked.worker = item.worker
                self._held.setdefault(item.worker, []).append(key)
            return
        if outcome is None or outcome.state == "failed":
            why = "its worker died" if outcome is None else (outcome.error or "failed")
            self._retry_or_fail(key, why, outcome is None or outcome.retry, report, say)
            return
        self._end(key, report, say)

    def _on_replaced(self, worker: int, report: ServeReport, say: Callable[[str], None]) -> None:
        """A worker died and was started again: what it preloaded and held is gone."""
        for t in self._jobs.values():
            if t.preloaded_on == worker:
                t.preloaded_on = None
        # Computed again: the APDB keeps their association single, the outbox
        # their alerts (already sent), so no alert is lost or sent twice.
        for key in self._held.pop(worker, []):
            why = "its worker died holding its outputs un-exported"
            self._retry_or_fail(key, why, True, report, say)

    def _retry_or_fail(
        self, key: Key, why: str, retry: bool, report: ServeReport, say: Callable[[str], None]
    ) -> None:
        """Queue a detector-visit again (in front) unless it had its tries or may not be retried."""
        inst, visit, det = key
        tracked = self._jobs.get(key)
        row = self.store.row(inst, visit, det)
        attempts = row.attempts if row is not None else 0
        if retry and attempts < self.config.max_attempts and tracked is not None:
            report.retries += 1
            self.metrics.retries.inc()
            say(f"retry: visit {visit} detector {det} ({why}; attempt {attempts})")
            tracked.state = "ready"
            tracked.preloaded_on = None
            tracked.worker = None
            self.store.set_state(inst, visit, det, "ready")
            self._ready.appendleft(key)
            return
        tries = f" (after {attempts} tries)" if retry else ""
        self.store.finish(inst, visit, det, "failed", error=f"{why}{tries}")
        self._end(key, report, say)

    def _end(self, key: Key, report: ServeReport, say: Callable[[str], None]) -> None:
        """A detector-visit ended (its row is final): count, observe and log it."""
        tracked = self._jobs.pop(key, None)
        if tracked is not None and tracked.worker is not None:
            with contextlib.suppress(ValueError):  # not waiting for its export
                self._held.get(tracked.worker, []).remove(key)
        self._raw_seen.discard(key)
        inst, visit, det = key
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


def _commit(consumer: Any) -> None:
    """Commit the consumed offsets (synchronously); a failure only means a re-read."""
    ck = require_extra("confluent_kafka", "alerts")
    with contextlib.suppress(ck.KafkaException):
        consumer.commit(asynchronous=False)


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
