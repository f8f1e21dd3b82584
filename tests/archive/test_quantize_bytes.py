"""The lossy writer's bytes do not change when its code is made faster.

The SHA-256 values below are of files written by the encoder as it was
before issue 15's pass on its copies (commit 77149e1: a float64 copy of each
plane, a byte-swapped int32 copy, the plane's bytes copied for its dither
seed), on a real ESO085 frame with NaNs, zeros and exactly-stored (NO_DATA)
pixels added.  A repository written before must read the same, and a plane
written again must give the same file (and checksum).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skydm.archive._quantize import quantizable, quantized_image_hdu
from skydm.archive.lossy import encode_exposure_hdulist, hdulist_bytes
from skydm.archive.recipes import WriteRecipe
from skydm.image.exposure import Exposure
from skydm.image.io import read_exposure
from skydm.image.mask import Mask

FRAME = (
    Path(__file__).resolve().parents[2].parent
    / "shared/data/real/eso085_null_pair/aligned_eso085-030-004.fit"
)
EXPOSURE_SHA = "81513e308fa5abc66360492f2ffad47d56b199100fd75b3f3d2058a9bf411a65"
PLANE_SHA = {
    "float32": "c2da2e1ab1c26d0d64d5e0f3989768576feef4a6df287046ddec8be0b6446186",
    "big-endian float32": "438cd2dad5f3648aba9a3df2bce29c51a4cd3f23696da2eaa696a39a83b1e5af",
    "float64": "65c8cf5f5a021e93f08433bd10655a56fd89a9fe530928c395131a293ae2dabc",
}


@pytest.fixture(scope="module")
def frame() -> Exposure:
    if not FRAME.exists():
        pytest.skip(f"{FRAME} is not here (the shared real data)")
    exp = read_exposure(FRAME)
    exp.image[::97, ::89] = np.nan
    exp.image[3, :50] = 0.0
    exp.mask[::61, ::53] |= np.uint32(Mask.NO_DATA)
    exp.mask[::41, ::37] |= np.uint32(Mask.CR)
    return exp


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_exposure_encodes_to_the_same_bytes_as_before(frame: Exposure) -> None:
    hdul, report = encode_exposure_hdulist(frame.to_hdulist(), WriteRecipe.named("lossy16"))
    assert report["image"].codec == "lossy16" and report["image"].n_exact > 0
    assert _sha(hdulist_bytes(hdul)) == EXPOSURE_SHA


@pytest.mark.parametrize("kind", sorted(PLANE_SHA))
def test_a_plane_of_any_float_layout_encodes_as_before(frame: Exposure, kind: str) -> None:
    plane = {
        "float32": frame.image,
        "big-endian float32": frame.image.astype(">f4"),
        "float64": frame.image.astype(np.float64),
    }[kind]
    hdu = quantized_image_hdu(plane, fits.Header(), "IMAGE", quantum=0.37, tile_rows=16)
    assert _sha(hdulist_bytes(fits.HDUList([fits.PrimaryHDU(), hdu]))) == PLANE_SHA[kind]


def test_quantizable_matches_its_definition() -> None:
    x = np.array([[1.0, np.nan, -3.0e9], [np.inf, 2.0, 0.0]], dtype=np.float32)
    assert not quantizable(x[:, 2:], 1.0)  # finite beyond the integers
    assert quantizable(x[:, 2:], 10.0)
    assert quantizable(x[1:, :], 1.0)  # an infinity is not a value that must fit
    assert quantizable(np.full((2, 2), np.nan, np.float32), 1e-9)
    assert not quantizable(x, 1.0)
