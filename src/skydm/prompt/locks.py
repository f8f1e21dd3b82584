"""Locks that serialise association per sky region, and the outbox's sends.

Two detectors with overlapping footprints (shared edges, or neighbouring
visits' dithers) must not associate at the same time: each would read the
DIA objects before the other committed, and a source seen by both would
become two DIA objects.  The sky is cut into cells of ``lock_cell_deg``; a
detector locks every cell its footprint (plus the association margin)
touches, in sorted order so that two workers can never wait on each other.

With an SQLite APDB the locks are ``flock`` locks on files beside it (the
kernel drops them when a worker dies, even by ``kill -9``); with PostgreSQL
they are session advisory locks (``pg_advisory_lock``), dropped when the
connection closes.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

#: More cells than this (a detector near a pole) lock the whole Dec band instead.
MAX_CELLS = 64


def region_cells(
    ra_ranges: Sequence[tuple[float, float]], dec_range: tuple[float, float], cell_deg: float
) -> list[str]:
    """Names of the lock cells that a region touches, sorted.

    Parameters
    ----------
    ra_ranges : sequence of (float, float)
        RA intervals in degrees (two when the region crosses RA 0).
    dec_range : (float, float)
        Dec interval in degrees.
    cell_deg : float
        Cell size in degrees (in RA and in Dec).
    """
    j0 = math.floor(dec_range[0] / cell_deg)
    j1 = math.floor(dec_range[1] / cell_deg)
    cells: set[str] = set()
    for lo, hi in ra_ranges:
        i0, i1 = math.floor(lo / cell_deg), math.floor(hi / cell_deg)
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                cells.add(f"{i}_{j}")
    if len(cells) > MAX_CELLS:
        return sorted(f"band_{j}" for j in range(j0, j1 + 1))
    return sorted(cells)


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for a cell name."""
    digest = hashlib.sha256(f"skydm-prompt:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), held inside the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def region_lock(apdb_url: str | Path, cells: Sequence[str]) -> Iterator[None]:
    """Hold the association locks of ``cells`` for one APDB.

    Parameters
    ----------
    apdb_url : str or Path
        The APDB (an SQLite path or URL, or a PostgreSQL URL).
    cells : sequence of str
        Lock cells (:func:`region_cells`); locked in sorted order.
    """
    text = str(apdb_url)
    ordered = sorted(set(cells))
    if text.startswith("postgresql"):
        import sqlalchemy as sa

        engine = sa.create_engine(text, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                for name in ordered:
                    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(name)})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
                    conn.commit()
        finally:
            engine.dispose()
        return
    path = Path(text.removeprefix("sqlite:///")) if "://" in text else Path(text)
    where = path.parent / f".{path.name}.locks"
    with ExitStack() as stack:
        for name in ordered:
            stack.enter_context(file_lock(where / f"{name}.lock"))
        yield
