"""Colour images for outreach: an asinh (Lupton) stretch of three bands, with AVM metadata.

:func:`color_from_planes` maps three aligned images (red, green, blue) to
8-bit RGB with astropy's :func:`~astropy.visualization.make_lupton_rgb`,
its parameters fixed once for the whole area (:func:`lupton_params`) so that
an image made band of rows by band of rows equals the one made at once.
:func:`write_color` writes PNG, JPEG or TIFF with the WCS embedded as AVM
(Astronomy Visualization Metadata, via pyavm) so that planetarium and
outreach software (and pyavm itself) can place it on the sky.
"""

from __future__ import annotations

import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.wcs import WCS

from skydm.errors import BadValueError, require_extra

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
#: Rows converted at once: bounds the memory of very large mosaics.
ROW_BAND = 1024


@dataclass(frozen=True)
class LuptonParams:
    """The stretch: per-band black levels, the linear range and the asinh softening.

    Attributes
    ----------
    minimum : tuple of float
        Value of each band (r, g, b) shown as black (its sky level).
    stretch : float
        Linear range of the stretch (in the images' units).
    q : float
        Asinh softening parameter (Lupton et al. 2004): larger shows more of
        the faint end at the expense of contrast in bright regions.
    """

    minimum: tuple[float, float, float]
    stretch: float
    q: float = 8.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.stretch) and self.stretch > 0):
            raise BadValueError("--stretch", self.stretch, "a positive number")
        if not (math.isfinite(self.q) and self.q > 0):
            raise BadValueError("--q", self.q, "a positive number (8 is a good start)")


def lupton_params(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    q: float = 8.0,
    stretch: float | None = None,
    sample: int = 1_000_000,
) -> LuptonParams:
    """Good defaults from the data: black at each band's sky, linear range 10 sky sigmas.

    The sky level and noise are robust statistics (median, MAD) of at most
    ``sample`` pixels on a regular grid, so that very large areas cost no more.
    """
    minimum = []
    sigmas = []
    for plane in planes:
        step = max(1, int(math.sqrt(plane.size / sample)))
        values = np.asarray(plane[::step, ::step], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise BadValueError("image", "no finite pixel", "images with data")
        sky = float(np.median(values))
        minimum.append(sky)
        sigmas.append(1.4826 * float(np.median(np.abs(values - sky))))
    if stretch is None:
        stretch = 10.0 * max(float(np.mean(sigmas)), 1e-12)
    return LuptonParams((minimum[0], minimum[1], minimum[2]), float(stretch), q)


def color_from_planes(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray], params: LuptonParams
) -> np.ndarray:
    """8-bit RGB (rows, columns, 3), FITS row order, band of rows by band of rows."""
    from astropy.visualization import make_lupton_rgb

    shape = planes[0].shape
    for plane in planes[1:]:
        if plane.shape != shape:
            raise BadValueError("bands", plane.shape, f"three images of one shape {shape}")
    out = np.empty((*shape, 3), dtype=np.uint8)
    for y0 in range(0, shape[0], ROW_BAND):
        rows = slice(y0, min(y0 + ROW_BAND, shape[0]))
        r, g, b = (np.nan_to_num(np.asarray(p[rows], dtype=np.float64)) for p in planes)
        with np.errstate(invalid="ignore", divide="ignore"):  # black pixels: 0/0, shown black
            out[rows] = make_lupton_rgb(
                r, g, b, minimum=list(params.minimum), stretch=params.stretch, Q=params.q
            )
    return out


def _avm(pyavm: Any, wcs: WCS, shape: tuple[int, ...]) -> Any:
    """AVM of ``wcs`` with its scale in the sign convention AVM readers assume.

    pyavm may describe a rotated WCS as scale (+s, -s) and rotation rho, but
    AVM 1.2 readers (pyavm's ``to_wcs`` included) force the scale's signs to
    (-, +); (-s, +s) and rho + 180 degrees is the same WCS in that form.
    """
    avm = pyavm.AVM.from_wcs(wcs, shape=shape)
    scale = avm.Spatial.Scale
    if scale is not None and scale[0] > 0 and scale[1] < 0:
        avm.Spatial.Scale = [-scale[0], -scale[1]]
        avm.Spatial.Rotation = ((avm.Spatial.Rotation or 0.0) + 180.0) % 360.0
    return avm


def write_color(path: str | Path, rgb: np.ndarray, wcs: WCS | None, *, quality: int = 92) -> Path:
    """Write ``rgb`` (FITS row order) as PNG/JPEG/TIFF, north up, with AVM from ``wcs``.

    The file is written atomically.  AVM is embedded as an XMP packet (PNG
    ``iTXt``, JPEG ``APP1``, TIFF tag 700).

    Raises
    ------
    BadValueError
        When the suffix is not .png, .jpg/.jpeg or .tif/.tiff.
    """
    from skydm.repo.atomic import atomic_write_bytes

    image_mod = require_extra("PIL.Image", "color")
    pyavm = require_extra("pyavm", "color")
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BadValueError("--out", str(path), "a file name ending .png, .jpg, .jpeg, .tif, .tiff")
    # Image files store the top row first; FITS row 0 is the bottom (AVM counts from there).
    picture = image_mod.fromarray(np.ascontiguousarray(rgb[::-1]), mode="RGB")
    avm = _avm(pyavm, wcs, rgb.shape[:2]) if wcs is not None else None
    xmp = avm.to_xmp() if avm is not None else None
    buf = io.BytesIO()
    if kind == "TIFF":
        extra = {"tiffinfo": {700: xmp.encode() if isinstance(xmp, str) else xmp}} if xmp else {}
        picture.save(buf, format="TIFF", compression="tiff_deflate", **extra)
        data = buf.getvalue()
    else:
        options = {"quality": quality} if kind == "JPEG" else {"optimize": False}
        picture.save(buf, format=kind, **options)
        data = buf.getvalue()
        if avm is not None:
            with tempfile.TemporaryDirectory(prefix="skydm-color-") as tmp:
                plain = Path(tmp) / f"plain{path.suffix}"
                tagged = Path(tmp) / f"avm{path.suffix}"
                plain.write_bytes(data)
                avm.embed(str(plain), str(tagged))
                data = tagged.read_bytes()
    return atomic_write_bytes(path, data)
