"""SQLite connection set-up shared by every SQLite file skydm writes."""

from __future__ import annotations

import random
import sqlite3
import time
from typing import Any

__all__ = ["use_wal"]

#: How long a connection keeps retrying the switch to WAL while other
#: processes hold the file (seconds); the same order as the busy timeouts.
WAL_RETRY_S = 30.0


def use_wal(conn: Any, *, retry_s: float = WAL_RETRY_S) -> None:
    """Put an SQLite connection's file in WAL mode, waiting out other openers.

    ``PRAGMA journal_mode=WAL`` needs the file's exclusive lock. When several
    processes open a new file at once, SQLite answers "database is locked" at
    once instead of calling the busy handler (two connections upgrading their
    shared locks would otherwise deadlock), so the busy timeout does not help:
    the switch is retried here, with a short random back-off.

    Parameters
    ----------
    conn : sqlite3.Connection
        An open DB-API connection (also the raw connection under SQLAlchemy).
    retry_s : float
        Give up and re-raise after this many seconds.

    Raises
    ------
    sqlite3.OperationalError
        The file stayed locked for ``retry_s`` seconds, or another error.
    """
    deadline = time.monotonic() + retry_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))
