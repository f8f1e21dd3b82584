"""The APDB's DiaObject is published without its accumulators (issue 14, item 21)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skydm.alerts.produce import produce_visit_alerts
from skydm.ap.apdb import Apdb
from skydm.ap.publish import catalog_tables
from skydm.ap.synthetic import SyntheticField
from skydm.catalog import list_tables, load_table


def test_diaobject_published_with_documented_columns_only(tmp_path: Path) -> None:
    field = SyntheticField(seed=5, n_variables=6)
    apdb = Apdb(tmp_path / "apdb.sqlite3")
    try:
        for visit in (1, 2, 3):
            _, _, diff, table = field.visit(visit)
            produce_visit_alerts(table, diff, apdb=apdb, archive_dir=tmp_path / "arch")
        tables = catalog_tables(apdb)
    finally:
        apdb.close()
    assert set(tables) == {"DiaObject", "DiaSource"}
    objects, sources = tables["DiaObject"], tables["DiaSource"]
    internal = {"sumX", "sumY", "sumZ", "validityStartMjdTai"}
    internal |= {f"r_{s}" for s in ("n", "sw", "swf", "sf", "sf2", "min", "max", "serr")}
    assert not internal & set(objects.colnames)
    for name, table in tables.items():
        load_table(tmp_path / "catalog", name, table)
    (info,) = [t for t in list_tables(tmp_path / "catalog") if t.definition.name == "DiaObject"]
    assert all(c.description for c in info.definition.columns), [
        c.name for c in info.definition.columns if not c.description
    ]
    # The published mean is the inverse-variance weighted mean of the object's sources.
    multi = objects[objects["nDiaSources"] >= 2][0]
    mine = sources[sources["diaObjectId"] == multi["diaObjectId"]]
    w = 1.0 / np.asarray(mine["psfFluxErr"], dtype=float) ** 2
    expected = np.sum(w * np.asarray(mine["psfFlux"], dtype=float)) / np.sum(w)
    assert np.isclose(multi["r_psfFluxMean"], expected, rtol=1e-5)
    assert multi["r_psfFluxNdata"] == len(mine)
