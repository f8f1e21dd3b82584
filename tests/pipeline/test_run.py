"""``skydm run drp`` then ``skydm run ap`` on ``skydm sim`` raws: 4 detectors, 2 bands, 10 visits.

One repository goes through the whole story, in order, in a module fixture:
a damaged raw fails only its own unit and what depends on it; after the raw
is repaired the rerun plans exactly those units; then ``ap``.  A separate
repository is used for the ``kill -9`` test; the Dask comparison is in
``test_dask.py`` (self-contained).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table, vstack
from simfield import GRID, SimField, simulate_field

from skydm.cli.main import main
from skydm.repo import DataId, Repository

#: The story's first ``drp`` run (84 units) takes about 3.5 minutes on two
#: idle cores and was seen to pass 10 on the shared, loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

#: Object measurement comes from skydm.drp; without it the DRP stops at the coadds.
HAVE_DRP = importlib.util.find_spec("skydm.drp") is not None
COADD_ONLY = """\
description: drp without Object measurement
tasks:
  calibrate: {}
  warp: {}
  coadd: {}
"""
CONFIG = [arg for item in GRID for arg in ("-c", item)]


@dataclass
class Story:
    """What the module fixture did and saw."""

    field: SimField
    repo: Path
    drp: list[str]
    damaged: DataId | None = None


def _run(argv: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str]:
    rc = main(argv)
    out = capsys.readouterr().out if capsys is not None else ""
    return rc, out


def _drp_spec(tmp: Path) -> str:
    if HAVE_DRP:
        return "drp"
    path = tmp / "coadd-only.yaml"
    path.write_text(COADD_ONLY)
    return str(path)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimField:
    return simulate_field(tmp_path_factory.mktemp("sim"), detectors=4, visits=5)


@pytest.fixture(scope="module")
def story(
    sim: SimField, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Story]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("story")
    repo_dir = tmp / "repo"
    drp = [_drp_spec(tmp), "--repo", str(repo_dir), *CONFIG, "-j", "2", "--quiet"]
    s = Story(sim, repo_dir, drp)
    assert main(["ingest", "--repo", str(repo_dir), *map(str, sim.raws)]) == 0
    # Damage one archived raw at rest (bytes flipped inside its pixels).
    with Repository.open(repo_dir) as repo:
        ref = repo.query(dataset_type="raw", visit=3, detector=1)[0]
        s.damaged = ref.data_id
        data = bytearray(ref.path.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        ref.path.write_bytes(bytes(data))
    yield s


def test_run_drp_isolates_a_damaged_raw(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    capsys.readouterr()
    rc, out = _run(["run", *story.drp], capsys)
    assert rc == 1, out
    failures = out.split("failures:", 1)[1].strip().splitlines()
    # Only the damaged raw's calibration fails; its warp and its band's coadd
    # (and what reads that) are blocked; everything else completes.
    calib = [line for line in failures if line.strip().startswith("calibrate")]
    assert len(calib) == 1 and "visit=3, detector=1" in calib[0] and "failed" in calib[0]
    assert "checksum mismatch" in calib[0] and "re-ingest" in calib[0], calib[0]
    blocked = sorted(line.split("{")[0].strip() for line in failures if "blocked" in line)
    assert blocked == sorted(
        ["warp", "coadd", *(["measure", "object_catalog"] if HAVE_DRP else [])]
    )
    assert len(failures) == 1 + len(blocked)
    with Repository.open(story.repo) as repo:
        assert len(repo.query(dataset_type="calexp")) == 39
        assert [r.data_id.band for r in repo.query(dataset_type="coadd")] == ["r"]
        assert repo.find("calexp", story.damaged) is None  # type: ignore[arg-type]


def test_rerun_after_repair_does_only_that_unit_and_dependents(
    story: Story, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    from skydm.pipeline import build_graph, load_pipeline, plan

    raw = next(p for p in story.field.raws if p.name == "skysim_000003_01_g.fits")
    assert main(["ingest", "--repo", str(story.repo), str(raw)]) == 0
    pipeline = load_pipeline(story.drp[0], GRID)
    with Repository.open(story.repo) as repo:
        todo = plan(build_graph(pipeline, repo), repo)
    d = story.damaged
    assert d is not None
    got = {u.id for u in todo}
    assert f"calibrate{d}" in got and f"warp{d}" in got
    coadds = [u for u in todo if u.task == "coadd"]
    assert len(coadds) == 1 and coadds[0].data_id.band == d.band  # only its band's coadd
    downstream = {"measure", "object_catalog"} if HAVE_DRP else set()
    assert sorted(u.task for u in todo) == sorted(["calibrate", "warp", "coadd", *downstream])
    capsys.readouterr()
    rc, out = _run(["run", *story.drp], capsys)
    assert rc == 0, out
    assert f"{len(got)} units ok" in out


def test_run_ap_and_tap_tables(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    rc, out = _run(["run", "ap", *story.drp[1:]], capsys)
    assert rc == 0, out
    with Repository.open(story.repo) as repo:
        for dataset_type, n in (
            ("raw", 40), ("calexp", 40), ("warp", 40), ("coadd", 2), ("diff", 40),
            ("dia_src", 40), ("alert_summary", 40), ("dia_catalog", 1),
        ):  # fmt: skip
            assert len(repo.query(dataset_type=dataset_type)) == n, dataset_type
        assert repo.verify() == []
    assert sorted((story.repo / "alerts").glob("*.avro"))
    # The catalogs are served over TAP.
    from fastapi.testclient import TestClient

    from skydm.services.app import create_app

    tables = ["DiaObject", "DiaSource", *(["Object"] if HAVE_DRP else [])]
    with TestClient(create_app(story.repo)) as client:
        for name in tables:
            query = {"LANG": "ADQL", "FORMAT": "csv", "QUERY": f"SELECT COUNT(*) AS n FROM {name}"}
            response = client.post("/tap/sync", data=query)
            assert response.status_code == 200, response.text
            assert int(response.text.split()[-1]) > 0, name
    # A rerun finds everything done.
    rc, out = _run(["run", "ap", *story.drp[1:]], capsys)
    assert rc == 0 and "nothing to do" in out


def test_provenance_back_to_the_raws(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    target = "alert_summary:visit=7,detector=0"
    rc, out = _run(["provenance", "--repo", str(story.repo), target, "--config"], capsys)
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("alert_summary") and "task ap" in lines[0]
    for kind in ("diff", "calexp", "coadd", "warp"):
        assert any(line.lstrip().startswith(kind) for line in lines), kind
    # The coadd's 20 raws (g: visits 1, 3, 5, 7, 9 of 4 detectors), its own among them.
    assert sum("[ingested from skysim_" in line for line in lines) == 20
    assert '"method": "compare"' in out  # the coadd's full config
    rc, out = _run(["provenance", "--repo", str(story.repo), "calexp"], capsys)
    assert rc == 1


def _isolated_stars(sim: SimField) -> Table:
    """Truth stars on a detector (15 px from its edges), no neighbour (any truth source)
    within 3 arcsec brighter than a tenth of their flux."""
    from astropy.io import fits
    from astropy.wcs import WCS
    from scipy.spatial import cKDTree

    parts = []
    for det in range(4):
        raw = next(p for p in sim.raws if p.name.endswith(f"_{det:02d}_g.fits"))
        x, y = WCS(fits.getheader(raw)).world_to_pixel_values(sim.truth["ra"], sim.truth["dec"])
        edge, top = 15, sim.size - 1 - 15
        parts.append(sim.truth[(x > edge) & (x < top) & (y > edge) & (y < top)])
    truth = vstack(parts)

    def xy(t: Table) -> np.ndarray:
        return np.column_stack([t["ra"] * np.cos(np.radians(t["dec"])), t["dec"]]) * 3600

    # Neighbours are looked for in the whole truth catalog: one near a
    # detector's edge or in a gap (dithers cover them) blends all the same.
    flux = 10 ** (-0.4 * np.asarray(truth["mag_r"]))
    every = 10 ** (-0.4 * np.asarray(sim.truth["mag_r"]))
    near = cKDTree(xy(sim.truth)).query_ball_point(xy(truth), 3.0)
    alone = np.array(
        [
            all(every[k] <= 0.1 * flux[i] or k == i0 for k in ks)
            for i, (ks, i0) in enumerate(zip(near, _index_in(sim.truth, truth), strict=True))
        ]
    )
    return truth[(truth["kind"] == "star") & alone]


def _index_in(full: Table, part: Table) -> list[int]:
    """Row of each of ``part``'s sources in ``full`` (by truth id)."""
    row = {int(i): k for k, i in enumerate(full["id"])}
    return [row[int(i)] for i in part["id"]]


def _matched(story: Story) -> tuple[Table, Table, np.ndarray]:
    """The Object table, isolated truth stars, and whether each has an Object within 0.5"."""
    from scipy.spatial import cKDTree

    table = _catalog_table(story.repo, "Object")
    stars = _isolated_stars(story.field)
    cos = np.cos(np.radians(2.0))
    tree = cKDTree(np.column_stack([table["coord_ra"] * cos, table["coord_dec"]]))
    d, j = tree.query(np.column_stack([stars["ra"] * cos, stars["dec"]]))
    stars["row"] = j
    return table, stars, d * 3600 < 0.5


def _truth_flux(stars: Table, band: str) -> np.ndarray:
    from skydm.image.exposure import NJY_AB_MAG

    return np.asarray(10 ** ((NJY_AB_MAG - np.asarray(stars[f"mag_{band}"])) / 2.5))


@pytest.mark.skipif(not HAVE_DRP, reason="Object measurement is skydm.drp's")
def test_objects_complete_at_snr_10(story: Story) -> None:
    table, stars, matched = _matched(story)
    for band in ("g", "r"):
        snr = _truth_flux(stars, band) / np.nanmedian(np.asarray(table[f"{band}_psfFluxErr"]))
        bright = snr >= 10
        assert np.count_nonzero(bright) >= 20
        completeness = np.count_nonzero(matched & bright) / np.count_nonzero(bright)
        assert completeness >= 0.95, (band, completeness)


@pytest.mark.skipif(not HAVE_DRP, reason="Object measurement is skydm.drp's")
def test_objects_flux_matches_truth(story: Story) -> None:
    """Median Object/truth PSF flux within 1% in both bands (issue 12's acceptance).

    This field is one of 19 measured with full ``skydm run drp`` runs
    (2026-12-08, 4 detectors, 5 visits per band; docs/drp.md, "Crowded
    cells"): g within 1% on 18 (282 g at 1.013: on one of its detectors every
    PSF candidate has a companion inside the core), r on all 19, including
    four seeds that no change was tuned on (1201, 1302, 1403, 1504).
    """
    table, stars, matched = _matched(story)
    for band in ("g", "r"):
        flux = _truth_flux(stars, band)
        snr = flux / np.nanmedian(np.asarray(table[f"{band}_psfFluxErr"]))
        good = matched & (snr >= 10) & (np.asarray(stars[f"mag_{band}"]) > 18)  # unsaturated
        ratio = np.asarray(table[f"{band}_psfFlux"])[stars["row"][good]] / flux[good]
        assert abs(np.median(ratio) - 1) <= 0.01, (band, np.median(ratio))


def _catalog_table(repo: Path, name: str) -> Table:
    from skydm.catalog import open_engine

    with open_engine(repo / "catalog") as engine:
        return Table(engine.execute(f"SELECT * FROM {name}").table.to_pydict())


def test_kill_9_then_rerun_completes(sim: SimField, tmp_path: Path) -> None:
    repo_dir = tmp_path / "killed"
    raws = [p for p in sim.raws if "_00_" in p.name]  # detector 0: 10 raws
    assert main(["ingest", "--repo", str(repo_dir), *map(str, raws)]) == 0
    argv = [sys.executable, "-m", "skydm", "run", "drp", "--repo", str(repo_dir), *CONFIG]
    argv += ["-j", "2", "--quiet"]
    if not HAVE_DRP:
        spec = tmp_path / "coadd-only.yaml"
        spec.write_text(COADD_ONLY)
        argv[4] = str(spec)
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            with Repository.open(repo_dir) as repo:
                if len(repo.query(dataset_type="calexp")) >= 4:
                    break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers, mid-write
        proc.wait()
    with Repository.open(repo_dir) as repo:
        assert len(repo.query(dataset_type="calexp")) < 10, "the run finished before the kill"
    assert main(["run", *argv[4:]]) == 0
    with Repository.open(repo_dir) as repo:
        assert len(repo.query(dataset_type="calexp")) == 10
        assert len(repo.query(dataset_type="coadd")) == 2
        assert repo.verify() == []  # nothing registered without its file
    assert main(["verify", "--repo", str(repo_dir)]) == 0
    assert main(["run", *argv[4:]]) == 0  # and a third run has nothing to do
