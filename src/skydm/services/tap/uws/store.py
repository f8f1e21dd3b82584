"""Durable job storage: one SQLite database under ``<repo>/tap/jobs/``.

The web process and the worker processes share it.  Every phase change is a
conditional ``UPDATE ... WHERE phase IN (...)``, so when two processes race
(a worker finishing while a client aborts) exactly one change wins and a
finished job is never resurrected.  WAL mode lets readers proceed while a
writer commits.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from skydm._sqlite import use_wal
from skydm.services.tap.errors import JobNotFoundError
from skydm.services.tap.uws.models import Job, Phase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    phase TEXT NOT NULL,
    parameters TEXT NOT NULL,
    creation_time REAL NOT NULL,
    execution_duration INTEGER NOT NULL,
    destruction REAL NOT NULL,
    run_id TEXT,
    owner TEXT,
    start_time REAL,
    end_time REAL,
    error_message TEXT,
    result_file TEXT,
    result_mime TEXT,
    result_rows INTEGER,
    result_size INTEGER,
    overflow INTEGER NOT NULL DEFAULT 0,
    runner_pid INTEGER,
    worker_pid INTEGER,
    queued_time REAL
);
CREATE INDEX IF NOT EXISTS jobs_phase ON jobs (phase, queued_time);
CREATE INDEX IF NOT EXISTS jobs_creation ON jobs (creation_time);
"""

_COLUMNS = (
    "job_id",
    "phase",
    "parameters",
    "creation_time",
    "execution_duration",
    "destruction",
    "run_id",
    "owner",
    "start_time",
    "end_time",
    "error_message",
    "result_file",
    "result_mime",
    "result_rows",
    "result_size",
    "overflow",
    "runner_pid",
    "worker_pid",
)


def _job(row: sqlite3.Row) -> Job:
    values: dict[str, Any] = {k: row[k] for k in _COLUMNS}
    values["phase"] = Phase(values["phase"])
    values["parameters"] = json.loads(values["parameters"])
    values["overflow"] = bool(values["overflow"])
    return Job(**values)


class JobStore:
    """Jobs in an SQLite database, safe to use from several threads and processes.

    Parameters
    ----------
    path : Path
        The database file (created with its directory if missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def create(self, job: Job) -> None:
        """Store a new job."""
        values = {k: getattr(job, k) for k in _COLUMNS}
        values["phase"] = job.phase.value
        values["parameters"] = json.dumps(job.parameters)
        values["overflow"] = int(job.overflow)
        names = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self._connect().execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", values)

    def get(self, job_id: str) -> Job:
        """The job ``job_id``.

        Raises
        ------
        JobNotFoundError
            When there is no such job.
        """
        row = self._connect().execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return _job(row)

    def find(
        self,
        *,
        phases: Iterable[str] | None = None,
        after: float | None = None,
        last: int | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Jobs filtered as the UWS 1.1 job list allows (``PHASE``, ``AFTER``, ``LAST``).

        With ``owner``, only that user's jobs (before ``LAST`` is applied).

        Jobs come in creation order; with ``last``, the ``last`` most recent
        ones, most recent first (UWS 1.1 §2.2.2.1).
        """
        sql, args = "SELECT * FROM jobs WHERE 1 = 1", list[Any]()
        phase_list = list(phases) if phases is not None else []
        if phase_list:
            sql += f" AND phase IN ({', '.join('?' * len(phase_list))})"
            args.extend(phase_list)
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        if after is not None:
            sql += " AND creation_time > ?"
            args.append(after)
        if last is not None:
            sql += " ORDER BY creation_time DESC LIMIT ?"
            args.append(last)
        else:
            sql += " ORDER BY creation_time"
        return [_job(r) for r in self._connect().execute(sql, args).fetchall()]

    def transition(self, job_id: str, allowed: Iterable[Phase], to: Phase, **fields: Any) -> bool:
        """Move the job to phase ``to`` if it is in one of ``allowed``; whether it moved.

        ``fields`` are other columns to set in the same atomic update.
        """
        allowed = list(allowed)
        sets = {"phase": to.value, **fields}
        if "overflow" in sets:
            sets["overflow"] = int(sets["overflow"])
        if to == Phase.QUEUED:
            sets.setdefault("queued_time", time.time())
        assignments = ", ".join(f"{k} = ?" for k in sets)
        marks = ", ".join("?" * len(allowed))
        cur = self._connect().execute(
            f"UPDATE jobs SET {assignments} WHERE job_id = ? AND phase IN ({marks})",
            [*sets.values(), job_id, *(p.value for p in allowed)],
        )
        return cur.rowcount == 1

    def update(self, job_id: str, *, only_in: Iterable[Phase] | None = None, **fields: Any) -> bool:
        """Set columns of a job (only while it is in ``only_in``, when given); whether it did."""
        if "parameters" in fields:
            fields["parameters"] = json.dumps(fields["parameters"])
        assignments = ", ".join(f"{k} = ?" for k in fields)
        sql, args = f"UPDATE jobs SET {assignments} WHERE job_id = ?", [*fields.values(), job_id]
        if only_in is not None:
            phases = [p.value for p in only_in]
            sql += f" AND phase IN ({', '.join('?' * len(phases))})"
            args.extend(phases)
        return self._connect().execute(sql, args).rowcount == 1

    def queued(self) -> list[str]:
        """Identifiers of QUEUED jobs, first queued first."""
        rows = (
            self._connect()
            .execute("SELECT job_id FROM jobs WHERE phase = 'QUEUED' ORDER BY queued_time")
            .fetchall()
        )
        return [r["job_id"] for r in rows]

    def expired(self, now: float) -> list[str]:
        """Identifiers of jobs whose destruction time has passed."""
        rows = (
            self._connect()
            .execute("SELECT job_id FROM jobs WHERE destruction <= ?", (now,))
            .fetchall()
        )
        return [r["job_id"] for r in rows]

    def delete(self, job_id: str) -> bool:
        """Remove the job's record; whether there was one."""
        cur = self._connect().execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        return cur.rowcount == 1
