"""The plane codecs of the write recipes: quantization at σ/q, and lossless floats.

A lossy plane is a standard FITS tile-compressed image (``RICE_1``,
``SUBTRACTIVE_DITHER_2``, ``ZDITHER0`` from the plane's SHA-256, as DES
seeds from a checksum) that any FITS reader decompresses; it is written by
:mod:`._quantize`.  Unlike ``fpack``, which estimates the noise tile by tile
(one row per tile), the quantum is fixed for the whole plane (Rubin's
``STDEV_MASKED`` style) from pixels that are not masked:

* image planes: ``σ/q``, with ``σ`` cfitsio's own third-order noise
  estimator (``0.6052697 · median|2x_i − x_{i−2} − x_{i+2}|`` along rows,
  the estimator fpack applies per tile), over the unmasked pixels;
* variance planes: ``median(variance)/q²``.  A variance plane is a smooth
  model, not noise, so a noise estimate of it is tiny and would waste bits;
  this quantum bounds the variance's relative error by ``1/(√12·q²)``
  (0.01 % at q = 16), below the noise growth the image quantization causes
  (``1/(12 q²)`` of the variance).

Pixels whose mask carries an *exact* bit are set to 0 in the quantized plane
(zero is kept exactly by the dither method and costs almost nothing) and
their true values are stored, in mask order, as a losslessly compressed 1-d
extension ``<PLANE>_EXACT``, which :func:`skydm.image.io.read_exposure`
puts back.  NaNs are
kept as the null value; a plane holding ±inf, whose σ is zero or whose values
overflow the quantized integers is stored losslessly instead (``lossless``:
GZIP_2 by :mod:`._gzip2`).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from skydm.archive._gzip2 import gzip2_image_hdu
from skydm.archive._quantize import quantizable, quantized_image_hdu, rice_int_hdu
from skydm.archive.recipes import PlaneCodec, WriteRecipe

_TILE_PIXELS = 1 << 18  # ~256k pixels: astropy's per-tile loop stays cheap
_NOISE_SAMPLES = 1 << 18
_NOISE3 = 0.6052697  # 1 / (sqrt(6) * 0.6745): MAD of 2x_i - x_{i-2} - x_{i+2} -> sigma
EXACT_SUFFIX = "_EXACT"
PLANE_EXTNAMES = {"image": "IMAGE", "variance": "VARIANCE"}


@dataclass(frozen=True)
class PlaneQuantization:
    """How one plane was quantized (or why it was not)."""

    codec: str  # the recipe name actually applied
    quantum: float  # step in the plane's units; 0 when lossless
    sigma: float  # the noise (image) or median variance the quantum derives from
    n_exact: int  # pixels stored exactly beside the quantized plane


def _row_sample(shape: tuple[int, ...]) -> slice:
    """Every k-th row, so that about ``_NOISE_SAMPLES`` pixels are looked at.

    The median of a quarter-million differences is known to 0.2 %, far below what
    changes a quantum's worth of anything; the whole plane would cost more
    than compressing it.
    """
    return slice(None, None, max(1, (shape[0] * shape[1]) // _NOISE_SAMPLES))


def noise_sigma(plane: np.ndarray, usable: np.ndarray | None = None) -> float:
    """cfitsio's third-order noise estimate of ``plane`` over usable pixels.

    Differences ``2x_i − x_{i−2} − x_{i+2}`` along rows cancel smooth
    background and most of a source's profile, so the median absolute value
    measures pixel-to-pixel noise; triplets touching an unusable or
    non-finite pixel are left out.  Large planes are sampled by rows.
    """
    if plane.ndim != 2 or plane.shape[1] < 5:
        return 0.0
    rows = _row_sample(plane.shape)
    x = np.asarray(plane[rows], dtype=np.float64)
    d = 2 * x[:, 2:-2] - x[:, :-4] - x[:, 4:]
    ok = np.isfinite(d)
    if usable is not None:
        u = usable[rows]
        ok &= u[:, 2:-2] & u[:, :-4] & u[:, 4:]
    values = np.abs(d[ok])
    return float(_NOISE3 * np.median(values)) if values.size else 0.0


def plane_quantum(
    plane_name: str, data: np.ndarray, usable: np.ndarray, q: int
) -> tuple[float, float]:
    """``(quantum, sigma)`` for quantizing ``data`` at level ``q`` (see the module notes)."""
    if plane_name == "variance":
        rows = _row_sample(data.shape)
        sample, ok = data[rows], usable[rows]
        good = sample[ok & np.isfinite(sample) & (sample > 0)]
        sigma = float(np.median(good)) if good.size else 0.0
        return sigma / q**2, sigma
    sigma = noise_sigma(data, usable)
    return sigma / q, sigma


def _tile_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 1:
        return (max(1, min(shape[0], _TILE_PIXELS)),)
    rows = max(1, min(shape[0], _TILE_PIXELS // max(shape[1], 1)))
    return (rows, shape[1])


def _comp_hdu(data: np.ndarray, header: fits.Header, name: str) -> fits.hdu.base._BaseHDU:
    """Lossless GZIP_2 of exact pixels (1-d) or any other plane.

    Float arrays of one or two dimensions go through :mod:`._gzip2`, whose
    bytes depend on the pixels only; astropy's coder (left for other
    shapes and types) stamps each tile with the time of writing, so the
    same plane written twice would not give the same file.
    """
    if data.ndim in (1, 2) and data.dtype.kind == "f":
        return gzip2_image_hdu(data, header, name, tile_rows=_tile_shape(data.shape)[0])
    return fits.CompImageHDU(
        data=data, header=header, name=name, compression_type="GZIP_2",
        tile_shape=_tile_shape(data.shape), quantize_level=0.0,
    )  # fmt: skip


def _lossless(data: np.ndarray, header: fits.Header, name: str) -> fits.hdu.base._BaseHDU:
    """A float plane kept bit for bit (``GZIP_2``, the fast coder of :mod:`._gzip2`)."""
    return _comp_hdu(data, header, name)


def compress_plane(
    hdu: fits.ImageHDU,
    plane_name: str,
    codec: PlaneCodec,
    *,
    mask: np.ndarray,
    exact_bits: int,
) -> tuple[list[fits.hdu.base._BaseHDU], PlaneQuantization]:
    """Compress one float plane of an Exposure file with ``codec``.

    Parameters
    ----------
    hdu : astropy.io.fits.ImageHDU
        The plane as :meth:`Exposure.to_hdulist` makes it (named).
    plane_name : {"image", "variance"}
        Which plane, for the choice of quantum.
    codec : PlaneCodec
        ``lossless`` or ``lossy<q>``.
    mask : numpy.ndarray
        The mask plane in the file's bit assignment.
    exact_bits : int
        Pixels with any of these bits are stored exactly.

    Returns
    -------
    (list of CompImageHDU, PlaneQuantization)
        The compressed plane (and its ``_EXACT`` extension when it has exact
        pixels), and what was done.
    """
    name = str(hdu.name)
    data = np.asarray(hdu.data)
    header = hdu.header.copy()
    if not codec.lossy or np.isinf(data).any():
        header["SDMCODEC"] = ("lossless", "skydm write recipe of this plane")
        return [_lossless(data, header, name)], PlaneQuantization("lossless", 0.0, math.nan, 0)
    exact = (mask & np.uint32(exact_bits)) != 0 if exact_bits else np.zeros(data.shape, bool)
    assert codec.q is not None
    quantum, sigma = plane_quantum(plane_name, data, ~exact, codec.q)
    if not quantum > 0 or not math.isfinite(quantum):
        header["SDMCODEC"] = ("lossless", "skydm write recipe (no noise to quantize at)")
        return [_lossless(data, header, name)], PlaneQuantization("lossless", 0.0, sigma, 0)
    header["SDMCODEC"] = (codec.name, "skydm write recipe of this plane")
    header["SDMQUANT"] = (quantum, "quantization step")
    header["SDMSIGMA"] = (sigma, "sigma (or median variance) behind SDMQUANT")
    n_exact = int(exact.sum())
    hdus: list[fits.hdu.base._BaseHDU] = []
    if n_exact:
        header["SDMEXACT"] = (n_exact, f"pixels stored exactly in {name}{EXACT_SUFFIX}")
        values = data[exact].astype(data.dtype, copy=False)
        data = data.copy()
        data[exact] = 0  # kept exactly by SUBTRACTIVE_DITHER_2 and nearly free to code
        ext = fits.Header()
        ext["EXACTBIT"] = (int(exact_bits), "mask bits whose pixels are listed, in C order")
        hdus.append(_comp_hdu(values, ext, name + EXACT_SUFFIX))
    if data.ndim != 2 or not quantizable(data, quantum):
        header["SDMCODEC"] = ("lossless", "skydm write recipe (values beyond quantization)")
        return [_lossless(data, header, name)], PlaneQuantization("lossless", 0.0, sigma, 0)
    rows = _tile_shape(data.shape)[0]
    comp = quantized_image_hdu(data, header, name, quantum=quantum, tile_rows=rows)
    return [comp, *hdus], PlaneQuantization(codec.name, quantum, sigma, n_exact)


def encode_exposure_hdulist(
    hdul: fits.HDUList, recipe: WriteRecipe
) -> tuple[fits.HDUList, dict[str, PlaneQuantization]]:
    """The Exposure file ``hdul`` with its planes compressed by ``recipe``.

    The mask plane is Rice-compressed losslessly; other HDUs (primary, PSF)
    are kept as they are.
    """
    mask_hdu = hdul["MASK"]
    mask = np.asarray(mask_hdu.data).astype(np.uint32, copy=False)
    out: list[fits.hdu.base._BaseHDU] = []
    report: dict[str, PlaneQuantization] = {}
    codecs = {"image": recipe.image, "variance": recipe.variance}
    for hdu in hdul:
        plane = next((p for p, n in PLANE_EXTNAMES.items() if hdu.name == n), None)
        if plane is not None:
            hdus, report[plane] = compress_plane(
                hdu, plane, codecs[plane], mask=mask, exact_bits=recipe.exact_mask_bits
            )
            out.extend(hdus)
        elif hdu is mask_hdu:
            header = hdu.header.copy()
            header["SDMCODEC"] = ("lossless", "skydm write recipe of this plane")
            # int32 (mask bits stay below 2^31) so Rice codes it with no BZERO offset.
            rows = _tile_shape(mask.shape)[0]
            # One big-endian copy (rice_int_hdu keeps it): no native int32 copy first.
            out.append(rice_int_hdu(mask.astype(">i4"), header, "MASK", tile_rows=rows))
        else:
            out.append(hdu)
    return fits.HDUList(out), report


def hdulist_bytes(hdul: fits.HDUList) -> bytes:
    """``hdul`` written to memory (for measuring and for writers that want bytes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdul.writeto(buf, output_verify="silentfix")
    return buf.getvalue()
