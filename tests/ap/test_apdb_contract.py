"""One contract suite for the APDB, run against SQLite and PostgreSQL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from skydm.alerts.produce import produce_visit_alerts
from skydm.ap.apdb import Apdb
from skydm.ap.association import associate, make_id
from skydm.ap.forced import visit_region
from skydm.ap.synthetic import SyntheticField
from skydm.errors import BadValueError, ConflictError

#: nJy per count at the synthetic field's zero point (AB 28): 10 ** ((31.4 - 28) / 2.5).
NJY_PER_COUNT = 10 ** (3.4 / 2.5)

N_VISITS = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def apdb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Apdb]:
    if request.param == "sqlite":
        db = Apdb(tmp_path / "apdb.sqlite3")
    else:
        make = request.getfixturevalue("postgres_url")
        name = f"apdb_{abs(hash(str(tmp_path))) % 10**8}"
        db = Apdb(make(name))
    yield db
    db.close()


@pytest.fixture
def run(apdb: Apdb, tmp_path: Path) -> dict:
    field = SyntheticField(seed=3, n_variables=30)
    results, tables = [], []
    for v in range(1, N_VISITS + 1):
        sci, _, diff, table = field.visit(v)
        tables.append(table)
        results.append(
            produce_visit_alerts(table, diff, apdb=apdb, archive_dir=tmp_path / "a", science=sci)
        )
    return {"field": field, "results": results, "tables": tables, "apdb": apdb, "diff": diff}


def test_each_variable_is_one_object(run: dict) -> None:
    apdb: Apdb = run["apdb"]
    field: SyntheticField = run["field"]
    detected = set()
    for t in run["tables"]:
        detected.update(int(i) for i in t["truth_index"])
    assert apdb.count("DiaObject") == len(detected)
    assert run["results"][0].n_new_objects == len(run["tables"][0])
    assert sum(r.n_new_objects for r in run["results"]) == len(detected)
    assert apdb.count("DiaSource") == sum(len(t) for t in run["tables"])
    # Every object sits on one true variable, within a milliarcsecond.
    objs = list(apdb.get_objects(_all_object_ids(apdb)).values())
    for o in objs:
        sep = np.hypot(
            (field.ra - o["ra"]) * math.cos(math.radians(o["dec"])), field.dec - o["dec"]
        )
        assert sep.min() * 3600 < 1e-3


def _all_object_ids(apdb: Apdb) -> list[int]:
    ids: set[int] = set()
    for v in range(1, N_VISITS + 1):
        ids.update(s["diaObjectId"] for s in apdb.sources_of_visit(v, 0))
    return sorted(ids)


def test_object_summaries_match_their_sources(run: dict) -> None:
    apdb: Apdb = run["apdb"]
    from skydm.ap.association import object_summary

    objs = apdb.get_objects(_all_object_ids(apdb))
    hist = apdb.source_history(list(objs), since=0, before=1e6)
    for oid, rows in hist.items():
        srcs = apdb.rows_by_id("DiaSource", [r[0] for r in rows]).values()
        flux = np.array([s["psfFlux"] for s in srcs])
        err = np.array([s["psfFluxErr"] for s in srcs])
        summ = object_summary(objs[oid])
        assert summ["nDiaSources"] == len(rows) == summ["r_psfFluxNdata"]
        w = 1 / err**2
        assert summ["r_psfFluxMean"] == pytest.approx(np.sum(w * flux) / np.sum(w), rel=1e-5)
        assert summ["r_psfFluxMin"] == pytest.approx(flux.min(), rel=1e-6)
        assert summ["r_psfFluxMax"] == pytest.approx(flux.max(), rel=1e-6)
        if len(flux) > 1:
            assert summ["r_psfFluxSigma"] == pytest.approx(flux.std(ddof=1), rel=1e-5)
        assert summ["firstDiaSourceMjdTai"] == min(s["midpointMjdTai"] for s in srcs)


def test_forced_photometry_recovers_the_true_flux_change(run: dict) -> None:
    apdb: Apdb = run["apdb"]
    field: SyntheticField = run["field"]
    objs = apdb.get_objects(_all_object_ids(apdb))
    forced = apdb.forced_history(list(objs), since=0, before=1e6)
    assert apdb.count("DiaForcedSource") > 0
    pulls = []
    for oid, rows in forced.items():
        o = objs[oid]
        k = int(np.argmin(np.hypot(field.ra - o["ra"], field.dec - o["dec"])))
        for fs in apdb.rows_by_id("DiaForcedSource", [r[0] for r in rows]).values():
            # The field's truth is in counts; alert fluxes are in nJy (ZP 28).
            truth = (field.fluxes(int(fs["visit"]))[k] - field.base_flux[k]) * NJY_PER_COUNT
            pulls.append((fs["psfFlux"] - truth) / fs["psfFluxErr"])
    pulls_a = np.array(pulls)
    assert len(pulls_a) > 50
    assert abs(np.mean(pulls_a)) < 0.5 and 0.6 < np.std(pulls_a) < 1.5


def test_a_visit_cannot_be_stored_twice(run: dict, tmp_path: Path) -> None:
    field: SyntheticField = run["field"]
    _, _, diff, table = field.visit(2)
    with pytest.raises(ConflictError, match="visit 2 detector 0 is already in the APDB"):
        produce_visit_alerts(table, diff, apdb=run["apdb"], archive_dir=tmp_path / "b")


def test_region_query_finds_the_field_objects(run: dict) -> None:
    apdb: Apdb = run["apdb"]
    ra_ranges, dec_range = visit_region(run["diff"])
    assert len(apdb.objects_in_region(ra_ranges, dec_range)) == apdb.count("DiaObject")
    assert apdb.objects_in_region([(0.0, 1.0)], dec_range) == []


def test_association_is_one_to_one_and_nearest_first() -> None:
    objects = [
        {"diaObjectId": 1, "ra": 10.0, "dec": 0.0},
        {"diaObjectId": 2, "ra": 10.0 + 0.5 / 3600, "dec": 0.0},
    ]
    # Two sources near object 1; the closer one gets it, the other takes object 2.
    ra = np.array([10.0 + 0.1 / 3600, 10.0 + 0.05 / 3600, 10.0 + 5 / 3600])
    dec = np.zeros(3)
    m = associate(ra, dec, objects, radius_arcsec=1.0)
    assert m.object_ids == [2, 1, None]
    assert m.distances_arcsec[1] == pytest.approx(0.05, rel=1e-3)
    # Across RA = 0.
    m = associate(
        np.array([359.99999]), np.array([0.0]), [{"diaObjectId": 9, "ra": 0.00001, "dec": 0.0}]
    )
    assert m.object_ids == [9]


def test_ids_are_deterministic_and_checked() -> None:
    assert make_id(12, 3, 7) == make_id(12, 3, 7) != make_id(12, 3, 8)
    assert make_id(2**30, 1023, 2**20 - 1) < 2**63
    with pytest.raises(BadValueError, match="detector"):
        make_id(1, 5000, 0)


def test_vectorised_psf_fluxes_agree_with_psf_photometry() -> None:
    from skydm.ap.forced import psf_fluxes
    from skydm.image import psf_photometry

    field = SyntheticField(seed=21, n_variables=40)
    _, _, diff, _ = field.visit(3)
    xs = np.concatenate([field.x, [1.0, 250.0]])  # two whose PSF the edge cuts
    ys = np.concatenate([field.y, [1.0, 5.0]])
    f1, e1 = psf_fluxes(diff, xs, ys)
    f2, e2 = psf_photometry(diff, xs, ys)
    # psf_photometry gives up at the edge; the forced photometry fits the
    # part of the PSF that is there, with a larger error.
    assert np.all(np.isnan(f2[-2:])) and np.all(np.isfinite(f1))
    assert np.all(e1[-2:] > np.median(e1[:-2]))
    ok = np.isfinite(f2)
    # Within a small fraction of the error: the tabulated sub-pixel phases.
    assert np.all(np.abs(f1[ok] - f2[ok]) < 0.05 * e2[ok] + 1e-3 * np.abs(f2[ok]))
    np.testing.assert_allclose(e1[ok], e2[ok], rtol=1e-3)
