"""The archive's Rice coder against cfitsio's (astropy's copy), byte for byte."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits.hdu.compressed._compression import compress_rice_1_c

from skydm.archive._rice import rice_image_hdu, rice_tiles


def _reference(a: np.ndarray, tile: int) -> list[bytes]:
    flat = a.reshape(-1)
    return [
        compress_rice_1_c(flat[s : s + tile].tobytes(), 32, a.itemsize)
        for s in range(0, flat.size, tile)
    ]


def _ours(a: np.ndarray, tile: int) -> list[bytes]:
    big = a.astype(a.dtype.newbyteorder(">"))
    coded, ends = rice_tiles(big.tobytes(), a.itemsize, tile)
    starts = np.concatenate([[0], ends[:-1]])
    return [coded[s:e].tobytes() for s, e in zip(starts, ends, strict=True)]


def _noisy_with_spikes(seed: int, dtype: type) -> np.ndarray:
    """Noise of a random scale plus spikes of every magnitude at random places.

    Spikes give Rice codes with long unary runs at every bit alignment, and
    full-range values give the high-entropy blocks.
    """
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    n = int(rng.integers(1, 2500))
    bits = np.log2(float(info.max) - float(info.min))
    x = rng.normal(0, 2.0 ** rng.uniform(0, bits - 3), n)
    spikes = rng.random(n) < rng.uniform(0, 0.2)
    x[spikes] += rng.choice([-1, 1], spikes.sum()) * 2.0 ** rng.uniform(0, bits, spikes.sum())
    x += rng.uniform(info.min, info.max)
    return np.clip(x, info.min, info.max).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8])
def test_coder_matches_cfitsio_on_noise_spikes_and_edges(dtype: type) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(11)
    cases = [_noisy_with_spikes(seed, dtype) for seed in range(40)]
    cases += [
        np.zeros(100, dtype),  # all-zero blocks
        rng.integers(info.min, info.max, 777, endpoint=True).astype(dtype),  # high entropy
        np.array([info.max, info.min] * 50, dtype),  # largest differences, wrapping
        np.array([7], dtype),
    ]
    for k, a in enumerate(cases):
        for tile in (a.size, 33, 1, int(rng.integers(1, a.size + 1))):
            assert _ours(a, tile) == _reference(a, tile), (k, tile)


def test_rice_hdu_is_read_back_by_astropy_with_scaling() -> None:
    rng = np.random.default_rng(4)
    values = rng.integers(0, 65535, (70, 45)).astype(np.uint16)
    stored = (values.astype(np.int32) - 32768).astype(">i2")  # as FITS stores uint16
    cards = fits.Header({"BZERO": 32768, "EXTNAME": "CCD3", "OBJECT": "field"})
    hdu = rice_image_hdu(
        memoryview(stored.tobytes()), bitpix=16, shape=(70, 45), tile_shape=(16, 45), cards=cards
    )
    buf = io.BytesIO()
    fits.PrimaryHDU().writeto(buf)
    data = buf.getvalue() + b"".join(hdu)
    assert len(data) % 2880 == 0
    with fits.open(io.BytesIO(data)) as h:
        assert isinstance(h["CCD3"], fits.CompImageHDU) and h["CCD3"].compression_type == "RICE_1"
        assert h["CCD3"].header["OBJECT"] == "field"
        assert h["CCD3"].data.dtype == np.uint16
        assert np.array_equal(h["CCD3"].data, values)


def test_tiles_must_be_whole_rows() -> None:
    with pytest.raises(ValueError, match="whole rows"):
        rice_image_hdu(
            memoryview(bytes(40)), bitpix=16, shape=(4, 5), tile_shape=(2, 2), cards=fits.Header()
        )
