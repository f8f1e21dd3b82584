"""Shared helpers for the diffim tests (a plain module: conftest is for fixtures)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from skydm.image import Exposure, Mask, read_exposure

DECAM = "decam_pair/input_data__DEC-OBS{}.mini.fits"
ESO = "eso085_null_pair/aligned_eso085-030-00{}.fit"


def read(path: Path) -> Exposure:
    """Read a real FITS image, quietly (ESO headers carry non-standard cards)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_exposure(path)


def _lanczos(t: np.ndarray, a: int = 3) -> np.ndarray:
    out = np.sinc(t) * np.sinc(t / a)
    out[np.abs(t) >= a] = 0.0
    return out


def lanczos_warp(
    exp: Exposure, *, angle_deg: float, shift: tuple[float, float], a: int = 3
) -> Exposure:
    """``exp`` resampled with a Lanczos-``a`` kernel onto a rotated, shifted grid.

    Output pixel ``p'`` samples the input at ``c + R (p' - c) + shift`` (``c``
    the centre); the image is interpolated with normalised Lanczos weights,
    the variance with their squares (the right per-pixel variance; the
    covariance between pixels is what the noise model must find), the mask
    is the OR of the input pixels touched, and pixels whose kernel leaves
    the input are NO_DATA.  The WCS is dropped: both epochs of a pair are
    warped onto the same grid.
    """
    ny, nx = exp.shape
    th = np.deg2rad(angle_deg)
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    xs = cx + np.cos(th) * (xx - cx) - np.sin(th) * (yy - cy) + shift[0]
    ys = cy + np.sin(th) * (xx - cx) + np.cos(th) * (yy - cy) + shift[1]
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    wx = [_lanczos(xs - (x0 + i)) for i in range(-a + 1, a + 1)]
    wy = [_lanczos(ys - (y0 + j)) for j in range(-a + 1, a + 1)]
    norm = sum(wx) * sum(wy)
    img = np.zeros((ny, nx))
    var = np.zeros((ny, nx))
    mask = np.zeros((ny, nx), dtype=np.uint32)
    outside = (x0 - a + 1 < 0) | (x0 + a >= nx) | (y0 - a + 1 < 0) | (y0 + a >= ny)
    src_img, src_var, src_msk = exp.image.astype(float), exp.var.astype(float), exp.msk
    for j, wyj in zip(range(-a + 1, a + 1), wy, strict=True):
        iy = np.clip(y0 + j, 0, ny - 1)
        for i, wxi in zip(range(-a + 1, a + 1), wx, strict=True):
            ix = np.clip(x0 + i, 0, nx - 1)
            w = wxi * wyj / norm
            img += w * src_img[iy, ix]
            var += w * w * src_var[iy, ix]
            mask |= src_msk[iy, ix]
    mask[outside] |= np.uint32(Mask.NO_DATA)
    img[outside] = np.nan
    var[outside] = np.inf
    return Exposure(
        image=img.astype(np.float32),
        variance=var.astype(np.float32),
        mask=mask,
        wcs=None,
        psf=None,
        zero_point=exp.zero_point,
        info=exp.info,
        meta=exp.meta,
        source=exp.source,
    )


def warped_positions(
    x: np.ndarray,
    y: np.ndarray,
    shape: tuple[int, int],
    *,
    angle_deg: float,
    shift: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Where input pixel positions land on the grid of :func:`lanczos_warp`."""
    ny, nx = shape
    th = np.deg2rad(angle_deg)
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    dx, dy = x - cx - shift[0], y - cy - shift[1]
    return cx + np.cos(th) * dx + np.sin(th) * dy, cy - np.sin(th) * dx + np.cos(th) * dy
