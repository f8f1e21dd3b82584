"""Focal planes of several detectors: shared pointing, WCS offsets, truth, independent noise."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from skydm.errors import BadValueError
from skydm.sim import SurveyConfig, simulate_survey, write_survey


def _cfg(**kw: object) -> SurveyConfig:
    base: dict[str, object] = dict(
        seed=9, shape=(96, 128), n_visits=2, n_stars=60, n_galaxies=10, n_detectors=4,
        detector_gap=20.0, rotation=4.0, artefacts="none", n_transients=0, n_variables=0,
        n_movers=0,
    )  # fmt: skip
    base.update(kw)
    return SurveyConfig(**base)  # type: ignore[arg-type]


def test_single_detector_pixels_unchanged() -> None:
    # Hashes of the raws made by the single-detector simulator before focal
    # planes existed: the default must not change a pixel.
    cfg = SurveyConfig(seed=5, shape=(96, 128), n_visits=2, n_stars=40, n_galaxies=10, rotation=3.0)
    survey = simulate_survey(cfg)
    hashes = [
        hashlib.sha256(np.ascontiguousarray(v.raw.image).tobytes()).hexdigest()[:16]
        for v in survey.visits
    ]
    assert hashes == ["b97d60144693e244", "c14d056efc6c2907"]
    assert [len(v.truth) for v in survey.visits] == [64, 60] and len(survey.truth) == 226


def test_detectors_share_the_pointing_and_sit_at_their_offsets() -> None:
    cfg = _cfg()
    survey = simulate_survey(cfg)
    assert len(survey.visits) == 2 * 4
    offsets = cfg.detector_offsets()
    # 2x2 grid: neighbours one detector plus the gap apart.
    assert offsets[1][0] - offsets[0][0] == 128 + 20 and offsets[2][1] - offsets[0][1] == 96 + 20
    for first in range(0, len(survey.visits), 4):
        group = survey.visits[first : first + 4]
        assert [v.detector for v in group] == [0, 1, 2, 3]
        assert len({(v.visit, v.mjd, v.seeing, v.band) for v in group}) == 1
        ref = group[0]
        for v, (ox, oy) in zip(group, offsets, strict=True):
            np.testing.assert_array_equal(v.wcs.wcs.crval, ref.wcs.wcs.crval)
            # The detector's centre, seen through detector 0's projection, is
            # at the focal-plane offset between the two (rotation included).
            sky = v.wcs.pixel_to_world((128 - 1) / 2, (96 - 1) / 2)
            x, y = ref.wcs.world_to_pixel(sky)
            assert x - (128 - 1) / 2 == pytest.approx(ox - offsets[0][0], abs=1e-6)
            assert y - (96 - 1) / 2 == pytest.approx(oy - offsets[0][1], abs=1e-6)


def test_truth_covers_every_detector_and_noise_is_independent() -> None:
    cfg = _cfg(n_visits=1, rotation=0.0)
    survey = simulate_survey(cfg)
    group = survey.visits[:4]
    stars = survey.truth[survey.truth["kind"] == "star"]
    seen: dict[int, int] = {}
    for v in group:
        t = v.truth[v.truth["kind"] == "star"]
        assert np.all((t["x"] > -1) & (t["x"] < 128) & (t["y"] > -1) & (t["y"] < 96))
        x, y = v.wcs.world_to_pixel_values(np.asarray(stars["ra"]), np.asarray(stars["dec"]))
        inside = (x > -0.5) & (x < 127.5) & (y > -0.5) & (y < 95.5)
        assert set(np.asarray(stars["id"])[inside]) <= set(np.asarray(t["id"]))
        for star_id in np.asarray(stars["id"])[inside]:
            seen[int(star_id)] = seen.get(int(star_id), 0) + 1
    assert len(seen) > 4 * 30 and max(seen.values()) == 1  # detectors do not overlap
    residuals = [np.asarray(v.raw.image, float) - v.model for v in group]
    corr = np.corrcoef(residuals[0].ravel(), residuals[1].ravel())[0, 1]
    assert abs(corr) < 0.05


def test_writes_truth_per_detector_and_mef_files(tmp_path: Path) -> None:
    cfg = _cfg(n_visits=1, bands=("g", "r"))
    survey = simulate_survey(cfg)
    paths = write_survey(survey, tmp_path / "single", clean=False)
    assert len(paths) == 8 and len({p.name for p in paths}) == 8
    for v in survey.visits:
        assert (
            tmp_path / "single" / "truth" / f"visit_{v.visit:06d}_{v.detector:02d}.ecsv"
        ).exists()
    table = Table.read(tmp_path / "single" / "visits.ecsv")
    assert len(table) == 8 and sorted(set(table["detector"])) == [0, 1, 2, 3]
    paths = write_survey(simulate_survey(cfg), tmp_path / "mef", clean=True, mef=True)
    assert len(paths) == 2
    for path, first in zip(paths, survey.visits[::4], strict=True):
        with fits.open(path) as hdul, fits.open(tmp_path / "mef" / "clean" / path.name) as clean:
            assert len(hdul) == 5 and hdul[0].data is None
            assert hdul[0].header["VISIT"] == first.visit and "DETECTOR" not in hdul[0].header
            for k in range(4):
                v = survey.visits[survey.visits.index(first) + k]
                assert hdul[k + 1].header["DETECTOR"] == k and hdul[k + 1].name == f"DET{k:02d}"
                np.testing.assert_array_equal(hdul[k + 1].data, np.asarray(v.raw.image, np.uint16))
                assert clean[k + 1].header["SIMCLEAN"] is True


def test_focal_plane_config_is_validated() -> None:
    with pytest.raises(BadValueError, match="n_detectors"):
        _cfg(n_detectors=0)
    with pytest.raises(BadValueError, match="detector_gap"):
        _cfg(detector_gap=-1.0)
