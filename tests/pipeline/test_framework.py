"""The framework without pixels worth the name: configs, YAML pipelines, --where, graph, plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skydm.cli.main import main
from skydm.errors import BadFileError, BadValueError
from skydm.pipeline import build_graph, load_pipeline, plan
from skydm.repo import DataId, Repository
from skydm.sim.survey import make_wcs

GRID = ["ra0=150.0", "dec0=2.0", "cell_size_deg=0.02", "margin=10"]


def _tiny_raws(repo_dir: Path, n_visits: int = 4, *, gain: bool = True) -> Repository:
    """Raws of 2 detectors (48x48, a WCS, no stars) registered as ingest would."""
    from skydm.archive import ingest_files

    files = []
    for visit in range(1, n_visits + 1):
        for det in (0, 1):
            wcs = make_wcs((48, 48), 150.0 + det * 0.003, 2.0, 0.2, 0.0)
            header = wcs.to_header()
            header.update(INSTRUME="SKYSIM", DETECTOR=det, VISIT=visit, FILTER="gr"[visit % 2])
            header.update(EXPTIME=30.0, MJD_OBS=60000.0 + visit)
            if gain:
                header["GAIN"] = 1.5
            data = np.random.default_rng(visit).normal(100, 5, (48, 48)).astype(np.float32)
            path = repo_dir.parent / f"raw_{visit}_{det}.fits"
            fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
            files.append(path)
    repo = Repository.open(repo_dir)
    report = ingest_files(repo, files)
    assert report.ok, report.summary()
    return repo


def test_config_overrides_are_validated() -> None:
    pipe = load_pipeline("drp", ["cell_size_deg=0.05", "coadd.method=clipped"])
    assert pipe.task("warp").config.cell_size_deg == 0.05  # type: ignore[attr-defined]
    assert pipe.task("coadd").config.method == "clipped"  # type: ignore[attr-defined]
    with pytest.raises(BadValueError, match=r"coadd\.method"):
        load_pipeline("drp", ["coadd.method=bogus"])
    with pytest.raises(BadValueError, match="nosuch"):
        load_pipeline("drp", ["nosuch=1"])
    with pytest.raises(BadValueError, match="min_warps"):
        load_pipeline("drp", ["coadd.min_warps=1.5"])
    with pytest.raises(BadValueError, match="PIPELINE"):
        load_pipeline("nonsense")
    # The config hash follows the config.
    assert load_pipeline("drp").task("coadd").config.sha256() != pipe.task("coadd").config.sha256()


def test_yaml_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("tasks:\n  coadd: {method: mean}\n  calibrate:\n  warp: {margin: 5}\n")
    pipe = load_pipeline(path)
    assert [t.name for t in pipe.tasks] == ["calibrate", "warp", "coadd"]  # data-flow order
    assert pipe.name == "mine"
    path.write_text("tasks:\n  calibrate: {}\n  fly: {}\n")
    with pytest.raises(BadFileError, match="unknown task 'fly'"):
        load_pipeline(path)
    path.write_text("tasks: [calibrate\n")
    with pytest.raises(BadFileError, match="not valid YAML"):
        load_pipeline(path)
    path.write_text("tasks:\n  warp: {margin: many}\n")
    with pytest.raises(BadValueError, match="margin"):
        load_pipeline(path)


def test_graph_units_dependencies_and_where(tmp_path: Path) -> None:
    repo = _tiny_raws(tmp_path / "repo", n_visits=6)
    pipe = load_pipeline("drp", GRID)
    graph = build_graph(pipe, repo)
    counts = graph.by_task()
    assert counts["calibrate"] == counts["warp"] == 12
    assert counts["coadd"] == 2  # one cell, two bands, 6 warps each
    coadd = next(u for u in graph.units if u.task == "coadd" and u.data_id.band == "g")
    assert len(coadd.inputs) == 6 and len(graph.deps[coadd.id]) == 6
    assert {d.split("{")[0] for d in graph.deps[coadd.id]} == {"warp"}
    calib = f"calibrate{DataId('skysim', 0, 1, 'r')}"
    assert coadd.id not in graph.dependents(calib)  # visit 1 is r
    assert len(plan(graph, repo)) == len(graph.units)

    sub = build_graph(pipe, repo, "band = 'g' AND visit >= 3")
    assert sub.by_task()["calibrate"] == 4  # g visits 3 and 5 on 2 detectors
    assert sub.by_task()["coadd"] == 1  # only g warps are predicted
    # ap needs the coadds as templates: none exist yet.
    ap = build_graph(load_pipeline("ap", GRID), repo)
    assert ap.by_task()["diffim"] == 0
    assert any("run drp" in reason for reason in ap.skipped)
    repo.close()


@pytest.mark.parametrize(
    ("where", "token"),
    [
        ("filter = 'r'", "unknown dimension 'filter'"),
        ("visit = 'ten'", "visit"),
        ("band = 'r'; DROP TABLE datasets", "';'"),
        ("band = 'r' OR 1=1 --", "1"),
    ],
)
def test_bad_where_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, token: str
) -> None:
    _tiny_raws(tmp_path / "repo", n_visits=1).close()
    capsys.readouterr()
    assert main(["run", "drp", "--repo", str(tmp_path / "repo"), "--where", where]) == 1
    err = capsys.readouterr().err
    assert err.startswith("skydm run: error: --where") and token in err
    assert "Traceback" not in err
    with Repository.open(tmp_path / "repo") as repo:  # nothing was run
        assert repo.query(dataset_type="calexp") == []


@pytest.mark.parametrize("executor", [["-j", "1"], ["--dask", "local:1"]], ids=["local", "dask"])
def test_failures_are_isolated_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], executor: list[str]
) -> None:  # fmt: skip
    # Raws without a gain cannot be calibrated: each unit fails with the reason,
    # the warps are blocked, and the run says so in its summary table (the
    # same on Dask, where the whole graph is submitted at once).
    if executor[0] == "--dask":
        pytest.importorskip("distributed")
    _tiny_raws(tmp_path / "repo", n_visits=1, gain=False).close()
    capsys.readouterr()
    argv = ["run", "drp", "--repo", str(tmp_path / "repo"), *executor, "--retries", "1"]
    assert main([*argv, *[a for g in GRID for a in ("-c", g)], "--quiet"]) == 1
    out = capsys.readouterr().out
    lines = out.split("failures:")[1].strip().splitlines()
    assert len(lines) == 4
    assert sum("failed" in line and "gain" in line for line in lines) == 2, out
    assert sum("blocked" in line and line.lstrip().startswith("warp") for line in lines) == 2
    import json

    record = json.loads(next((tmp_path / "repo" / "pipeline" / "runs").glob("*.json")).read_text())
    failed = [r for r in record["results"] if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["attempts"] == 2 for r in failed)  # --retries 1


def test_overlapping_cells_agree_with_the_sky_grid() -> None:
    # The graph's fast overlap test gives SkyGrid.cells_overlapping's answer
    # (random grids, pointings, sizes, rotations, declinations up to 85).
    from skydm.coadd.skygrid import SkyGrid
    from skydm.pipeline.regions import (
        as_footprint,
        footprint,
        overlapping_cells,
        overlapping_cells_many,
    )

    rng = np.random.default_rng(5)
    cases = []
    for _ in range(40):
        grid = SkyGrid(
            rng.uniform(0, 360), rng.uniform(-10, 10), float(rng.choice([0.02, 0.05, 0.1])),
            0.2, margin=int(rng.integers(0, 60)),
        )  # fmt: skip
        n = int(rng.choice([64, 256, 512]))
        wcs = make_wcs((n, n), rng.uniform(0, 360), rng.uniform(-85, 85), 0.25, rng.uniform(0, 90))
        expected = [c.id for c in grid.cells_overlapping(wcs, (n, n))]
        entry = footprint(wcs, (n, n))
        ra, dec = (np.asarray(v) for v in entry["border"])
        assert overlapping_cells(grid, ra, dec, entry["centre"][0]) == expected
        cases.append((grid, entry, expected))
    # The batched form (cold graphs) gives each raw the same answer.
    for grid, entry, expected in cases:
        others = [as_footprint(e) for _, e, _ in cases[:7]]
        got = overlapping_cells_many(grid, [*others, as_footprint(entry)])
        assert got[-1] == expected
