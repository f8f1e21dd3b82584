"""The association locks exclude each other across processes, for both APDB backends."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import pytest

from skydm.prompt.locks import region_lock


def _hold(url: str, cells: list[str], log: Any, name: str, hold: float, barrier: Any) -> None:
    barrier.wait(120)  # both processes started: they ask for their locks together
    with region_lock(url, cells):
        log.put((name, "in", time.monotonic()))
        time.sleep(hold)
        log.put((name, "out", time.monotonic()))


def _intervals(url: str, a: list[str], b: list[str]) -> dict[str, tuple[float, float]]:
    ctx = mp.get_context("spawn")
    log = ctx.Queue()
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_hold, args=(url, cells, log, name, 2.0, barrier))
        for name, cells in (("a", a), ("b", b))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    events = [log.get(timeout=10) for _ in range(4)]
    return {
        n: (next(t for m, k, t in events if m == n and k == "in"),
            next(t for m, k, t in events if m == n and k == "out"))
        for n in ("a", "b")
    }  # fmt: skip


def _overlap(iv: dict[str, tuple[float, float]]) -> float:
    (a0, a1), (b0, b1) = iv["a"], iv["b"]
    return min(a1, b1) - max(a0, b0)


@pytest.fixture(params=["sqlite", "postgresql"])
def apdb_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "apdb.sqlite3")
    make = request.getfixturevalue("postgres_url")
    return str(make("locks"))


def test_shared_cell_serialises_and_disjoint_cells_do_not(apdb_url: str) -> None:
    shared = _intervals(apdb_url, ["1_1", "1_2"], ["1_2", "1_3"])
    assert _overlap(shared) <= 0.0  # one after the other
    apart = _intervals(apdb_url, ["1_1"], ["5_5"])
    assert _overlap(apart) > 1.0  # at the same time
