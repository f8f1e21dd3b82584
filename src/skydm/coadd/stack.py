"""A stack of warps on one sky cell, read in row chunks.

Warps are given as :class:`~skydm.image.Exposure` objects or as skydm
Exposure files; files are memory-mapped so that a stack of twenty
4096x4096 warps (1.3 GB per plane) is read one band of rows at a time and
memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skydm.errors import BadFileError, BadValueError, UserError
from skydm.image import Exposure, Mask, VisitInfo, read_exposure
from skydm.image.exposure import wcs_from_header
from skydm.image.fitsfile import open_fits
from skydm.image.mask import mask_from_header, mask_to_header
from skydm.image.psf import Psf, psf_from_hdu

#: Warp mask bits whose pixels never enter a coadd.
REJECT = Mask.BAD | Mask.SAT | Mask.CR | Mask.NO_DATA | Mask.SUSPECT | Mask.CLIPPED


@dataclass
class _Member:
    name: str
    exposure: Exposure | None
    hdul: fits.HDUList | None
    remap_mask: bool
    psf: Psf | None
    zero_point: float
    info: VisitInfo
    #: The memory-mapped image, variance and mask and the mask's REJECT
    #: constant in its words' byte order, when the planes can be read
    #: straight (see :meth:`WarpStack._read_into`); looked up once, as
    #: astropy's HDU lookups by name cost more than reading a band.
    direct: tuple[np.ndarray, np.ndarray, np.ndarray, np.uint32] | None = None
    #: The warp's resampling kernel (its ``WARPMETH`` card; "" when unknown):
    #: the coadd PSF includes it (see :func:`skydm.coadd.combine.coadd_psf`).
    resampling: str = ""
    #: The sub-pixel phase of a bilinear warp that is a translation (its
    #: ``WARPDX``/``WARPDY`` cards, see :func:`skydm.coadd.warp.warp_phase`);
    #: None when not recorded (other kernels, older warps).
    phase: tuple[float, float] | None = None


def _grid_offset(a: WCS, b: WCS, shape: tuple[int, int]) -> float:
    """How far apart (pixels) two WCSs put the corners and centre of ``shape``."""
    ny, nx = shape
    xs = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2])
    ys = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2])
    ra, dec = a.pixel_to_world_values(xs, ys)
    x2, y2 = b.world_to_pixel_values(ra, dec)
    offset = np.hypot(np.asarray(x2) - xs, np.asarray(y2) - ys)
    return float(np.max(offset)) if np.all(np.isfinite(offset)) else math.inf


def _same_grid(a: WCS, b: WCS, shape: tuple[int, int]) -> bool:
    """Whether two WCSs put the corners and centre of ``shape`` at the same sky positions."""
    return _grid_offset(a, b, shape) < 0.01


def _grid_mismatch(first: str, shape: tuple[int, int], m_shape: tuple[int, int], off: float) -> str:
    """Why a warp is not on the first warp's grid, in the user's terms."""
    if m_shape != shape:
        why = f"it is {m_shape[1]}x{m_shape[0]} pixels, {first} is {shape[1]}x{shape[0]}"
    elif math.isfinite(off):
        why = f"same size, but its WCS puts the same pixels up to {off:.2f} pixels apart on the sky"
    else:
        why = "same size, but its WCS maps the grid's pixels off the sky of the first"
    return (
        f"is not on the same pixel grid as {first} ({why}); warp every visit onto one sky "
        "cell's grid (skydm coadd --repo does)"
    )


class WarpStack:
    """Warps of one sky cell, all on the same pixel grid.

    Parameters
    ----------
    warps : sequence of Exposure or path
        At least one warp; files must be skydm Exposure files (or any FITS
        image with a WCS, read whole into memory).
    weights : sequence of float, optional
        One weight per warp; by default the inverse median variance.

    Raises
    ------
    UserError
        When there is no warp, or the warps are not on one pixel grid, or
        their zero points differ.
    """

    def __init__(
        self,
        warps: Sequence[Exposure | str | Path],
        *,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        if len(warps) == 0:
            raise UserError("a coadd needs at least one warp; none was given")
        self.members: list[_Member] = []
        shape: tuple[int, int] | None = None
        wcs: WCS | None = None
        for item in warps:
            member, m_shape, m_wcs = self._open(item)
            if m_wcs is None:
                raise BadFileError(member.name, "has no WCS; warps must be on a sky cell's grid")
            if shape is None:
                shape, wcs = m_shape, m_wcs
            elif m_shape != shape or not _same_grid(wcs, m_wcs, shape):  # type: ignore[arg-type]
                off = _grid_offset(wcs, m_wcs, shape) if m_shape == shape else math.inf  # type: ignore[arg-type]
                first = self.members[0].name
                raise BadFileError(member.name, _grid_mismatch(first, shape, m_shape, off))
            self.members.append(member)
        assert shape is not None and wcs is not None
        self.shape: tuple[int, int] = shape
        self.wcs: WCS = wcs
        zps = [m.zero_point for m in self.members if math.isfinite(m.zero_point)]
        if zps and (max(zps) - min(zps) > 1e-4 or len(zps) != len(self.members)):
            raise UserError(
                f"the warps have different zero points ({min(zps):.4f} to {max(zps):.4f}, "
                f"{len(self.members) - len(zps)} uncalibrated); warp them with a common "
                "zero_point so that their fluxes can be averaged"
            )
        self.zero_point = zps[0] if zps else math.nan
        self._weights: np.ndarray | None = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.members),) or not np.all(np.isfinite(w) & (w > 0)):
                raise BadValueError(
                    "weights", weights, f"{len(self.members)} positive finite numbers, one per warp"
                )
            self._weights = w

    @staticmethod
    def _open(item: Exposure | str | Path) -> tuple[_Member, tuple[int, int], WCS | None]:
        if isinstance(item, Exposure):
            name = item.source or f"warp of visit {item.info.visit}"
            psf = _as_stored(item.psf)
            member = _Member(name, item, None, False, psf, item.zero_point, item.info)
            member.resampling = _resampling(item.meta.get("WARPMETH", ""))
            member.phase = _phase(item.meta)
            return member, item.shape, item.wcs
        path = Path(item)
        hdul = open_fits(path, memmap=True, do_not_scale_image_data=True)
        if not hdul[0].header.get("SKYDMEXP"):
            hdul.close()
            exp = read_exposure(path)
            member = _Member(str(path), exp, None, False, exp.psf, exp.zero_point, exp.info)
            member.resampling = _resampling(exp.meta.get("WARPMETH", ""))
            member.phase = _phase(exp.meta)
            return member, exp.shape, exp.wcs
        try:
            img_hdu, mask_hdu = hdul["IMAGE"], hdul["MASK"]
            _ = hdul["VARIANCE"]
        except KeyError as exc:
            raise BadFileError(path, f"is a skydm Exposure missing an extension: {exc}") from exc
        # Map the planes now (no pixels are read): astropy's lazy ``data``
        # must not be first touched by two band-reading threads at once.
        for plane in ("IMAGE", "VARIANCE", "MASK"):
            _ = hdul[plane].data
        shape = (int(img_hdu.header["NAXIS2"]), int(img_hdu.header["NAXIS1"]))
        ours = fits.Header()
        mask_to_header(ours)
        remap = any(mask_hdu.header.get(k) != v for k, v in ours.items())
        psf = psf_from_hdu(hdul["PSF"]) if "PSF" in hdul else None
        h0 = hdul[0].header
        member = _Member(
            str(path),
            None,
            hdul,
            remap,
            psf,
            float(h0.get("ZP", math.nan)),
            VisitInfo.from_header(h0),
            None if remap else _direct(hdul),
            _resampling(h0.get("WARPMETH", "")),
            _phase(h0),
        )
        return member, shape, wcs_from_header(img_hdu.header)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def names(self) -> list[str]:
        """Names (file paths or sources) of the warps."""
        return [m.name for m in self.members]

    def read(self, k: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``y0:y1`` of warp ``k`` as (image float32, variance float32, mask uint32)."""
        m = self.members[k]
        if m.exposure is not None:
            e = m.exposure
            return (
                np.asarray(e.image[y0:y1], dtype=np.float32),
                np.asarray(e.var[y0:y1], dtype=np.float32),
                np.asarray(e.msk[y0:y1], dtype=np.uint32),
            )
        assert m.hdul is not None
        img = _unscaled(m.hdul["IMAGE"], y0, y1)
        var = _unscaled(m.hdul["VARIANCE"], y0, y1)
        mask_hdu = m.hdul["MASK"]
        raw_mask = np.asarray(mask_hdu.data[y0:y1])
        # Memory maps are read unscaled: FITS stores uint32 as int32 with
        # BZERO = 2**31, which flipping the top bit undoes exactly.
        bzero = mask_hdu.header.get("BZERO", 0)
        if raw_mask.dtype.kind == "i" and raw_mask.itemsize == 4 and bzero == 2**31:
            raw_mask = raw_mask.astype(np.int32).view(np.uint32) ^ np.uint32(0x80000000)
        elif bzero or mask_hdu.header.get("BSCALE", 1) != 1:
            raw_mask = raw_mask * mask_hdu.header.get("BSCALE", 1) + bzero
        if m.remap_mask:
            mask = mask_from_header(m.hdul["MASK"].header, raw_mask)
        else:
            mask = raw_mask.astype(np.uint32)
        return img, var, mask

    def rows(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``y0:y1`` of every warp: image and variance with bad pixels zeroed, and a
        boolean array that is True where a pixel may enter the coadd.

        Shapes are ``(n_warps, y1 - y0, columns)``.
        """
        n, w = len(self), self.shape[1]
        img = np.empty((n, y1 - y0, w), dtype=np.float32)
        var = np.empty((n, y1 - y0, w), dtype=np.float32)
        good = np.empty((n, y1 - y0, w), dtype=bool)
        for k in range(n):
            if not self._read_into(k, y0, y1, img[k], var[k], good[k]):
                i, v, m = self.read(k, y0, y1)
                img[k], var[k] = i, v
                np.equal(m & np.uint32(REJECT), 0, out=good[k])
            # ``v > 0`` is False for NaN; ``v < inf`` drops infinite variance.
            g = good[k]
            g &= np.isfinite(img[k])
            g &= var[k] > 0
            g &= var[k] < np.inf
            bad = ~g
            np.copyto(img[k], 0, where=bad)
            np.copyto(var[k], 0, where=bad)
        return img, var, good

    def _read_into(
        self, k: int, y0: int, y1: int, img: np.ndarray, var: np.ndarray, good: np.ndarray
    ) -> bool:
        """Rows of a memory-mapped skydm file straight into ``img``, ``var`` and ``good``
        (True where no REJECT bit is set); False when the file needs :meth:`read`.

        The planes are byte-swapped by ``copyto`` in one pass (about 15 times
        faster than ``astype`` from big-endian), and the mask's REJECT bits
        are tested on the stored words, without converting them.
        """
        direct = self.members[k].direct
        if direct is None:
            return False
        image, variance, words, reject = direct
        np.copyto(img, image[y0:y1], casting="unsafe")
        np.copyto(var, variance[y0:y1], casting="unsafe")
        np.equal(words[y0:y1] & reject, 0, out=good)
        return True

    def check_variance(self, max_fraction: float, *, rows_per_chunk: int = 256) -> None:
        """Refuse a warp whose variance is not positive on too many of its usable pixels.

        Such pixels are dropped from the coadd (``v > 0`` fails), so a warp
        with a broken variance plane would otherwise be silently removed
        from much of the cell.  Every pixel is checked (not a sample), band
        by band, so memory stays bounded.

        Parameters
        ----------
        max_fraction : float
            Largest allowed fraction of a warp's usable pixels (no REJECT
            mask bit, finite image) whose variance is zero, negative or NaN.
        rows_per_chunk : int
            Rows read at once.

        Raises
        ------
        BadFileError
            Naming the first warp over the limit, its fraction and what to do.
        """
        w = self.shape[1]
        img = np.empty((rows_per_chunk, w), dtype=np.float32)
        var = np.empty((rows_per_chunk, w), dtype=np.float32)
        good = np.empty((rows_per_chunk, w), dtype=bool)
        for k, member in enumerate(self.members):
            usable = nonpositive = 0
            for y0, y1 in self.chunks(rows_per_chunk):
                i, v, g = img[: y1 - y0], var[: y1 - y0], good[: y1 - y0]
                if not self._read_into(k, y0, y1, i, v, g):
                    i, v, m = self.read(k, y0, y1)
                    g = (m & np.uint32(REJECT)) == 0
                g &= np.isfinite(i)
                usable += int(np.count_nonzero(g))
                # ``not v > 0`` is True for zero, negative and NaN variance.
                nonpositive += int(np.count_nonzero(g & ~(v > 0)))
            if usable and nonpositive > max_fraction * usable:
                raise BadFileError(
                    member.name,
                    f"has zero, negative or NaN variance on {nonpositive / usable:.1%} of its "
                    f"{usable} usable pixels (at most {max_fraction:.1%} are allowed, "
                    "max_bad_variance); fix the warp's variance plane, or flag those pixels "
                    "BAD or NO_DATA in its mask, before coadding it",
                )

    def chunks(self, rows_per_chunk: int) -> Iterator[tuple[int, int]]:
        """(y0, y1) of consecutive row bands covering the grid."""
        ny = self.shape[0]
        for y0 in range(0, ny, rows_per_chunk):
            yield y0, min(y0 + rows_per_chunk, ny)

    def default_chunk_rows(self, budget_pixels: int = 12_000_000) -> int:
        """Rows per chunk so that one plane of the whole stack holds ``budget_pixels``."""
        return max(16, budget_pixels // max(len(self) * self.shape[1], 1))

    @property
    def weights(self) -> np.ndarray:
        """One weight per warp: the inverse of its median usable variance.

        A scalar per warp (not per pixel) keeps star fluxes unbiased: per-pixel
        inverse variance would down-weight each epoch where a star is bright.
        """
        if self._weights is None:
            ny = self.shape[0]
            step = max(1, ny // 64)
            out = np.zeros(len(self))
            for k in range(len(self)):
                samples = []
                for y in range(0, ny, step):
                    _, v, m = self.read(k, y, y + 1)
                    ok = ((m & np.uint32(REJECT)) == 0) & np.isfinite(v) & (v > 0)
                    samples.append(v[ok])
                vals = np.concatenate(samples)
                if vals.size == 0:
                    raise UserError(
                        f"{self.members[k].name} has no usable pixel on this grid; "
                        "leave it out of the coadd"
                    )
                out[k] = 1.0 / float(np.median(vals))
            self._weights = out
        return self._weights

    def close(self) -> None:
        """Close any memory-mapped files."""
        for m in self.members:
            m.direct = None
            if m.hdul is not None:
                m.hdul.close()

    def __enter__(self) -> WarpStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resampling(card: object) -> str:
    """The resampling kernel named by a ``WARPMETH`` card (a value or a (value, comment) pair)."""
    value = card[0] if isinstance(card, tuple) else card
    return str(value).strip().lower()


def _phase(header: fits.Header) -> tuple[float, float] | None:
    """A warp's ``(WARPDX, WARPDY)`` phase, or None when absent or not in ``[0, 1]``."""
    values = []
    for key in ("WARPDX", "WARPDY"):
        card = header.get(key)
        value = card[0] if isinstance(card, tuple) else card
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not 0.0 <= float(value) <= 1.0:
            return None
        values.append(float(value))
    return values[0], values[1]


def _as_stored(psf: Psf | None) -> Psf | None:
    """``psf`` exactly as a warp file gives it back: a pixel PSF's image
    rounded to float32 and its parameters through their header cards.

    CompareWarp's decisions are thresholds on PSF-matched differences; a
    float64 PSF in memory and its float32 copy on disk (relative change
    about 4e-8) flipped a few of them and moved hundreds of coadd pixels by
    2-4 sigma, so the coadd from files differed from the one from memory.
    """
    if psf is None:
        return None
    hdu = psf.to_hdu()
    header = fits.Header.fromstring(hdu.header.tostring())
    return psf_from_hdu(fits.ImageHDU(np.asarray(hdu.data), header=header))


def _direct(
    hdul: fits.HDUList,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.uint32] | None:
    """The planes of a skydm file that :meth:`WarpStack._read_into` can read
    straight: unscaled float image and variance, and a 32-bit mask unscaled
    or offset by ``BZERO = 2**31`` (which only flips the top bit, not one of
    REJECT's); None otherwise.  The mask is viewed as native words and
    REJECT put in their byte order instead of converting them."""
    planes = [hdul[name] for name in ("IMAGE", "VARIANCE")]
    mask_hdu = hdul["MASK"]
    raw = mask_hdu.data
    if (
        any(h.header.get("BSCALE", 1) != 1 or h.header.get("BZERO", 0) != 0 for h in planes)
        or any(h.data.dtype.kind != "f" for h in planes)
        or raw.dtype.kind not in "iu"
        or raw.dtype.itemsize != 4
        or mask_hdu.header.get("BSCALE", 1) != 1
        or mask_hdu.header.get("BZERO", 0) not in (0, 2**31)
    ):
        return None
    reject = np.uint32(REJECT)
    if not raw.dtype.isnative:
        reject = reject.byteswap()
    return planes[0].data, planes[1].data, raw.view(np.uint32), reject


def _unscaled(hdu: fits.ImageHDU, y0: int, y1: int) -> np.ndarray:
    """Rows of a float plane opened without scaling, with BSCALE/BZERO applied."""
    data = np.asarray(hdu.data[y0:y1], dtype=np.float32)
    bscale, bzero = hdu.header.get("BSCALE", 1.0), hdu.header.get("BZERO", 0.0)
    if bscale != 1 or bzero != 0:
        data = data * np.float32(bscale) + np.float32(bzero)
    return data


def check_rows(rows: int) -> int:
    """Validate a rows-per-chunk parameter."""
    if rows < 8:
        raise BadValueError("chunk_rows", rows, "at least 8 rows per chunk")
    return rows
