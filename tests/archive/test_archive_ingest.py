"""Ingest: real and simulated raws, bad files beside good ones, kills, damage."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from archive_rawfiles import RawMaker, raw_factory, sim_header
from astropy.io import fits

from skydm.archive import ingest_files, restore, restore_raw_bytes
from skydm.cli.main import main
from skydm.errors import DataCorruptionError
from skydm.repo import DataId, Repository


@pytest.fixture
def make_raw(tmp_path: Path) -> RawMaker:
    return raw_factory(tmp_path / "raws")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.open(tmp_path / "repo")


def test_real_files_all_ingest_with_the_generic_definition(
    data_dir: Path, repo: Repository
) -> None:
    files = sorted(data_dir.glob("*/*.fit*"))
    report = ingest_files(repo, files)
    assert report.ok, [r.line() for r in report.failed]
    assert [r.status for r in report.results] == ["ingested"] * len(files)
    assert {r.data_id.instrument for r in report.results if r.data_id} == {"generic"}
    assert len({r.data_id for r in report.results}) == len(files)  # distinct visits
    assert report.ratio > 1.3
    for res in report.results:
        assert res.data_id is not None
        assert restore_raw_bytes(repo, res.data_id) == res.path.read_bytes()
    eso = next(r for r in report.results if r.path.name == "aligned_eso085-030-004.fit")
    assert eso.data_id is not None and eso.data_id.band == "Clear"
    assert str(eso.data_id.visit).startswith("20151227")  # night of DATE-OBS
    assert eso.ref is not None and eso.ref.meta["mjd"] == pytest.approx(57383.268333, abs=1e-5)
    # Again: every file is already there, nothing new is written.
    again = ingest_files(repo, files)
    assert [r.status for r in again.results] == ["present"] * len(files)
    assert len(repo.query(dataset_type="raw")) == len(files) and repo.verify() == []


def test_simulated_raws_and_get_exposure(make_raw: RawMaker, repo: Repository) -> None:
    paths = [make_raw(f"v{i}_{dt}.fits", dt, seed=i) for i, dt in
             enumerate(["uint16", "int32", "float32"], start=1)]  # fmt: skip
    report = ingest_files(repo, paths)
    assert report.ok and len(report.written) == 3
    for i, path in enumerate(paths, start=1):
        d = DataId("skysim", detector=3, visit=i, band="r")
        with restore(repo, d) as hdul, fits.open(path) as src:
            assert hdul[0].header.tostring() == src[0].header.tostring()
            assert np.array_equal(hdul[0].data, src[0].data)
        exp = repo.get_exposure("raw", d)
        assert np.allclose(exp.image, fits.getdata(path).astype(np.float64))
        assert exp.info.visit == i and exp.info.instrument == "skysim" and exp.info.gain == 1.5


def test_same_data_id_different_file_needs_replace(make_raw: RawMaker, repo: Repository) -> None:
    first = make_raw("a.fits", seed=1)
    other = make_raw("b.fits", seed=2, header=sim_header(visit=1))  # same visit, new pixels
    assert ingest_files(repo, [first]).ok
    refused = ingest_files(repo, [other])
    (res,) = refused.results
    assert res.status == "error" and "--replace" in res.message and "a.fits" in res.message
    assert restore_raw_bytes(repo, DataId("skysim", 3, 1, "r")) == first.read_bytes()
    replaced = ingest_files(repo, [other], replace=True)
    assert replaced.results[0].status == "replaced"
    assert restore_raw_bytes(repo, DataId("skysim", 3, 1, "r")) == other.read_bytes()
    assert repo.unregistered() == [] and repo.verify() == []


def _bad_files(tmp_path: Path, make_raw: RawMaker) -> dict[str, tuple[Path, str]]:
    full = make_raw("full.fits", seed=9)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(full.read_bytes()[: 2880 + 5000])
    text = tmp_path / "notes.txt"
    text.write_text("observing log: clear skies\n" * 20)
    table = tmp_path / "table.fits"
    fits.HDUList(
        [fits.PrimaryHDU(header=sim_header()),
         fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0, 2.0])])]
    ).writeto(table)  # fmt: skip
    no_visit = make_raw("novisit.fits", seed=4, header=sim_header(visit=None))
    no_date = fits.Header({"INSTRUME": "SomeCam", "FILTER": "V"})
    undated = make_raw("undated.fits", "int16", seed=5, header=no_date)
    return {
        "truncated": (truncated, "truncated"),
        "not fits": (text, "not a FITS file"),
        "no image": (table, "no image"),
        "no visit": (no_visit, "VISIT"),
        "no date": (undated, "observation time"),
    }


def test_bad_files_are_named_and_the_good_ones_ingested(
    tmp_path: Path, make_raw: RawMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _bad_files(tmp_path, make_raw)
    good = [make_raw("good.fits", seed=1), make_raw("good2.fits", "float32", seed=2)]
    argv = [str(good[0]), *(str(p) for p, _ in bad.values()), str(good[1])]
    capsys.readouterr()
    status = main(["ingest", "--repo", str(tmp_path / "repo"), "-q", *argv])
    out, err = capsys.readouterr()
    assert status != 0
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == len(bad)
    for path, problem in bad.values():
        (line,) = [ln for ln in error_lines if str(path) in ln]
        assert problem in line, line
    repo = Repository.open(tmp_path / "repo", create=False)
    refs = repo.query(dataset_type="raw")
    assert sorted(r.meta["source_name"] for r in refs) == ["good.fits", "good2.fits"]
    assert sum(line.startswith("ingested:") for line in out.splitlines()) == 2
    assert repo.unregistered() == [] and repo.verify() == []


def _ingest_cmd(repo: Path, files: list[Path]) -> list[str]:
    return [sys.executable, "-m", "skydm", "ingest", "--repo", str(repo), "-q",
            *map(str, files)]  # fmt: skip


@pytest.mark.parametrize("stage", ["write", "register"])
def test_kill_in_the_middle_leaves_no_half_registered_dataset(
    tmp_path: Path, make_raw: RawMaker, stage: str
) -> None:
    files = [make_raw(f"k{i}.fits", seed=i) for i in range(1, 5)]
    root = tmp_path / "repo"
    env = {**os.environ, "SKYDM_TEST_PAUSE": f"{stage}:3"}
    proc = subprocess.Popen(
        _ingest_cmd(root, files), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if line.startswith(f"skydm-test-pause {stage}"):
            break
        assert time.monotonic() < deadline, "ingest never reached the pause point"
    else:
        pytest.fail(f"ingest ended without pausing: {proc.wait()}")
    proc.send_signal(signal.SIGKILL)  # kill -9 with the third file half done
    proc.wait(timeout=30)
    repo = Repository.open(root, create=False)
    assert len(repo.query()) == 2  # the first two, and nothing of the third
    assert len(repo.unregistered()) == 1  # its temporary (write) or renamed (register) file
    assert main(["verify", "--repo", str(root), "-q"]) == 0
    done = subprocess.run(_ingest_cmd(root, files), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    statuses = [line.split(":")[0] for line in done.stdout.splitlines()[:-1]]
    assert statuses == ["present", "present", "ingested", "ingested"]
    assert len(repo.query()) == 4 and repo.verify() == []
    for i, path in enumerate(files, start=1):
        assert restore_raw_bytes(repo, DataId("skysim", 3, i, "r")) == path.read_bytes()
    # A renamed-but-unregistered file is taken over by the re-ingest (same content,
    # same name); a temporary file stays until `verify --clean`.
    assert len(repo.unregistered()) == (1 if stage == "write" else 0)
    assert main(["verify", "--repo", str(root), "--clean", "-q"]) == 0
    assert repo.unregistered() == []


def test_corrupted_stored_byte_is_found_by_verify_and_next_read(
    tmp_path: Path, make_raw: RawMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    paths = [make_raw("c1.fits", seed=1), make_raw("c2.fits", seed=2)]
    assert main(["ingest", "--repo", str(root), "-q", *map(str, paths)]) == 0
    repo = Repository.open(root, create=False)
    d = DataId("skysim", 3, 1, "r")
    stored = repo.get_ref("raw", d).path
    data = bytearray(stored.read_bytes())
    data[-3000] ^= 0x40  # inside the stored file, size unchanged
    stored.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", "--repo", str(root), "-q"]) == 1
    _, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith("damaged: ") and str(stored) in line
    with pytest.raises(DataCorruptionError, match=stored.name):
        restore_raw_bytes(repo, d)
    with pytest.raises(DataCorruptionError):
        repo.get_exposure("raw", d)
    # Re-ingesting the source repairs the archive.
    report = ingest_files(repo, [paths[0]])
    assert report.results[0].status == "repaired"
    assert repo.verify() == [] and restore_raw_bytes(repo, d) == paths[0].read_bytes()
    assert (
        hashlib.sha256(restore_raw_bytes(repo, d)).hexdigest()
        == (repo.get_ref("raw", d).meta["source_sha256"])
    )


def test_cli_refuses_unknown_instrument_and_missing_repo(
    tmp_path: Path, make_raw: RawMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_raw("x.fits")
    assert main(["ingest", "--repo", str(tmp_path / "r"), "--instrument", "hubble", str(path)]) == 2
    assert "--instrument 'hubble'" in capsys.readouterr().err
    assert main(["verify", "--repo", str(tmp_path / "nothing")]) == 2
    assert "no skydm repository" in capsys.readouterr().err
    # --instrument generic overrides INSTRUME = SKYSIM.
    assert main(["ingest", "--repo", str(tmp_path / "r"), "-q", "--instrument", "generic",
                 str(path)]) == 0  # fmt: skip
    (ref,) = Repository.open(tmp_path / "r").query()
    assert ref.data_id.instrument == "generic"
