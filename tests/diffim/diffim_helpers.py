"""Shared helpers for the diffim tests (a plain module: conftest is for fixtures)."""

from __future__ import annotations

import warnings
from pathlib import Path

from skydm.image import Exposure, read_exposure

DECAM = "decam_pair/input_data__DEC-OBS{}.mini.fits"
ESO = "eso085_null_pair/aligned_eso085-030-00{}.fit"


def read(path: Path) -> Exposure:
    """Read a real FITS image, quietly (ESO headers carry non-standard cards)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_exposure(path)
