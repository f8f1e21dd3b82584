"""ObsLocTAP: the repository's raws as ivoa.obsplan, in the library and through the service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvo

from .conftest import Service, ingest_sim_raws


def test_obsplan_from_ingested_raws(tmp_path: Path) -> None:
    from skydm.catalog import open_engine
    from skydm.catalog.obsloc import sync_visits
    from skydm.repo import Repository

    repo = tmp_path / "repo"
    paths = ingest_sim_raws(repo, tmp_path / "raw")
    info = sync_visits(repo)
    assert info is not None and info.rows == len(paths) == 4
    assert sync_visits(repo).version == info.version  # unchanged: not rewritten
    with Repository.open(repo) as r:
        refs = {f"skysim/{x.data_id.visit}/0/{x.data_id.band}": x for x in r.query("raw")}
    with open_engine(repo / "catalog") as engine:
        rows = engine.execute(
            "SELECT obs_id, s_ra, s_dec, s_fov, s_region, t_min, t_max, t_exptime, em_min, "
            "em_max, execution_status FROM ivoa.obsplan "
            "WHERE CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', 10, 20, 0.05)) = 1"
        ).table.to_pylist()
    assert {r["obs_id"] for r in rows} == set(refs)
    for row in rows:
        ref = refs[row["obs_id"]]
        mid = ref.meta["mjd"]
        assert row["t_min"] == pytest.approx(mid - 15 / 86400) and row["t_exptime"] == 30
        assert row["t_max"] - row["t_min"] == pytest.approx(30 / 86400)
        band = ref.data_id.band
        assert (row["em_min"], row["em_max"]) == {"g": (400e-9, 552e-9), "r": (552e-9, 691e-9)}[
            band
        ]
        # 128 pixels of 0.2": the diagonal is 36.2" = 0.01006 deg.
        assert row["s_fov"] == pytest.approx(128 * 0.2 * np.sqrt(2) / 3600, rel=1e-3)
        assert row["s_region"].startswith("Polygon ICRS ")
        assert abs(row["s_ra"] - 10) < 0.01 and abs(row["s_dec"] - 20) < 0.01
        assert row["execution_status"] == "Performed"


def test_obsplan_through_the_service(service: Service) -> None:
    tap = pyvo.dal.TAPService(service.url)
    result = tap.run_sync(
        "SELECT obs_id, em_min, execution_status, tracking_type FROM ivoa.obsplan ORDER BY obs_id"
    )
    assert len(result) == 4
    assert set(result["execution_status"]) == {"Performed"}
    assert sorted(set(result["em_min"].tolist())) == [400e-9, 552e-9]
    field = result.resultstable.get_field_by_id_or_name("obs_id")
    assert field.ucd == "meta.id"


def test_cli_sync_visits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skydm.cli.main import main

    repo = tmp_path / "repo"
    ingest_sim_raws(repo, tmp_path / "raw")
    assert main(["catalog", "sync-visits", "--repo", str(repo)]) == 0
    assert "ivoa.obsplan: 4 observations" in capsys.readouterr().out
    assert main(["catalog", "list", "--repo", str(repo)]) == 0
    assert "ivoa.obsplan" in capsys.readouterr().out
    assert main(["catalog", "sync-visits", "--repo", str(tmp_path / "nothing")]) != 0
