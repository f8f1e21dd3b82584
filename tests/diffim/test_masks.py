"""The difference's mask growth against per-bit scipy box filters (what it replaced)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from skydm.diffim._common import CARRIED, grow_masks
from skydm.image.mask import Mask


def _reference(masks: list[tuple[np.ndarray, int]]) -> np.ndarray:
    out = np.zeros(masks[0][0].shape, dtype=np.uint32)
    for mask, size in masks:
        for bit in Mask:
            plane = (mask & np.uint32(bit) & CARRIED) != 0
            if not plane.any():
                continue
            if size > 1:
                plane = ndimage.maximum_filter(plane.view(np.uint8), size=size, mode="constant")
            out[plane.astype(bool)] |= np.uint32(bit)
    return out


@pytest.mark.parametrize("sizes", [(1, 1), (5, 1), (4, 9), (25, 24), (300, 3)])
def test_grow_masks_equals_per_bit_box_filters(sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    shape = (211, 190)
    bits = np.array([0, Mask.CR, Mask.SAT, Mask.NO_DATA, Mask.DETECTED, Mask.EDGE], np.uint32)
    masks = []
    for size in sizes:
        mask = bits[rng.integers(0, len(bits), shape)] * (rng.random(shape) < 0.01)
        mask = mask.astype(np.uint32)
        mask[:, :7] |= np.uint32(Mask.NO_DATA)  # a dense region at an edge
        mask[100, 100] |= np.uint32(Mask.SAT | Mask.CR)
        masks.append((mask, size))
    got = grow_masks(masks)
    assert np.array_equal(got, _reference(masks))
    assert not (got & np.uint32(Mask.DETECTED)).any()  # not carried


@pytest.mark.parametrize("size", [2, 3, 17, 41])
def test_grow_masks_of_sparse_masks(size: int) -> None:
    """A few hits per row (a calexp's cosmic rays): the painted paths, edges included."""
    rng = np.random.default_rng(size)
    shape = (300, 257)
    mask = (rng.random(shape) < 0.002) * np.uint32(Mask.CR)
    mask[0, 0] = mask[-1, -1] = mask[150, 0] = np.uint32(Mask.SAT)
    mask = mask.astype(np.uint32)
    assert np.array_equal(grow_masks([(mask, size)]), _reference([(mask, size)]))
