"""Per detector-visit timestamps: stored in the repository, exported as metrics.

Every detector-visit has one row in ``<repo>/prompt/prompt.sqlite3``: its
state, attempts, the worker process holding it, and one wall-clock time
(Unix seconds) per stage: ``event`` (next-visit event received), ``raw``
(raw-arrival notification received), ``preload`` (template and DIA objects
loaded), ``start`` (the worker began on the raw), ``calibrate``, ``diffim``,
``association`` (APDB committed), ``alerts`` (every alert acknowledged by
Kafka) and ``export`` (the detector's outputs written to the repository,
after its alerts; outside the latency).  The service and its workers write
it (SQLite in WAL mode, short transactions); ``skydm prompt status`` reads
it.

The table is also the service's durable queue: a detector-visit announced by
an event is written with what its job needs (expected centre, deadline)
before the event's Kafka offset is committed, and moves through ``waiting``
(for its raw), ``ready`` (raw landed, queued), ``running`` and one of
``done``, ``timed_out``, ``failed``.  A service started again reads the rows
not ended back (:meth:`TimingStore.open_jobs`) and carries on with them.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skydm._sqlite import use_wal

#: Stage timestamps, in the order they happen.
STAMPS = (
    "event", "raw", "preload", "start", "calibrate", "diffim", "association", "alerts", "export",
)  # fmt: skip
#: Stage durations reported by ``status`` and the metrics: name -> (from stamp, to stamp).
STAGES: dict[str, tuple[str, str]] = {
    "preload": ("event", "preload"),
    "wait_raw": ("event", "raw"),
    "queue": ("raw", "start"),
    "calibrate": ("start", "calibrate"),
    "diffim": ("calibrate", "diffim"),
    "association": ("diffim", "association"),
    "alerts": ("association", "alerts"),
    # What the latency budget is about: raw landed -> last alert acknowledged.
    "latency": ("raw", "alerts"),
    # The detector's outputs written to the repository, after its alerts
    # (skydm.prompt.handoff): outside the latency.
    "export": ("alerts", "export"),
}
STATES = ("waiting", "ready", "running", "done", "timed_out", "failed")
#: States of a detector-visit not ended: a restarted service resumes these.
OPEN_STATES = ("waiting", "ready", "running")
DB_NAME = "prompt/prompt.sqlite3"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS detector_visit (
    instrument TEXT NOT NULL, visit INTEGER NOT NULL, detector INTEGER NOT NULL,
    band TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER, n_sources INTEGER, n_alerts INTEGER, error TEXT,
    {", ".join(f"t_{s} REAL" for s in STAMPS)},
    ra REAL, dec REAL, deadline REAL,
    PRIMARY KEY (instrument, visit, detector));
"""
#: Columns added since the first version of the table (added to an older table on opening).
_ADDED = ("ra REAL", "dec REAL", "deadline REAL", "t_export REAL")


@dataclass(frozen=True)
class DetectorVisit:
    """One row: a detector-visit's state and its stage timestamps."""

    instrument: str
    visit: int
    detector: int
    band: str
    state: str
    attempts: int
    pid: int | None
    n_sources: int | None
    n_alerts: int | None
    error: str | None
    stamps: dict[str, float] = field(default_factory=dict)
    #: The job's expected centre and raw deadline (``None`` before its event).
    ra: float | None = None
    dec: float | None = None
    deadline: float | None = None

    def duration(self, stage: str) -> float | None:
        """Seconds of ``stage`` (see :data:`STAGES`), or ``None`` if not both stamps exist."""
        a, b = STAGES[stage]
        if a not in self.stamps or b not in self.stamps:
            return None
        return self.stamps[b] - self.stamps[a]


class TimingStore:
    """The repository's table of detector-visits.

    Parameters
    ----------
    root : Path
        Repository root.
    """

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The service may be run from a thread other than the one that made it
        # (a benchmark, an embedding application); it uses it from one at a time.
        self._db = sqlite3.connect(
            self.path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        use_wal(self._db)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(detector_visit)")}
        for col in _ADDED:
            if col.split()[0] not in have:  # a table from before the durable queue
                with suppress(sqlite3.OperationalError):  # another process added it first
                    self._db.execute(f"ALTER TABLE detector_visit ADD COLUMN {col}")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def expect(
        self,
        instrument: str,
        visit: int,
        detector: int,
        band: str,
        when: float,
        *,
        ra: float | None = None,
        dec: float | None = None,
        deadline: float | None = None,
    ) -> None:
        """Record a detector-visit announced by a next-visit event (the first event time kept).

        ``ra``, ``dec`` (expected centre) and ``deadline`` (for its raw) are
        what a restarted service needs to make its job again.
        """
        with self._tx() as db:
            db.execute(
                "INSERT INTO detector_visit (instrument, visit, detector, band, state, t_event, "
                "ra, dec, deadline) VALUES (?,?,?,?,'waiting',?,?,?,?) ON CONFLICT DO UPDATE SET "
                "t_event=COALESCE(t_event, excluded.t_event), band=excluded.band, "
                "ra=excluded.ra, dec=excluded.dec, deadline=excluded.deadline",
                (instrument, visit, detector, band, when, ra, dec, deadline),
            )

    def stamp(
        self,
        instrument: str,
        visit: int,
        detector: int,
        stage: str,
        when: float,
        *,
        keep: bool = False,
    ) -> None:
        """Set a stage's timestamp (overwritten by a retry; kept if set when ``keep``)."""
        if stage not in STAMPS:
            raise KeyError(stage)
        value = f"COALESCE(t_{stage}, ?)" if keep else "?"
        with self._tx() as db:
            db.execute(
                f"UPDATE detector_visit SET t_{stage}={value} "
                "WHERE instrument=? AND visit=? AND detector=?",
                (when, instrument, visit, detector),
            )

    def set_state(self, instrument: str, visit: int, detector: int, state: str) -> None:
        """Move a detector-visit not ended to ``state`` (``waiting``, ``ready``)."""
        if state not in OPEN_STATES:
            raise KeyError(state)
        with self._tx() as db:
            db.execute(
                "UPDATE detector_visit SET state=?, pid=NULL "
                "WHERE instrument=? AND visit=? AND detector=?",
                (state, instrument, visit, detector),
            )

    def open_jobs(self) -> list[DetectorVisit]:
        """Detector-visits announced by an event and not ended, in order (the durable queue)."""
        return [r for s in OPEN_STATES for r in self.rows(state=s) if r.deadline is not None]

    def arrived(self, instrument: str, visit: int, detector: int, band: str, when: float) -> None:
        """Stamp a raw's arrival (the first one kept), before or after its event.

        The two topics are consumed independently: a notification may be
        read before the event of its visit, so it may make the row.
        """
        with self._tx() as db:
            db.execute(
                "INSERT INTO detector_visit (instrument, visit, detector, band, state, t_raw) "
                "VALUES (?,?,?,?,'waiting',?) ON CONFLICT DO UPDATE SET "
                "t_raw=COALESCE(t_raw, excluded.t_raw)",
                (instrument, visit, detector, band, when),
            )

    def start_attempt(self, instrument: str, visit: int, detector: int, pid: int) -> int:
        """A worker took the detector-visit: count the attempt; returns its number."""
        # The preload happened on the event, before the raw: it is kept.
        later = ", ".join(f"t_{s}=NULL" for s in STAMPS[STAMPS.index("start") :])
        with self._tx() as db:
            db.execute(
                f"UPDATE detector_visit SET state='running', attempts=attempts+1, pid=?, "
                f"error=NULL, {later} WHERE instrument=? AND visit=? AND detector=?",
                (pid, instrument, visit, detector),
            )
            row = db.execute(
                "SELECT attempts FROM detector_visit WHERE instrument=? AND visit=? AND detector=?",
                (instrument, visit, detector),
            ).fetchone()
        return int(row[0]) if row else 0

    def finish(
        self,
        instrument: str,
        visit: int,
        detector: int,
        state: str,
        *,
        error: str | None = None,
        n_sources: int | None = None,
        n_alerts: int | None = None,
    ) -> None:
        """Record the end state of a detector-visit."""
        if state not in STATES:
            raise KeyError(state)
        with self._tx() as db:
            db.execute(
                "UPDATE detector_visit SET state=?, error=?, n_sources=COALESCE(?, n_sources), "
                "n_alerts=COALESCE(?, n_alerts), pid=NULL "
                "WHERE instrument=? AND visit=? AND detector=?",
                (state, error, n_sources, n_alerts, instrument, visit, detector),
            )

    def rows(
        self, *, state: str | None = None, key: tuple[str, int, int] | None = None
    ) -> list[DetectorVisit]:
        """Every detector-visit (or those in ``state``, or the one of ``key``), in order."""
        cols = ", ".join(f"t_{s}" for s in STAMPS)
        where: str = ""
        args: tuple[Any, ...] = ()
        if state is not None:
            where, args = "WHERE state=?", (state,)
        elif key is not None:
            where, args = "WHERE instrument=? AND visit=? AND detector=?", key
        out = []
        for row in self._db.execute(
            "SELECT instrument, visit, detector, band, state, attempts, pid, n_sources, "
            f"n_alerts, error, {cols}, ra, dec, deadline FROM detector_visit {where} "
            "ORDER BY visit, detector",
            args,
        ):
            n = 10 + len(STAMPS)
            stamps = {s: float(v) for s, v in zip(STAMPS, row[10:n], strict=True) if v is not None}
            inst, visit, det, band, st, attempts, pid, n_src, n_alerts, error = row[:10]
            ra, dec, deadline = row[n:]
            out.append(
                DetectorVisit(
                    inst, visit, det, band, st, attempts, pid, n_src, n_alerts, error, stamps,
                    ra, dec, deadline,
                )
            )  # fmt: skip
        return out

    def row(self, instrument: str, visit: int, detector: int) -> DetectorVisit | None:
        """One detector-visit, or ``None``."""
        found = self.rows(key=(instrument, visit, detector))
        return found[0] if found else None


@dataclass(frozen=True)
class StageSummary:
    """Percentiles of one stage over the finished detector-visits."""

    stage: str
    n: int
    p50: float
    p95: float
    max: float


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarise(rows: Sequence[DetectorVisit]) -> list[StageSummary]:
    """p50, p95 and max of every stage over ``rows`` that have both its stamps."""
    out = []
    for stage in STAGES:
        values = [d for r in rows if (d := r.duration(stage)) is not None]
        out.append(
            StageSummary(
                stage, len(values), percentile(values, 50), percentile(values, 95),
                max(values) if values else math.nan,
            )
        )  # fmt: skip
    return out


class Metrics:
    """Prometheus metrics of the service (``prometheus_client``), served on ``/metrics``.

    Parameters
    ----------
    port : int or None
        Port of the HTTP endpoint; ``None`` for no endpoint (the metrics are
        still kept and can be read with :meth:`exposition`).
    """

    BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600)

    def __init__(self, port: int | None = None) -> None:
        from skydm.errors import require_extra

        prom = require_extra("prometheus_client", "prompt")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self.stage_seconds = prom.Histogram(
            "skydm_prompt_stage_seconds",
            "Seconds per prompt-processing stage of a detector-visit",
            ["stage"],
            registry=self.registry,
            buckets=self.BUCKETS,
        )
        self.detectors = prom.Counter(
            "skydm_prompt_detectors",
            "Detector-visits ended, by final state",
            ["state"],
            registry=self.registry,
        )
        self.alerts = prom.Counter(
            "skydm_prompt_alerts", "Alerts acknowledged by Kafka", registry=self.registry
        )
        self.retries = prom.Counter(
            "skydm_prompt_retries", "Detector-visits tried again", registry=self.registry
        )
        self.port: int | None = None
        self._server: Any = None
        if port is not None:
            self._server, _thread = prom.start_http_server(port, registry=self.registry)
            self.port = int(self._server.server_port)

    def observe(self, row: DetectorVisit) -> None:
        """Count a finished detector-visit and its stage durations."""
        self.detectors.labels(state=row.state).inc()
        for stage in STAGES:
            d = row.duration(stage)
            if d is not None:
                self.stage_seconds.labels(stage=stage).observe(max(d, 0.0))
        if row.n_alerts:
            self.alerts.inc(row.n_alerts)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return bytes(self._prom.generate_latest(self.registry))

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def now() -> float:
    """Wall-clock time, Unix seconds (comparable across processes and hosts)."""
    return time.time()
