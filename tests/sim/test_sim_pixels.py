"""Pixels of simulated visits: determinism, raw/clean twins, noise, detector effects."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from skydm.image import Mask
from skydm.sim import FOOTPRINT_CLASSES, SurveyConfig, simulate_survey
from skydm.sim.survey import Survey


def _usable(v) -> np.ndarray:  # type: ignore[no-untyped-def]
    return (v.clean.msk & np.uint32(Mask.BAD | Mask.SAT)) == 0


def test_same_seed_gives_identical_pixels_in_any_order(small_survey: Survey) -> None:
    again = simulate_survey(small_survey.config)
    # Render the second survey's visits in reverse order: pixels must not
    # depend on which visits were made before.
    for v in reversed(again.visits):
        _ = v.raw
    for a, b in zip(small_survey.visits, again.visits, strict=True):
        assert np.array_equal(a.raw.image, b.raw.image)
        assert np.array_equal(a.clean.image, b.clean.image)
        assert np.array_equal(a.raw.msk, b.raw.msk)
        assert len(a.truth) == len(b.truth)
        assert np.array_equal(a.truth["flux"], b.truth["flux"])
    other = simulate_survey(dataclasses.replace(small_survey.config, seed=8, n_visits=1))
    assert not np.array_equal(other.visits[0].raw.image, small_survey.visits[0].raw.image)


def test_release_renders_the_same_pixels_again(small_survey: Survey) -> None:
    v = small_survey.visits[1]
    before = v.raw.image.copy()
    v.release()
    assert np.array_equal(v.raw.image, before)


def test_raw_minus_clean_is_zero_outside_artefact_footprints(small_survey: Survey) -> None:
    for v in small_survey.visits:
        diff = v.raw.image.astype(np.float64) - v.clean.image
        union = np.zeros(v.raw.shape, bool)
        for cls in FOOTPRINT_CLASSES:
            union |= v.artefacts[cls]
        assert np.all(diff[~union] == 0.0)
        assert np.all(v.artefact_signal[~union] == 0.0)
        # Inside: the artefact signal plus its Poisson noise.  Over all the
        # unsaturated footprint pixels the sum must match within 5 sigma.
        ok = union & _usable(v) & ((v.raw.msk & np.uint32(Mask.SAT)) == 0)
        signal = float(v.artefact_signal[ok].sum())
        noise = np.sqrt(signal / v.config.gain + ok.sum() / 12.0)  # Poisson + rounding
        assert abs(float(diff[ok].sum()) - signal) < 5 * noise + 1.0


def test_every_artefact_class_is_injected(small_survey: Survey) -> None:
    seen = {cls: 0 for cls in FOOTPRINT_CLASSES}
    for v in small_survey.visits:
        for cls in FOOTPRINT_CLASSES:
            seen[cls] += int(v.artefacts[cls].sum())
        kinds = set(v.truth["cls"])
        for cls in FOOTPRINT_CLASSES:
            # A class with footprint pixels has a truth row, and the reverse.
            assert (v.artefacts[cls].any()) == (cls in kinds), (v.visit, cls)
    assert all(n > 0 for n in seen.values()), seen


def test_clean_has_no_artefacts_and_raw_has_them(small_survey: Survey) -> None:
    for v in small_survey.visits:
        cr = v.artefacts["cosmic_rays"] & _usable(v)
        if not cr.any():
            continue
        sigma = np.sqrt(v.clean.var[cr])
        resid_clean = (v.clean.image[cr] - v.model[cr]) / sigma
        resid_raw = (v.raw.image[cr] - v.model[cr]) / sigma
        assert abs(float(np.mean(resid_clean))) < 0.5
        assert float(np.mean(resid_raw)) > 3.0


def test_noise_follows_the_ccd_equation(small_survey: Survey) -> None:
    cfg = small_survey.config
    for v in small_survey.visits:
        ok = _usable(v)
        model = v.model.astype(np.float64)
        expected_var = model / cfg.gain + (cfg.read_noise / cfg.gain) ** 2
        assert np.allclose(v.clean.var, expected_var, rtol=1e-5)
        z = (v.clean.image - model) / np.sqrt(v.clean.var)
        # Rounding to integer ADU adds 1/12 ADU^2, far below the sky noise.
        assert abs(float(np.std(z[ok])) - 1.0) < 0.02
        assert abs(float(np.mean(z[ok]))) < 0.02
        # Source-free pixels alone (sources below 2% of the noise).
        empty = ok & (model - v.sky < 0.02 * np.sqrt(v.sky / cfg.gain))
        assert empty.sum() > 1000
        assert abs(float(np.std(z[empty])) - 1.0) < 0.03
        raw_ok = ok & ((v.raw.msk & np.uint32(Mask.SAT)) == 0)
        zr = (v.raw.image - model - v.artefact_signal) / np.sqrt(v.raw.var)
        assert abs(float(np.std(zr[raw_ok])) - 1.0) < 0.03


def test_exposures_carry_metadata(small_survey: Survey) -> None:
    cfg = small_survey.config
    for v in small_survey.visits:
        for exp in (v.raw, v.clean):
            info = exp.info
            assert info.instrument == "skysim" and info.visit == v.visit and info.band == "r"
            assert info.gain == cfg.gain and info.read_noise == cfg.read_noise
            assert info.saturation == cfg.saturation and info.sky == pytest.approx(v.sky)
            assert info.seeing == pytest.approx(v.seeing)
            assert exp.zero_point == pytest.approx(v.zero_point)
            assert exp.psf is not None and exp.wcs is not None
            assert exp.image.dtype == np.float32
        # The raw keeps the sky, like a real raw.
        assert np.median(v.raw.image) == pytest.approx(v.sky, rel=0.05)
    visits = [v.visit for v in small_survey.visits]
    assert visits == sorted(visits) and len(set(visits)) == len(visits)
    mjds = [v.mjd for v in small_survey.visits]
    assert mjds == sorted(mjds)


def test_bad_columns_and_saturation(small_survey: Survey) -> None:
    cfg = dataclasses.replace(
        small_survey.config,
        n_visits=2,
        bad_columns=3,
        artefacts=(),
        n_movers=0,
        star_mags=(12.0, 22.0),
    )
    survey = simulate_survey(cfg)
    masks = []
    for v in survey.visits:
        for exp in (v.raw, v.clean):
            bad = (exp.msk & np.uint32(Mask.BAD)) != 0
            cols = np.flatnonzero(bad.all(axis=0))
            assert cols.size == 3 and bad.sum() == 3 * cfg.shape[0]
            for c in cols:
                assert np.all(exp.image[:, c] == 0.0) or np.all(exp.image[:, c] == cfg.saturation)
            sat = (exp.msk & np.uint32(Mask.SAT)) != 0
            assert sat.any(), "a 12th magnitude star must saturate"
            assert np.all(exp.image[sat & ~bad] == cfg.saturation)
            assert np.all(exp.image[~sat & ~bad] < cfg.saturation)
            masks.append(cols)
    # The defects belong to the detector: the same columns in every visit.
    assert all(np.array_equal(masks[0], m) for m in masks)


def test_float32_raws_are_not_digitised_and_uint16_are(small_survey: Survey) -> None:
    base = dataclasses.replace(
        small_survey.config, n_visits=1, shape=(64, 64), n_stars=10, n_galaxies=2
    )
    f = simulate_survey(dataclasses.replace(base, raw_dtype="float32")).visits[0].raw.image
    u = simulate_survey(base).visits[0].raw.image
    assert np.all(u == np.rint(u)) and u.min() >= 0
    assert not np.all(f == np.rint(f))


def test_bad_configuration_is_refused_with_the_parameter_named() -> None:
    from skydm.errors import BadValueError

    with pytest.raises(BadValueError, match="artefacts"):
        SurveyConfig(artefacts=("cosmic_rays", "dragons"))
    with pytest.raises(BadValueError, match="shape"):
        SurveyConfig(shape=(8, 8))
    with pytest.raises(BadValueError, match="raw_dtype"):
        SurveyConfig(raw_dtype="uint8")
    with pytest.raises(BadValueError, match="bands"):
        SurveyConfig(bands=("q",))
    with pytest.raises(BadValueError, match="seeing_range"):
        SurveyConfig(seeing_range=(1.5, 0.6))
    # Names may also come as one comma-separated string.
    assert SurveyConfig(artefacts="none", n_movers=0).artefacts == ()
    assert SurveyConfig(bands="g,r").bands == ("g", "r")
