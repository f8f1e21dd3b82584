"""The masked background's vectorised pieces against their plain definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from skydm.pipeline.sky import _clipped_means, grow_disk


def _reference_clipped_means(data: np.ndarray, ignored: np.ndarray, box: int):  # type: ignore[no-untyped-def]
    """One mesh at a time: the definition the vectorised version must match."""
    ny, nx = data.shape
    my, mx = -(-ny // box), -(-nx // box)
    grid = np.full((my, mx), np.nan)
    sigmas = np.full((my, mx), np.nan)
    for j in range(my):
        for i in range(mx):
            cell = (slice(j * box, (j + 1) * box), slice(i * box, (i + 1) * box))
            keep = ~ignored[cell]
            if keep.mean() < 0.5:
                continue
            values = data[cell][keep]
            centre, sigma = float(np.median(values)), 0.0
            for _ in range(3):
                sigma = 1.4826 * float(np.median(np.abs(values - centre)))
                if not sigma > 0:
                    break
                values = values[np.abs(values - centre) < 3.0 * sigma]
                centre = float(np.mean(values))
            grid[j, i], sigmas[j, i] = centre, sigma
    return grid, sigmas


def test_clipped_means_match_the_per_mesh_definition() -> None:
    rng = np.random.default_rng(17)
    # Partial meshes at both far edges, sources, masked blobs, a flat mesh.
    data = 1000.0 + 30.0 * rng.standard_normal((200, 170))
    data[rng.random(data.shape) < 0.01] += 5000.0
    data[:40, 128:] = 1000.0  # a constant mesh: zero sigma stops its clipping
    ignored = rng.random(data.shape) < 0.2
    ignored[64:128, 0:64] = rng.random((64, 64)) < 0.7  # mostly masked: skipped
    grid, sigmas = _clipped_means(data, ignored, 64)
    ref_grid, ref_sigmas = _reference_clipped_means(data, ignored, 64)
    assert np.isnan(grid[1, 0]) and np.isnan(ref_grid[1, 0])
    assert np.allclose(grid, ref_grid, rtol=1e-12, atol=0, equal_nan=True)
    assert np.allclose(sigmas, ref_sigmas, rtol=1e-12, atol=0, equal_nan=True)
    assert ref_sigmas[0, 2] == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_clipped_means_of_float32_pixels_with_ties(seed: int) -> None:
    """Sorted runs on float32 pixels: ties, skewed tails, sparse masks, partial meshes."""
    rng = np.random.default_rng(100 + seed)
    data = (1000.0 + 30.0 * rng.standard_normal((150, 170))).astype(np.float32)
    hits = rng.random(data.shape) < 0.05
    data[hits] += rng.exponential(300.0, int(hits.sum())).astype(np.float32)
    data[:20, :30] = np.round(data[:20, :30] / 50.0) * 50.0  # many equal values
    ignored = rng.random(data.shape) < 0.6 * rng.random()
    grid, sigmas = _clipped_means(data, ignored, 32)
    ref_grid, ref_sigmas = _reference_clipped_means(data.astype(np.float64), ignored, 32)
    assert np.allclose(grid, ref_grid, rtol=1e-12, atol=0, equal_nan=True)
    assert np.allclose(sigmas, ref_sigmas, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("radius", [0.0, 1.0, 2.4, 3.0, 5.5, 7.26, 12.0])
def test_grow_disk_equals_the_distance_transform(radius: float) -> None:
    rng = np.random.default_rng(int(radius * 10))
    found = rng.random((150, 133)) > 0.998
    found[0, 0] = found[-1, 70] = True
    ref = ndimage.distance_transform_edt(~found) <= radius
    assert np.array_equal(grow_disk(found, radius), ref)
