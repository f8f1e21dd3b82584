"""Calibration of raws: the variance plane must describe the real noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skydm.errors import MissingMetadataError
from skydm.image import Mask, detect_sources, read_exposure
from skydm.pipeline import calibrate_raw


@pytest.mark.parametrize("name", ["DEC-OBS04a", "DEC-OBS18a"])
def test_variance_matches_noise_on_real_decam(data_dir: Path, name: str) -> None:
    raw = read_exposure(data_dir / "decam_pair" / f"input_data__{name}.mini.fits")
    exp = calibrate_raw(raw)
    assert 3.0 < exp.psf.fwhm < 8.0  # type: ignore[union-attr]
    detect_sources(exp, threshold=3.0)
    # Pixels away from every detection: their scatter over sqrt(variance) is ~1.
    free = (exp.msk & np.uint32(Mask.DETECTED)) == 0
    from scipy import ndimage

    free &= ~ndimage.binary_dilation(~free, iterations=4)
    z = exp.image[free] / np.sqrt(exp.var[free])
    robust_sigma = 1.4826 * np.median(np.abs(z - np.median(z)))
    assert 0.9 < robust_sigma < 1.1
    assert abs(np.median(exp.image[free])) < 0.1 * np.sqrt(np.median(exp.var))


def test_raw_without_gain_is_refused(data_dir: Path) -> None:
    raw = read_exposure(data_dir / "eso085_null_pair" / "aligned_eso085-030-004.fit")
    with pytest.raises(MissingMetadataError, match="calibration.*gain"):
        calibrate_raw(raw)
