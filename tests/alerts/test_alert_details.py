"""Alert details: cutout times, the producer compression setting, forced photometry at edges."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from skydm.alerts.cutout import CutoutMaker
from skydm.alerts.transport import COMPRESSION_TYPES, compression_config
from skydm.ap.synthetic import SyntheticField
from skydm.errors import BadValueError


def _header(maker: CutoutMaker) -> fits.Header:
    with fits.open(io.BytesIO(maker.cutout(20.0, 20.0))) as hdul:
        return hdul[0].header.copy()


def test_cutout_states_its_time_once_and_consistently() -> None:
    _, _, diff, _ = SyntheticField(seed=4, n_variables=3).visit(1)
    # A WCS that carries its own (different) observation time, as one read
    # from a real header does: it must not add a second MJD-OBS.
    assert diff.wcs is not None
    diff.wcs.wcs.mjdobs = diff.info.mjd - 0.3
    diff.wcs.wcs.dateobs = Time(diff.info.mjd - 0.3, format="mjd", scale="tai").isot
    diff.info.exptime = 30.0
    raw = CutoutMaker(diff, 21).cutout(20.0, 20.0)
    text = raw[: raw.index(b"END     ") + 80].decode("ascii")
    cards = [text[i : i + 8].strip() for i in range(0, len(text), 80)]
    assert cards.count("MJD-OBS") == 1 and cards.count("DATE-OBS") == 1
    h = _header(CutoutMaker(diff, 21))
    assert h["TIMESYS"] == "TAI"
    start = Time(h["DATE-OBS"], format="isot", scale="tai").mjd
    assert start == pytest.approx(h["MJD-OBS"], abs=1e-8)
    # DATE-OBS is the start; mid-exposure is the alert's midpointMjdTai.
    assert h["MJD-AVG"] == pytest.approx(diff.info.mjd, abs=1e-9)
    assert (h["MJD-AVG"] - h["MJD-OBS"]) * 86400 == pytest.approx(15.0, abs=1e-3)
    assert Time(h["DATE-AVG"], format="isot", scale="tai").mjd == pytest.approx(h["MJD-AVG"])


def test_cutout_without_visit_time_uses_the_wcs_time_once() -> None:
    _, _, diff, _ = SyntheticField(seed=4, n_variables=3).visit(1)
    assert diff.wcs is not None
    diff.wcs.wcs.mjdobs = 60100.25
    diff.info.mjd = float("nan")
    h = _header(CutoutMaker(diff, 21))
    assert h["MJD-OBS"] == 60100.25
    assert Time(h["DATE-OBS"], format="isot", scale="tai").mjd == pytest.approx(60100.25)


def test_compression_setting_is_validated() -> None:
    for codec in COMPRESSION_TYPES:
        assert compression_config(codec) == {"compression.type": codec}
    with pytest.raises(BadValueError, match=r"--compression.*lz5.*gzip"):
        compression_config("lz5")


def test_cli_rejects_an_unknown_codec_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from skydm.cli.main import main

    (tmp_path / "outbox.sqlite3").write_bytes(b"")
    monkeypatch.setenv("SKYDM_KAFKA_COMPRESSION", "brotli")
    argv = ["alerts", "stream", "--archive-dir", str(tmp_path), "--bootstrap", "localhost:1"]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SKYDM_KAFKA_COMPRESSION" in err[0] and "brotli" in err[0]


def test_forced_photometry_keeps_objects_whose_psf_the_edge_cuts() -> None:
    from skydm.ap.forced import forced_photometry

    _, sci, diff, _ = SyntheticField(seed=6, n_variables=3).visit(1)
    assert diff.wcs is not None
    ny, nx = diff.shape
    xs = np.array([0.0, 1.5, nx - 1.0, nx / 2, nx / 2])
    ys = np.array([ny / 2, 3.0, ny - 2.0, 0.2, ny / 2])
    ra, dec = diff.wcs.pixel_to_world_values(xs, ys)
    objects = [
        {"diaObjectId": i + 1, "ra": float(r), "dec": float(d)}
        for i, (r, d) in enumerate(zip(ra, dec, strict=True))
    ]
    out = forced_photometry(objects, diff, science=sci, time_processed=60000.0)
    assert [o["diaObjectId"] for o in out] == [1, 2, 3, 4, 5]
    assert [o["psfFlux_flag_edge"] for o in out] == [True, True, True, True, False]
    assert all(np.isfinite(o["psfFlux"]) and o["psfFluxErr"] > 0 for o in out)
    # A partial PSF is a noisier measurement, not a lost one.
    assert all(o["psfFluxErr"] > out[4]["psfFluxErr"] for o in out[:4])


def test_cli_produce_measures_a_detection_table(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from skydm.alerts.archive import read_archive
    from skydm.cli.main import main

    sci, tmpl, diff, table = SyntheticField(seed=12, n_variables=10).visit(1)
    for name, exp in (("sci", sci), ("tmpl", tmpl), ("diff", diff)):
        exp.write(tmp_path / f"{name}.fits")
    table.write(tmp_path / "sources.ecsv")
    argv = ["alerts", "produce", "--diff", str(tmp_path / "diff.fits")]
    argv += ["--sources", str(tmp_path / "sources.ecsv"), "--science", str(tmp_path / "sci.fits")]
    argv += ["--template", str(tmp_path / "tmpl.fits"), "--archive-dir", str(tmp_path / "a")]
    assert main(argv) == 0
    assert f"{len(table)} alerts" in capsys.readouterr().out
    (archive,) = (tmp_path / "a").glob("*.avro")
    packets = list(read_archive(archive))
    assert len(packets) == len(table)
    for p in packets:
        src = p["diaSource"]
        assert src["apFlux"] is not None and src["apFlux"] != src["psfFlux"]
        assert src["psfNdata"] > 0 and src["bboxSize"] > 0 and src["ixxPSF"] > 0
        assert src["scienceFlux"] is not None and src["templateFlux"] is not None
        assert src["raErr"] is not None and src["dipoleFitAttempted"] is not None
        head = p["cutoutDifference"][:2880].decode("ascii")
        assert head.count("MJD-OBS =") == 1
