"""skydm datasets and skydm retrieve: listing, selection, byte-identical raws, no overwrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skydm.archive import retrieve
from skydm.cli.main import main
from skydm.errors import ConflictError
from skydm.repo import DataId, Repository

ESO085 = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "eso085_null_pair"
)


def _eso_files() -> list[Path]:
    files = sorted(ESO085.glob("*.fit"))
    if len(files) != 2:
        pytest.skip(f"real ESO085 frames not found in {ESO085}")
    return files


def test_retrieve_real_eso085_frames_byte_identical(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    files = _eso_files()
    repo_dir, out = tmp_path / "repo", tmp_path / "out"
    assert main(["ingest", "--repo", str(repo_dir), "-q", *map(str, files)]) == 0
    capsys.readouterr()
    assert main(["retrieve", "--repo", str(repo_dir), "--out", str(out), "-q"]) == 0
    stdout = capsys.readouterr().out
    assert "2 file(s)" in stdout
    for f in files:
        assert (out / f.name).read_bytes() == f.read_bytes()
    # Asked again: refused, nothing touched; --overwrite writes them again.
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["retrieve", "--repo", str(repo_dir), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already exist" in err and "--overwrite" in err and err.count("\n") == 1
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main(["retrieve", "--repo", str(repo_dir), "--out", str(out), "-q", "--overwrite"]) == 0
    for f in files:
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_simulated_mef_raws_ingest_per_detector_and_come_back(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    sim_dir, repo_dir = tmp_path / "sim", tmp_path / "repo"
    code = main(["sim", "--out", str(sim_dir), "--seed", "11", "--visits", "2", "--bands", "g,r",
                 "--size", "96", "--detectors", "4", "--mef", "--no-clean", "--stars", "20",
                 "--galaxies", "5", "--artefacts", "none", "--transients", "0", "--variables", "0",
                 "--movers", "0"])  # fmt: skip
    assert code == 0
    raws = sorted(sim_dir.glob("skysim_*.fits"))
    assert len(raws) == 4  # 2 visits x 2 bands, each one file of 4 detectors
    assert main(["ingest", "--repo", str(repo_dir), "-q", *map(str, raws)]) == 0
    capsys.readouterr()
    with Repository.open(repo_dir, create=False) as repo:
        refs = repo.query(dataset_type="raw")
        assert len(refs) == 16 and {r.data_id.detector for r in refs} == {0, 1, 2, 3}
        visits = {r.data_id.visit for r in refs}
        # All detectors: each original file byte for byte.
        report = retrieve(repo, tmp_path / "all")
        assert sorted(p.name for p, _ in report.written) == [r.name for r in raws]
        for raw in raws:
            assert (tmp_path / "all" / raw.name).read_bytes() == raw.read_bytes()
        # Some detectors of one visit: each detector's own file (primary + its extension).
        visit = min(visits)
        where = f"visit = {visit} AND detector IN (1, 2)"
        report = retrieve(repo, tmp_path / "some", where=where)
        assert [item.kind for _, item in report.written] == ["detector", "detector"]
        source = next(r for r in raws if r.name.startswith(f"skysim_{visit:06d}"))
        with fits.open(source) as original:
            for path, item in report.written:
                det = item.refs[0].data_id.detector
                with fits.open(path) as hdul:
                    assert len(hdul) == 2 and hdul[1].header["DETECTOR"] == det
                    assert hdul[0].header == original[0].header
                    np.testing.assert_array_equal(hdul[1].data, original[det + 1].data)
        with pytest.raises(ConflictError):
            retrieve(repo, tmp_path / "some", where=where)


def test_datasets_lists_and_selects(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    repo_dir = tmp_path / "repo"
    with Repository.open(repo_dir) as repo:
        for visit in (1, 2, 3):
            for band in ("g", "r"):
                data = f"{visit}{band}".encode()
                repo.put_file(lambda fh, d=data: fh.write(d), "calexp",
                              DataId("skysim", 0, visit, band))  # fmt: skip
        ref = repo.put_file(lambda fh: fh.write(b"coadd"), "coadd",
                            DataId("skysim", band="r", skycell="c1"))  # fmt: skip
    assert main(["datasets", "--repo", str(repo_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["type", "instrument", "detector", "visit", "band", "skycell",
                                "size", "checksum", "path"]  # fmt: skip
    assert len(lines) == 1 + 7 + 1 and lines[-1].startswith("7 dataset(s)")
    coadd_row = next(line.split() for line in lines if line.startswith("coadd"))
    assert coadd_row[5] == "c1" and coadd_row[7] == ref.checksum[:12]
    assert coadd_row[8] == ref.path.relative_to(repo_dir.resolve()).as_posix()
    assert main(["datasets", "--repo", str(repo_dir), "--type", "calexp",
                 "--where", "band = 'r' AND visit >= 2"]) == 0  # fmt: skip
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert [(r[3], r[4]) for r in rows] == [("2", "r"), ("3", "r")]
    # A bad expression names the token, in one message, exit 1.
    assert main(["datasets", "--repo", str(repo_dir), "--where", "filter = 'r'"]) == 1
    assert "filter" in capsys.readouterr().err
    # Processed datasets come back as their FITS files, named by data ID.
    out = tmp_path / "out"
    assert main(["retrieve", "--repo", str(repo_dir), "--type", "calexp", "--where",
                 "visit = 3", "--out", str(out), "-q"]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "calexp_skysim_g_3_0.fits", "calexp_skysim_r_3_0.fits"]  # fmt: skip
    assert (out / "calexp_skysim_g_3_0.fits").read_bytes() == b"3g"
    capsys.readouterr()
    assert main(["retrieve", "--repo", str(repo_dir), "--where", "visit = 99",
                 "--out", str(tmp_path / "none")]) == 2  # fmt: skip
    assert "no 'raw' dataset" in capsys.readouterr().err
    (tmp_path / "file").write_bytes(b"")
    assert main(["retrieve", "--repo", str(repo_dir), "--type", "calexp",
                 "--out", str(tmp_path / "file")]) == 2  # fmt: skip
    assert "a directory" in capsys.readouterr().err
