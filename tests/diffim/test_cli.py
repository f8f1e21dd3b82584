"""``skydm diffim`` on plain FITS files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from diffim_helpers import DECAM, ESO

from skydm.cli.main import main
from skydm.image import Mask, read_exposure

REQUIRED = {"x", "y", "snr", "flux", "flux_err", "flagged", "ra", "dec"}


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_cli_decam(data_dir: Path, tmp_path: Path, method: str, capsys) -> None:
    out, src = tmp_path / "diff.fits", tmp_path / "sources.ecsv"
    rc = main(
        [
            "diffim",
            str(data_dir / DECAM.format("04a")),
            str(data_dir / DECAM.format("18a")),
            "--out", str(out),
            "--sources", str(src),
            "--method", method,
            "--threshold", "5",
            "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    assert "DIA sources" in capsys.readouterr().out
    diff = read_exposure(out)
    assert diff.psf is not None and diff.wcs is not None
    assert np.isfinite(diff.var[diff.msk == 0]).all()
    table = Table.read(src)
    assert set(table.colnames) >= REQUIRED
    hit = table[np.hypot(table["x"] - 130, table["y"] - 128) < 4]
    assert len(hit) == 1 and hit["snr"][0] >= 10
    iy, ix = round(hit["y"][0]), round(hit["x"][0])
    assert diff.msk[iy, ix] & Mask.DETECTED


def test_cli_gain_option_and_errors(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "d.fits"
    args = [str(data_dir / ESO.format(4)), str(data_dir / ESO.format(5)), "--out", str(out)]
    assert main(["diffim", *args, "--gain", "1.5", "--read-noise", "8", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "no gain" not in err  # the CCD equation, not the fallback
    assert main(["diffim", *args, "--quiet"]) == 0
    assert "no gain" in capsys.readouterr().err  # the documented fallback, said out loud
    missing = tmp_path / "nope.fits"
    assert main(["diffim", str(missing), str(data_dir / ESO.format(5)), "--out", str(out)]) == 1
    assert "nope.fits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["diffim", *args, "--gain", "-2"])
