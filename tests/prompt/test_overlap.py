"""Two detectors with overlapping edges associated at the same moment.

One synthetic field of variable stars is cut into two detectors that share
a strip of 60 columns; two processes run the service's association step
(the association locks of the detector's sky cells around
:func:`produce_visit_alerts`, as :mod:`skydm.prompt.worker` does) for both
at once, released together by a barrier.  With the locks the APDB ends
with one DIA object per real source; the same run without them (each
process held after its APDB read until the other has read too) makes
duplicates in the shared strip, which shows the test can fail.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skydm.ap.synthetic import SyntheticField
from skydm.image import Exposure

pytestmark = pytest.mark.slow

WIDTH, OVERLAP = 200, 60
FIELD = SyntheticField(seed=5, shape=(160, 2 * WIDTH - OVERLAP), n_variables=40)


def _cut(exp: Exposure, x0: int, det: int) -> Exposure:
    from dataclasses import replace

    sl = np.s_[:, x0 : x0 + WIDTH]
    assert exp.wcs is not None
    wcs = exp.wcs.slice(sl)
    return Exposure(
        exp.image[sl].copy(), exp.var[sl].copy(), exp.msk[sl].copy(), wcs, exp.psf,
        exp.zero_point, replace(exp.info, detector=det),
    )  # fmt: skip


def _detector(visit: int, det: int) -> tuple[Any, Exposure, Exposure, Exposure]:
    science, template, diff, table = FIELD.visit(visit, detector=det)
    x0 = det * (WIDTH - OVERLAP)
    keep = (table["x"] >= x0 + 3) & (table["x"] < x0 + WIDTH - 3)
    sub = table[keep]
    sub["x"] = sub["x"] - x0
    return sub, _cut(science, x0, det), _cut(template, x0, det), _cut(diff, x0, det)


def _associate(root: str, visit: int, det: int, locked: bool, barrier: Any) -> None:
    from contextlib import nullcontext

    from skydm.alerts.produce import produce_visit_alerts
    from skydm.ap.apdb import Apdb
    from skydm.prompt.config import PromptConfig
    from skydm.prompt.locks import region_lock
    from skydm.prompt.worker import association_cells

    table, science, template, diff = _detector(visit, det)
    url = Path(root) / "apdb.sqlite3"
    cells = association_cells(diff, PromptConfig())
    if locked:
        apdb = Apdb(url)
    else:
        # Without the locks, hold each process after its read of the known
        # DIA objects until the other has read too: the interleaving that
        # the locks exist to prevent, made certain rather than left to the
        # scheduler (on a fast machine one process could otherwise finish
        # before the other starts).
        class ReadTogether(Apdb):
            def objects_in_region(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
                out = super().objects_in_region(*args, **kwargs)
                barrier.wait(60)
                return out

        apdb = ReadTogether(url)
    barrier.wait(60)
    with region_lock(url, cells) if locked else nullcontext():
        produce_visit_alerts(
            table, diff, apdb=apdb, archive_dir=Path(root) / "alerts", science=science,
            template=template,
        )  # fmt: skip
    apdb.close()


def _night(root: Path, *, locked: bool, visits: int = 2) -> list[dict[str, Any]]:
    from skydm.ap.apdb import Apdb

    Apdb(root / "apdb.sqlite3").close()
    ctx = mp.get_context("spawn")
    for visit in range(1, visits + 1):
        barrier = ctx.Barrier(2)
        procs = [
            ctx.Process(target=_associate, args=(str(root), visit, det, locked, barrier))
            for det in (0, 1)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(300)
            assert p.exitcode == 0
    apdb = Apdb(root / "apdb.sqlite3")
    try:
        return apdb.objects_in_region([(0.0, 360.0)], (-90.0, 90.0))
    finally:
        apdb.close()


def _per_source(objects: list[dict[str, Any]]) -> dict[int, int]:
    """Real source index -> DIA objects whose nearest real source it is (within 1")."""
    out = dict.fromkeys(range(len(FIELD.ra)), 0)
    cos = np.cos(np.radians(FIELD.dec))
    for o in objects:
        sep = np.hypot((FIELD.ra - o["ra"]) * cos, FIELD.dec - o["dec"]) * 3600.0
        i = int(np.argmin(sep))
        assert sep[i] < 1.0, f"DIA object {o['diaObjectId']} is {sep[i]:.2f} arcsec from any source"
        out[i] += 1
    return out


def test_the_shared_edge_is_in_both_detectors() -> None:
    a, _, _, _ = _detector(1, 0)
    b, _, _, _ = _detector(1, 1)
    shared = set(a["truth_index"]) & set(b["truth_index"])
    assert len(shared) >= 3  # sources seen by both detectors


def test_overlapping_detectors_at_once_make_one_object_per_source(tmp_path: Path) -> None:
    objects = _night(tmp_path, locked=True)
    counts = _per_source(objects)
    seen = {int(i) for v in (1, 2) for d in (0, 1) for i in _detector(v, d)[0]["truth_index"]}
    assert seen and all(counts[i] == 1 for i in seen), {
        i: counts[i] for i in seen if counts[i] != 1
    }
    assert len(objects) == len(seen)  # and no object that is not a real source


def test_without_the_locks_the_shared_edge_is_duplicated(tmp_path: Path) -> None:
    objects = _night(tmp_path, locked=False, visits=1)
    counts = _per_source(objects)
    assert max(counts.values()) == 2  # both read the empty APDB, both made the object
