"""The second detection pass on the residual of the first pass's PSF models."""

from __future__ import annotations

import numpy as np
import pytest

from skydm.coadd import SkyCell
from skydm.drp import ObjectConfig, measure_objects
from skydm.drp._residual import roundness
from skydm.errors import BadValueError
from skydm.image import Exposure
from skydm.image.exposure import NJY_AB_MAG
from skydm.image.psf import MoffatPsf

SHAPE = (128, 128)
FWHM = 4.7
ZP = 30.0


def _coadd(rng: np.random.Generator, stars: list[tuple[float, float, float]]) -> Exposure:
    """White noise (sigma 2) plus Moffat (beta 3.5) stars (x, y, counts): the simulator's PSF."""
    psf = MoffatPsf(FWHM, 3.5)
    pad = 40
    size = 2 * pad + 1
    padded = np.pad(rng.normal(0.0, 2.0, SHAPE), pad)
    for x, y, counts in stars:
        ix, iy = round(x), round(y)
        kernel = psf.kernel(size=size, dx=x - ix, dy=y - iy)
        padded[iy : iy + size, ix : ix + size] += counts * kernel
    cell = SkyCell.centred(150.0, 2.0, SHAPE, 0.2)
    return Exposure(
        image=padded[pad:-pad, pad:-pad].astype(np.float32),
        variance=np.full(SHAPE, 4.0, dtype=np.float32),
        wcs=cell.wcs,
        psf=psf,
        zero_point=ZP,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_faint_star_on_a_bright_stars_slope_is_found(seed: int) -> None:
    # As on the held-out pipeline fields: a star ~400 times fainter (S/N ~25)
    # 3.2 FWHM from a bright one; the first pass's S/N map has no peak there.
    rng = np.random.default_rng(seed)
    bright, faint = (60.0, 64.0, 3.0e5), (75.0, 64.3, 700.0)
    coadds = {"r": _coadd(rng, [bright, faint])}
    first = measure_objects(coadds, ObjectConfig(residual_detection=False))
    assert len(first) == 1, "the first pass alone misses the faint star"
    table = measure_objects(coadds)
    assert len(table) == 2
    k = int(np.argmin(table["r_psfFlux"]))
    assert np.hypot(table["x"][k] - faint[0], table["y"][k] - faint[1]) < 0.5
    njy = 10 ** ((NJY_AB_MAG - ZP) / 2.5)
    pull = (table["r_psfFlux"][k] - faint[2] * njy) / table["r_psfFluxErr"][k]
    assert abs(pull) < 4, pull
    # The bright star's flux is fitted with its faint neighbour's model
    # (to the PSF model's 35-pixel stamp, which holds all but 0.1% of it).
    assert abs(table["r_psfFlux"][1 - k] / (bright[2] * njy) - 1) < 0.005


def test_an_isolated_bright_star_gives_no_residual_detection() -> None:
    # The subtracted model's core is imperfect (the fit's centroid, pixel
    # phase); the model-error variance keeps it from coming back.
    for seed in range(3):
        rng = np.random.default_rng(10 + seed)
        coadds = {"r": _coadd(rng, [(64.3, 63.8, 1.0e6)])}
        assert len(measure_objects(coadds)) == 1


def test_roundness_tells_a_point_from_an_arc() -> None:
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    point = np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (2 * 3.0**2))
    ring = np.exp(-((np.hypot(xx - 32, yy - 32) - 12.0) ** 2) / (2 * 3.0**2))
    ring *= 1 + 0.05 * np.cos(np.arctan2(yy - 32, xx - 32))  # its top at (44, 32)
    r = roundness(np.stack([point, ring]).reshape(2, 64, 64)[0], np.array([32]), np.array([32]))
    assert r[0] > 0.95
    arc = roundness(ring, np.array([44]), np.array([32]))
    assert arc[0] < 0.2


def test_residual_config_is_validated() -> None:
    with pytest.raises(BadValueError, match="residual_roundness"):
        ObjectConfig(residual_roundness=1.5)
    with pytest.raises(BadValueError, match="residual_model_error"):
        ObjectConfig(residual_model_error=-0.1)
    with pytest.raises(BadValueError, match="residual_min_separation"):
        ObjectConfig(residual_min_separation=0)
    with pytest.raises(BadValueError, match="residual_detection"):
        ObjectConfig(residual_detection="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_objects_of_a_split_group_are_fitted_without_their_neighbours_wings(seed: int) -> None:
    # On crowded cells every stamp overlaps a neighbour's and the whole cell
    # is one group, larger than max_group, so objects are fitted one at a
    # time; max_group=1 makes this pair such a group.  A lone fit gives the
    # faint star the bright one's wing (tens of per cent here); the
    # neighbour-subtracted sweeps give the joint fit's flux back.
    rng = np.random.default_rng(20 + seed)
    bright, faint = (60.0, 64.0, 3.0e5), (75.0, 64.3, 700.0)
    coadds = {"r": _coadd(rng, [bright, faint])}
    njy = 10 ** ((NJY_AB_MAG - ZP) / 2.5)

    def faint_pull(config: ObjectConfig) -> tuple[float, float]:
        table = measure_objects(coadds, config)
        assert len(table) == 2
        k = int(np.argmin(table["r_psfFlux"]))
        flux, err = float(table["r_psfFlux"][k]), float(table["r_psfFluxErr"][k])
        return (flux - faint[2] * njy) / err, flux

    lone, _ = faint_pull(ObjectConfig(max_group=1, crowded_sweeps=0))
    assert lone > 4, "a lone fit takes the bright star's wing"
    pull, flux = faint_pull(ObjectConfig(max_group=1))
    assert abs(pull) < 4, pull
    _, joint = faint_pull(ObjectConfig())
    assert abs(flux / joint - 1) < 0.01, (flux, joint)


def test_crowded_sweeps_is_validated() -> None:
    with pytest.raises(BadValueError, match="crowded_sweeps"):
        ObjectConfig(crowded_sweeps=-1)
