"""The Exposure model: readers, FITS round trip, errors that name what is missing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skydm.errors import BadFileError, MissingMetadataError
from skydm.image import (
    Exposure,
    GaussianPsf,
    Mask,
    MoffatPsf,
    PixelPsf,
    VisitInfo,
    read_exposure,
)


def real_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.suffix in (".fits", ".fit"))


def test_reads_every_real_file(data_dir: Path) -> None:
    files = real_files(data_dir)
    assert len(files) == 16
    for path in files:
        exp = read_exposure(path)
        assert exp.image.ndim == 2 and exp.image.size > 0
        assert np.all(np.isfinite(exp.var)) and np.all(exp.var > 0)
        if "decam_pair" in str(path):
            assert exp.wcs is not None, path
            assert exp.info.gain > 3.5 and exp.info.sky > 0 and exp.info.band == "i"
        else:
            # ESO085 has no WCS; the NTT image has blank CTYPEs, which is no WCS either.
            assert exp.wcs is None, path


def test_ntt_nonstandard_cards_are_read(data_dir: Path) -> None:
    exp = read_exposure(data_dir / "ntt_single" / "image.fits")
    assert exp.info.instrument == "EMMI"
    assert exp.info.exptime == 1200.0
    assert math.isclose(exp.info.airmass, 1.068349957466)


def test_eso085_integer_data_keep_values(data_dir: Path) -> None:
    path = data_dir / "eso085_null_pair" / "aligned_eso085-030-004.fit"
    exp = read_exposure(path)
    with fits.open(path) as hdul:
        assert np.array_equal(exp.image, hdul[0].data.astype(np.float32))
    assert exp.info.exptime == 60.0
    assert math.isclose(exp.info.mjd, 2457383.7683333335 - 2400000.5)


def test_round_trip_loses_nothing(data_dir: Path, tmp_path: Path) -> None:
    exp = read_exposure(data_dir / "decam_pair" / "input_data__DEC-OBS04a.mini.fits")
    exp.msk[10:20, 30] |= np.uint32(Mask.BAD | Mask.CR)
    exp.msk[0, 0] |= np.uint32(Mask.STREAK)
    exp.psf = MoffatPsf(4.2, beta=3.0)
    exp.zero_point = 31.25
    exp.info.visit, exp.info.detector, exp.info.instrument = 1234, 37, "DECam"
    out = exp.write(tmp_path / "exp.fits")
    back = read_exposure(out)
    assert np.array_equal(back.image, exp.image)
    assert np.array_equal(back.var, exp.var)
    assert np.array_equal(back.msk, exp.msk)
    assert back.zero_point == 31.25
    assert back.info == exp.info
    assert isinstance(back.psf, MoffatPsf) and back.psf.fwhm == 4.2 and back.psf.beta == 3.0
    assert back.wcs is not None and exp.wcs is not None
    xy = np.array([[0.0, 0.0], [100.5, 200.25], [255.0, 17.0]])
    assert np.allclose(
        back.wcs.all_pix2world(xy, 0), exp.wcs.all_pix2world(xy, 0), atol=1e-10, rtol=0
    )
    assert back.meta["DETPOS"] == "N6"


def test_pixel_psf_round_trip(tmp_path: Path) -> None:
    kernel = GaussianPsf(1.7).kernel(size=21)
    exp = Exposure(np.zeros((30, 30), dtype=np.float32), psf=PixelPsf(kernel))
    back = read_exposure(exp.write(tmp_path / "p.fits"))
    assert isinstance(back.psf, PixelPsf)
    assert np.allclose(back.psf.image, kernel, atol=1e-7)


def test_nonfinite_pixels_are_flagged() -> None:
    img = np.ones((8, 8), dtype=np.float32)
    img[2, 3] = np.nan
    img[5, 5] = np.inf
    exp = Exposure(img, info=VisitInfo(gain=2.0, read_noise=3.0))
    assert exp.msk[2, 3] & Mask.NO_DATA and exp.msk[5, 5] & Mask.NO_DATA
    assert exp.msk[0, 0] == 0
    # CCD equation in ADU^2: 1/2 + (3/2)^2
    assert math.isclose(float(exp.var[0, 0]), 0.5 + 2.25, rel_tol=1e-6)


def test_missing_wcs_and_gain_are_named(data_dir: Path) -> None:
    path = data_dir / "eso085_null_pair" / "aligned_eso085-030-005.fit"
    exp = read_exposure(path)
    with pytest.raises(MissingMetadataError, match=r"aligned_eso085-030-005.fit.*WCS"):
        exp.require_wcs("alignment")
    with pytest.raises(MissingMetadataError, match=r"GAIN"):
        exp.require_gain("the noise model")


def test_bad_files_are_named(tmp_path: Path) -> None:
    text = tmp_path / "notes.fits"
    text.write_text("hello")
    with pytest.raises(BadFileError, match="notes.fits.*not a FITS file"):
        read_exposure(text)
    good = tmp_path / "good.fits"
    fits.PrimaryHDU(np.arange(10000, dtype=np.float32).reshape(100, 100)).writeto(good)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good.read_bytes()[:8000])
    with pytest.raises(BadFileError, match="cut.fits"):
        read_exposure(cut)
    table_only = tmp_path / "table.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
    ).writeto(table_only)
    with pytest.raises(BadFileError, match="table.fits.*no 2-d image"):
        read_exposure(table_only)


def test_cutout_pads_with_no_data() -> None:
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    exp = Exposure(img, info=VisitInfo(gain=1.0))
    cut = exp.cutout(1, 1, 5)
    assert cut.shape == (5, 5)
    assert cut.image[2, 2] == img[1, 1]
    assert np.isnan(cut.image[0, 0]) and cut.msk[0, 0] & Mask.NO_DATA
