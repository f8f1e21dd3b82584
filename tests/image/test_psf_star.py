"""The calexp PSF (skydm.image.starpsf) against the true PSF, on fields where
compact galaxies outnumber and outshine the stars."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest

from skydm.errors import BadValueError, UserError
from skydm.image import Exposure, MoffatPsf, VisitInfo
from skydm.image.starpsf import (
    StarPsfConfig,
    StarPsfFit,
    _core_radius,
    _geometry,
    _models,
    _radii,
    _Stamps,
    measure_star_psf,
)

TRUE = MoffatPsf(4.0, 3.5)


def _field(seed: int, n_stars: int = 20, n_galaxies: int = 40) -> Exposure:
    """A 300x300 background-subtracted image: Moffat stars and, brighter,
    compact galaxies (the PSF broadened to 1.3 times its FWHM)."""
    rng = np.random.default_rng(seed)
    shape = (300, 300)
    sky, gain, rn = 300.0, 2.0, 5.0
    model = np.full(shape, sky)
    galaxy = MoffatPsf(1.3 * TRUE.fwhm, 3.5)
    kinds = [(TRUE, n_stars, (3.6, 4.6)), (galaxy, n_galaxies, (4.0, 5.0))]
    for psf, n, (lo, hi) in kinds:
        for x, y, f in zip(
            rng.uniform(20, 280, n), rng.uniform(20, 280, n), 10 ** rng.uniform(lo, hi, n),
            strict=True,
        ):  # fmt: skip
            ix, iy = round(x), round(y)
            k = psf.kernel(size=41, dx=x - ix, dy=y - iy)
            y0, x0 = iy - 20, ix - 20
            ys, xs = slice(max(y0, 0), min(y0 + 41, 300)), slice(max(x0, 0), min(x0 + 41, 300))
            model[ys, xs] += f * k[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    img = rng.poisson(model * gain) / gain + rng.normal(0, rn / gain, shape)
    exp = Exposure((img - sky).astype(np.float32), info=VisitInfo(gain=gain, read_noise=rn))
    exp.variance = (np.clip(model, 0, None) / gain + (rn / gain) ** 2).astype(np.float32)
    return exp


def _flux_ratio(psf: MoffatPsf | object) -> float:
    """PSF flux, with the model, of a noiseless star of the true PSF (unit flux)."""
    m = psf.kernel(81)  # type: ignore[attr-defined]
    t = TRUE.kernel(81)
    return float(np.sum(m * t) / np.sum(m * m))


@cache
def _default_fit(seed: int) -> StarPsfFit:
    """The default measurement of ``_field(seed)`` (shared by two tests)."""
    return measure_star_psf(_field(seed))


@pytest.mark.parametrize("seed", [3, 4])
def test_star_psf_flux_matches_true_psf_among_compact_galaxies(seed: int) -> None:
    fit = _default_fit(seed)
    assert abs(fit.fwhm / TRUE.fwhm - 1) < 0.02, fit.fwhm
    # PSF fluxes measured with the model are those of the true PSF to 1%
    # (a model broadened by the galaxies gives them 5-10% high).
    assert abs(_flux_ratio(fit.psf) - 1) < 0.01, (_flux_ratio(fit.psf), fit)
    # The stamp holds the wings: 3.5 FWHM each way.
    assert fit.psf.image.shape[0] >= 2 * 3.5 * TRUE.fwhm


def test_a_large_image_is_measured_on_its_centre() -> None:
    # max_side below the image: the central 256^2 alone is measured (it
    # holds 3 or more stars, region_stars=3).
    exp = _field(3)
    fit = measure_star_psf(exp, StarPsfConfig(max_side=256, region_stars=3))
    assert abs(fit.fwhm / TRUE.fwhm - 1) < 0.02, fit.fwhm
    assert abs(_flux_ratio(fit.psf) - 1) < 0.01, (_flux_ratio(fit.psf), fit)
    # A centre with fewer than region_stars gives way to the whole image.
    whole = _default_fit(3)  # 300^2, below the default max_side
    grown = measure_star_psf(exp, StarPsfConfig(max_side=256, region_stars=40))
    assert fit.nstars < whole.nstars
    assert (grown.fwhm, grown.beta, grown.nstars) == (whole.fwhm, whole.beta, whole.nstars)


def test_star_psf_needs_stars() -> None:
    rng = np.random.default_rng(1)
    exp = Exposure(rng.normal(0, 1, (100, 100)).astype(np.float32), info=VisitInfo(gain=1.0))
    exp.variance = np.ones((100, 100), np.float32)
    with pytest.raises(UserError, match="PSF"):
        measure_star_psf(exp)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("min_stars", 1),
        ("stamp_fwhm", 1.0),
        ("beta_sigma", -1.0),
        ("fit_fwhm", 9.0),
        ("max_side", 100),
        ("region_stars", 2),
        ("companion_snr", 1.0),
        ("companion_min_radius", -1.0),
        ("companion_radius", 0.2),
    ],
)
def test_star_psf_config_is_validated(option: str, value: float) -> None:
    with pytest.raises(BadValueError, match=option):
        StarPsfConfig(**{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("fwhm", [2.0, 3.0, 5.0, 8.0])
@pytest.mark.parametrize("beta", [2.5, 3.5, 4.5])
def test_wing_pixels_match_full_subpixel_integration(fwhm: float, beta: float) -> None:
    """The fit's model (5x5 sub-samples in the core, the centre value with
    its Laplacian term outside) against 5x5 integration of every pixel."""
    rng = np.random.default_rng(0)
    n, side = 6, 2 * int(np.ceil(3.5 * fwhm)) + 1
    dx, dy = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
    cfg = StarPsfConfig()
    r2, core, sub2 = _geometry(side, dx, dy, _core_radius(fwhm, cfg))
    zero = np.zeros((n, side, side))
    fast = _models(_Stamps(zero, zero, dx, dy, dx, r2, core, sub2), fwhm, beta)
    alpha2 = MoffatPsf(fwhm, beta).alpha ** 2
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    full = ((1 + _radii(side, dx, dy, sub) / alpha2) ** -beta).sum(axis=-1)
    assert np.max(np.abs(fast / full - 1)) < 1e-4
    # Without the Laplacian term the wings would be off by much more: the
    # check can fail.
    centre = 25 * (1 + r2 / alpha2) ** -beta
    wing = ~np.broadcast_to(core, r2.shape)
    if wing.any():
        assert np.max(np.abs(centre[wing] / full[wing] - 1)) > 3e-4


def _render(
    rng: np.random.Generator, objects: list[tuple[tuple[int, int], Any, float]]
) -> Exposure:
    """A 160x160 exposure (sky 300, gain 2, read noise 5) of ``objects``, each
    ``((x, y), psf, flux)`` placed within half a pixel of ``(x, y)``, with its
    true variance plane."""
    n, sky, gain, rn = 160, 300.0, 2.0, 5.0
    model = np.full((n, n), sky)
    for (x0, y0), psf, flux in objects:
        x, y = x0 + rng.uniform(-0.5, 0.5), y0 + rng.uniform(-0.5, 0.5)
        ix, iy = round(x), round(y)
        model[iy - 20 : iy + 21, ix - 20 : ix + 21] += flux * psf.kernel(41, x - ix, y - iy)
    img = rng.poisson(model * gain) / gain + rng.normal(0, rn / gain, (n, n))
    exp = Exposure((img - sky).astype(np.float32), info=VisitInfo(gain=gain, read_noise=rn))
    exp.variance = (model / gain + (rn / gain) ** 2).astype(np.float32)
    return exp


def _few_stars_and_a_bright_galaxy(seed: int) -> Exposure:
    """Three stars (S/N ~100) and one compact galaxy (the PSF at 1.1 times its
    FWHM) six times brighter, all isolated: as on a simulated 256^2 detector
    whose brightest compact object is a galaxy (seed 101)."""
    rng = np.random.default_rng(seed)
    objects = [(TRUE, 10 ** rng.uniform(3.9, 4.1)) for _ in range(3)]
    objects.append((MoffatPsf(1.1 * TRUE.fwhm, 3.5), 10**4.8))
    places = [(40, 40), (120, 40), (40, 120), (80, 80)]
    return _render(
        rng, [((x, y), psf, flux) for (x, y), (psf, flux) in zip(places, objects, strict=True)]
    )


def test_a_bright_compact_galaxy_among_few_stars_is_rejected() -> None:
    exp = _few_stars_and_a_bright_galaxy(1)
    fit = measure_star_psf(exp)
    assert fit.nstars == 3
    assert abs(_flux_ratio(fit.psf) - 1) < 0.015, (_flux_ratio(fit.psf), fit)
    # Against the common fit alone (which the galaxy, at six times the
    # stars' S/N, sets) nothing was broader: PSF fluxes came out 8% high.
    old = measure_star_psf(exp, StarPsfConfig(median_reference=False))
    assert old.nstars == 4
    assert _flux_ratio(old.psf) > 1.05, (_flux_ratio(old.psf), old)


def _four_stars_and_a_haloed_one(seed: int) -> Exposure:
    """Four stars (S/N ~100) and one six times brighter whose core is the PSF's but
    which carries a broad halo (10% of its light, a Moffat of 2.5 times the FWHM):
    a bright PSF candidate contaminated in its wings only (a star on a faint host)."""
    rng = np.random.default_rng(seed)
    halo = MoffatPsf(2.5 * TRUE.fwhm, 2.5)
    objects = [((x, y), TRUE, 10 ** rng.uniform(3.9, 4.1)) for x, y in
               ((40, 40), (120, 40), (40, 120), (120, 120))]  # fmt: skip
    objects += [((80, 80), TRUE, 10**4.8), ((80, 80), halo, 0.1 * 10**4.8)]
    return _render(rng, objects)


def test_a_weight_cap_keeps_one_bright_haloed_candidate_from_setting_the_wings() -> None:
    exp = _four_stars_and_a_haloed_one(2)
    # Uncapped, the haloed star (six times the others' S/N, 36 times their
    # weight) sets a low beta, is then not broader than the fit, and stays:
    # PSF fluxes come out ~5% high.
    old = measure_star_psf(exp)
    assert old.nstars == 5 and _flux_ratio(old.psf) > 1.03, (_flux_ratio(old.psf), old)
    capped = measure_star_psf(exp, StarPsfConfig(max_weight=1.0))
    assert capped.nstars == 4
    assert abs(_flux_ratio(capped.psf) - 1) < 0.015, (_flux_ratio(capped.psf), capped)


def _four_stars_and_one_with_a_companion(seed: int) -> Exposure:
    """Four stars (S/N ~100) and one six times brighter with a faint star (5% of
    its flux) 2 FWHM away: on the bright star's slope it is no detection of its
    own, so the bright candidate passes the isolation cut (seeds 101 and 282:
    companions at 1.5-3 FWHM, 2-15% of the candidate's flux)."""
    rng = np.random.default_rng(seed)
    objects = [((x, y), TRUE, 10 ** rng.uniform(3.9, 4.1)) for x, y in
               ((40, 40), (120, 40), (40, 120), (120, 120))]  # fmt: skip
    a = rng.uniform(0, 2 * np.pi)
    d = 2 * TRUE.fwhm
    companion = (80 + round(d * np.cos(a)), 80 + round(d * np.sin(a)))
    objects += [((80, 80), TRUE, 10**4.8), (companion, TRUE, 0.05 * 10**4.8)]
    return _render(rng, objects)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_undetected_companion_is_masked_not_taken_for_the_wings(seed: int) -> None:
    exp = _four_stars_and_one_with_a_companion(seed)
    fit = measure_star_psf(exp)
    assert abs(_flux_ratio(fit.psf) - 1) < 0.01, (_flux_ratio(fit.psf), fit)
    # Without the residual search the bright star (36 times the others'
    # weight) fits its companion as wings: a low beta, PSF fluxes 2-3% high.
    old = measure_star_psf(exp, StarPsfConfig(companion_snr=0))
    assert _flux_ratio(old.psf) > 1.02 and old.beta < fit.beta, (_flux_ratio(old.psf), old)


def test_max_weight_is_validated() -> None:
    for bad in (-1.0, 0.5, float("inf")):
        with pytest.raises(BadValueError, match="max_weight"):
            StarPsfConfig(max_weight=bad)


def test_calibrate_task_passes_the_weight_cap_to_the_calexp_psf() -> None:
    from skydm.pipeline.calibrate import _psf
    from skydm.pipeline.tasks.visit import CalibrateConfig

    cfg = CalibrateConfig.from_overrides({"psf_max_weight": 1}, where="-c")
    assert isinstance(cfg, CalibrateConfig) and cfg.psf_max_weight == 1.0
    for bad in (0.5, -1.0, float("inf")):
        with pytest.raises(BadValueError, match="calibrate.psf_max_weight"):
            CalibrateConfig(psf_max_weight=bad)
    # calibrate_raw's PSF step with the cap gives the capped fit, not the default one.
    exp = _four_stars_and_a_haloed_one(2)
    psf = _psf(exp, False, StarPsfConfig(max_weight=cfg.psf_max_weight))
    assert abs(_flux_ratio(psf) - 1) < 0.015, _flux_ratio(psf)
