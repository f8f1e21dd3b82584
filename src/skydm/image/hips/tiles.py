"""Pixels of HiPS tiles: resampling images onto a tile, halving tiles, writing them.

:func:`sample_tile` resamples images onto a tile's pixel centres with bilinear
interpolation, the same interpolation as ``reproject.reproject_interp`` with
``order="bilinear"`` (positions in the outer half of an edge pixel take that
pixel's value, positions off the image none), so that a tree equals
reproject's HiPS of the same image.  Where several images cover a pixel the
tile holds their mean.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skydm.errors import require_extra
from skydm.image.hips.geometry import child_slot, tile_lonlat
from skydm.repo.atomic import atomic_write_bytes


class SourceImage:
    """One image resampled into tiles; its pixels read only when first needed.

    Parameters
    ----------
    id : str
        Its public ID.
    image : numpy.ndarray, optional
        Pixels (rows, columns); NaN where there is no data.
    wcs : astropy.wcs.WCS
        Its celestial WCS.
    shape : tuple of int, optional
        (rows, columns), with ``loader`` instead of ``image``.
    loader : callable, optional
        Returns the pixels when they are first needed, so that an incremental
        build reads only the images of the tiles it redoes.
    """

    def __init__(
        self,
        id: str,
        image: np.ndarray | None,
        wcs: WCS,
        *,
        shape: tuple[int, int] | None = None,
        loader: Callable[[], np.ndarray] | None = None,
    ) -> None:
        if image is None and (loader is None or shape is None):
            raise ValueError("SourceImage needs the image, or its shape and a loader")
        self.id = id
        self.wcs = wcs
        self._image = image
        self._loader = loader
        self.shape: tuple[int, int] = image.shape if image is not None else shape  # type: ignore[assignment]

    @property
    def loaded(self) -> bool:
        """Whether the pixels have been read."""
        return self._image is not None

    @property
    def image(self) -> np.ndarray:
        """The pixels (read on first use)."""
        if self._image is None:
            assert self._loader is not None
            self._image = np.asarray(self._loader(), dtype=np.float32)
        return self._image


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    ny, nx = image.shape
    inside = (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    # Outer half of an edge pixel: that pixel's value, as reproject does.
    xc = np.clip(np.where(inside, x, 0.0), 0, nx - 1)
    yc = np.clip(np.where(inside, y, 0.0), 0, ny - 1)
    data = image if image.dtype == np.float32 else image.astype(np.float32)
    values = map_coordinates(data, np.array([yc, xc]), order=1, mode="nearest")
    values = values.astype(np.float64)
    values[~inside] = np.nan
    return values


def sample_tile(
    order: int, index: int, width: int, sources: list[SourceImage]
) -> np.ndarray | None:
    """The (width, width) float32 tile from ``sources``, or None where none has data."""
    ra, dec = tile_lonlat(order, index, width)
    total = np.zeros(ra.size)
    count = np.zeros(ra.size)
    for source in sources:
        with np.errstate(invalid="ignore"):
            x, y = source.wcs.celestial.all_world2pix(ra.ravel(), dec.ravel(), 0)
        x = np.where(np.isfinite(x), x, -1e9)
        y = np.where(np.isfinite(y), y, -1e9)
        near = (x >= -0.5) & (x <= source.image.shape[1] - 0.5)
        near &= (y >= -0.5) & (y <= source.image.shape[0] - 0.5)
        if not near.any():
            continue
        values = np.full(ra.size, np.nan)
        values[near] = _bilinear(source.image, x[near], y[near])
        good = np.isfinite(values)
        total[good] += values[good]
        count[good] += 1
    if not count.any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        tile = np.where(count > 0, total / count, np.nan)
    return tile.reshape(width, width).astype(np.float32)


def halve(tile: np.ndarray) -> np.ndarray:
    """Mean of each 2 x 2 block, ignoring NaN (NaN where all four are)."""
    h, w = tile.shape
    blocks = tile.reshape(h // 2, 2, w // 2, 2)
    good = np.isfinite(blocks)
    total = np.where(good, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64)
    count = good.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def parent_from_children(children: dict[int, np.ndarray], width: int) -> np.ndarray | None:
    """A tile made of its (present) children, each halved into its quarter."""
    if not children:
        return None
    out = np.full((width, width), np.nan, dtype=np.float32)
    for child, data in children.items():
        out[child_slot(child, width)] = halve(data)
    return out if np.isfinite(out).any() else None


def tile_path(root: Path, order: int, index: int, ext: str) -> Path:
    """``root/NorderK/DirD/NpixN.ext`` (D = 10000 * (N // 10000)), as HiPS 1.0 names tiles."""
    return root / f"Norder{order}" / f"Dir{(index // 10000) * 10000}" / f"Npix{index}.{ext}"


def write_fits_tile(path: Path, tile: np.ndarray, order: int, index: int) -> None:
    """A float32 FITS tile, written atomically."""
    header = fits.Header()
    header["ORDER"] = (order, "HEALPix order of this tile")
    header["NPIX"] = (index, "HEALPix index (nested) of this tile")
    buf = io.BytesIO()
    fits.PrimaryHDU(np.ascontiguousarray(tile, dtype=np.float32), header).writeto(buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def read_fits_tile(path: Path) -> np.ndarray:
    """The pixels of a FITS tile written by :func:`write_fits_tile`."""
    with fits.open(path, memmap=False) as hdul:
        return np.asarray(hdul[0].data, dtype=np.float32)


def write_picture(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, kind: str) -> None:
    """A PNG (with transparency where ``alpha`` is 0) or JPEG tile; ``rgb`` in FITS row order."""
    image_mod = require_extra("PIL.Image", "color")
    top_first = np.ascontiguousarray(rgb[::-1])  # pictures store the top row first
    if kind == "png" and alpha is not None:
        rgba = np.dstack([top_first, alpha[::-1].astype(np.uint8)])
        picture = image_mod.fromarray(rgba, mode="RGBA")
    else:
        picture = image_mod.fromarray(top_first, mode="RGB")
    buf = io.BytesIO()
    if kind == "png":
        picture.save(buf, format="PNG", compress_level=1)  # speed over bytes
    else:
        picture.save(buf, format="JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
