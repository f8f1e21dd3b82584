"""CompareWarp refuses warps it cannot judge, naming the warp and what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skydm.cli.main import main
from skydm.coadd import SkyCell, assemble_coadd
from skydm.coadd._cw_config import InputConfig
from skydm.errors import BadFileError, BadValueError, MissingMetadataError
from skydm.image import Exposure, Mask
from skydm.image.psf import GaussianPsf

CELL = SkyCell.centred(150.0, 2.0, (64, 64), 0.2)


def _warps(n: int = 4, seed: int = 11) -> list[Exposure]:
    rng = np.random.default_rng(seed)
    return [
        Exposure(
            rng.normal(0.0, 1.0, CELL.shape).astype(np.float32),
            np.ones(CELL.shape, np.float32),
            wcs=CELL.wcs,
            psf=GaussianPsf(1.5),
            zero_point=28.0,
            source=f"warp{k}",
        )
        for k in range(n)
    ]


def _spoil_variance(w: Exposure, fraction: float) -> None:
    """Zero the variance on ``fraction`` of the pixels, flagged rows excluded."""
    flat = w.var.reshape(-1)
    flat[: round(fraction * flat.size)] = 0.0


def test_a_warp_without_psf_is_refused_by_name_from_memory_and_files(tmp_path: Path) -> None:
    warps = _warps()
    warps[2].psf = None
    with pytest.raises(MissingMetadataError, match=r"^warp2: CompareWarp needs a PSF.*--method"):
        assemble_coadd(warps, "compare")
    paths = [w.write(tmp_path / f"w{k}.fits") for k, w in enumerate(warps)]
    with pytest.raises(MissingMetadataError, match=r"w2\.fits: CompareWarp needs a PSF"):
        assemble_coadd(paths, "compare")
    # The plain methods do not need a PSF and still coadd the warp.
    assert np.isfinite(assemble_coadd(paths, "mean").image).all()


def test_non_positive_variance_over_the_limit_is_refused_by_name(tmp_path: Path) -> None:
    warps = _warps()
    _spoil_variance(warps[1], 0.02)
    with pytest.raises(BadFileError, match=r"^warp1: has zero, negative or NaN variance on 2\.0%"):
        assemble_coadd(warps, "compare")
    paths = [w.write(tmp_path / f"w{k}.fits") for k, w in enumerate(warps)]
    with pytest.raises(BadFileError, match=r"w1\.fits: .*variance on 2\.0%.*max_bad_variance"):
        assemble_coadd(paths, "compare")
    # A looser limit accepts it, and the bad pixels are left out of the coadd.
    coadd = assemble_coadd(paths, "compare", inputs__max_bad_variance=0.05)
    assert np.isfinite(coadd.image).all()


def test_bad_variance_under_the_limit_or_masked_is_accepted() -> None:
    warps = _warps()
    _spoil_variance(warps[0], 0.005)  # under 1%
    warps[3].var[:32] = np.nan  # half the warp, but flagged NO_DATA: not usable pixels
    warps[3].msk[:32] |= np.uint32(Mask.NO_DATA)
    warps[2].var[40, :10] = -1.0  # 10 pixels of 4096: 0.24%
    coadd = assemble_coadd(warps, "compare")
    assert np.isfinite(coadd.image).all()


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_max_bad_variance_is_validated(bad: float) -> None:
    with pytest.raises(BadValueError, match="max_bad_variance"):
        InputConfig(max_bad_variance=bad)


def test_cli_prints_one_line_naming_the_warp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warps = _warps()
    _spoil_variance(warps[3], 0.44)
    paths = [str(w.write(tmp_path / f"w{k}.fits")) for k, w in enumerate(warps)]
    out = tmp_path / "coadd.fits"
    assert main(["coadd", *paths, "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "w3.fits" in err[0] and "44.0%" in err[0], err
    assert "Traceback" not in err[0] and not out.exists()
