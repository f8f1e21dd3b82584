"""Outreach colour images: the Lupton stretch, band by band, and AVM read back by pyavm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.wcs import WCS
from PIL import Image
from pyavm import AVM

from skydm.errors import BadValueError
from skydm.image import color
from skydm.image.color import LuptonParams, color_from_planes, lupton_params, write_color


def sky_wcs(ny: int, nx: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.2]
    wcs.wcs.crpix = [nx / 2 + 0.3, ny / 2 - 0.6]
    angle = np.radians(20)
    scale = 0.2 / 3600
    wcs.wcs.cd = scale * np.array([[-np.cos(angle), np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return wcs


def planes(seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    r, g, b = (rng.normal(100, 5, shape) for _ in range(3))
    return r, g, b


def test_black_at_sky_and_a_red_source_is_red() -> None:
    r, g, b = (np.full((40, 50), 100.0) for _ in range(3))
    r[20, 25] += 500
    params = LuptonParams((100.0, 100.0, 100.0), stretch=50.0)
    rgb = color_from_planes((r, g, b), params)
    assert (rgb[0, 0] == 0).all()
    assert rgb[20, 25, 0] == 255 and rgb[20, 25, 1] == 0 and rgb[20, 25, 2] == 0
    auto = lupton_params(planes(1, (200, 200)))
    assert all(abs(m - 100) < 0.5 for m in auto.minimum)
    assert auto.stretch == pytest.approx(50, rel=0.05)  # 10 sky sigmas


@pytest.mark.parametrize("seed", [2, 3])
def test_row_bands_equal_the_whole(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    data = planes(seed, (730, 97))
    params = lupton_params(data)
    whole = color_from_planes(data, params)
    monkeypatch.setattr(color, "ROW_BAND", 64)
    assert np.array_equal(color_from_planes(data, params), whole)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_avm_gives_the_wcs_back(tmp_path: Path, suffix: str) -> None:
    ny, nx = 120, 160
    wcs = sky_wcs(ny, nx)
    data = planes(4, (ny, nx))
    rgb = color_from_planes(data, lupton_params(data))
    out = write_color(tmp_path / f"c{suffix}", rgb, wcs)
    back = AVM.from_image(str(out)).to_wcs()
    with Image.open(out) as picture:
        assert picture.size == (nx, ny)
        if suffix == ".png":  # lossless: the top row of the file is FITS row ny-1
            assert np.array_equal(np.asarray(picture)[0], rgb[ny - 1])
    for x, y in ((0.0, 0.0), (nx - 1.0, ny - 1.0), (37.5, 80.25)):
        ra, dec = wcs.all_pix2world([[x, y]], 0)[0]
        bx, by = back.all_world2pix([[ra, dec]], 0)[0]
        assert abs(bx - x) < 0.01 and abs(by - y) < 0.01


def test_tiff_carries_the_avm_packet(tmp_path: Path) -> None:
    wcs = sky_wcs(30, 40)
    data = planes(5, (30, 40))
    out = write_color(tmp_path / "c.tif", color_from_planes(data, lupton_params(data)), wcs)
    with Image.open(out) as picture:
        xmp = picture.tag_v2[700]
    back = AVM.from_xml(xmp if isinstance(xmp, bytes) else xmp.encode()).to_wcs()
    ra, dec = wcs.all_pix2world([[10.0, 20.0]], 0)[0]
    assert np.allclose(back.all_world2pix([[ra, dec]], 0)[0], [10.0, 20.0], atol=0.01)
    with pytest.raises(BadValueError, match="--out"):
        write_color(tmp_path / "c.gif", np.zeros((2, 2, 3), np.uint8), wcs)


def test_cli_color_from_coadds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skydm.cli.main import main
    from skydm.image import Exposure
    from skydm.repo import DataId, Repository

    wcs = sky_wcs(64, 80)
    with Repository.open(tmp_path / "repo") as repo:
        for k, band in enumerate("irg"):
            image = planes(10 + k, (64, 80))[0]
            exp = Exposure(image.astype(np.float32), None, None, wcs)
            repo.put_exposure(exp, "coadd", DataId("skysim", band=band, skycell="c1"))
    out = tmp_path / "pretty.png"
    argv = ["color", "--repo", str(tmp_path / "repo"), "--out", str(out)]
    assert main([*argv, "--bands", "i,r,g"]) == 0
    assert "with AVM" in capsys.readouterr().out
    back = AVM.from_image(str(out)).to_wcs()
    assert np.allclose(back.wcs.crval, wcs.wcs.crval)
    assert main([*argv, "--bands", "i,r,z"]) != 0
    err = capsys.readouterr().err
    assert "0 sky cells" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--bands", "i,r"]) != 0
    assert "--bands" in capsys.readouterr().err
