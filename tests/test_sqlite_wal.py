"""Several processes opening one new SQLite file at once (CI once lost a
detector's alerts to "database is locked" while two workers created the
outbox together)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from skydm._sqlite import use_wal

OPENERS = 6
ROUNDS = 12


def _open(path: str, barrier: Any, which: str) -> None:
    barrier.wait()
    if which == "outbox":
        from skydm.alerts.outbox import Outbox

        Outbox(path).close()
    else:
        conn = sqlite3.connect(path, timeout=30.0)
        use_wal(conn)
        conn.close()


@pytest.mark.parametrize("which", ["outbox", "bare"])
def test_processes_opening_a_new_file_together_all_succeed(tmp_path: Path, which: str) -> None:
    ctx = mp.get_context("fork")
    for r in range(ROUNDS):
        path = tmp_path / f"r{r}.sqlite3"
        barrier = ctx.Barrier(OPENERS)
        procs = [
            ctx.Process(target=_open, args=(str(path), barrier, which)) for _ in range(OPENERS)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * OPENERS, f"round {r}"
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_a_file_locked_for_longer_than_the_retry_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "held.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    conn = sqlite3.connect(path, timeout=0.0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(conn, retry_s=0.2)
    holder.execute("COMMIT")
    use_wal(conn)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
