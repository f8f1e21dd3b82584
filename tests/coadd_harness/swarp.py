"""Running SWarp (Bertin 2002) on the same warps, to compare coadd methods.

SWarp is given the warps as they are (already on the cell's grid) with
``RESAMPLE N``, so that it only combines, exactly as skydm's assembly
does; its weight maps are each warp's scalar weight where the warp is
usable and 0 elsewhere (the weights skydm uses), background subtraction
and flux scaling are off.  The output grid is set to the cell's (centre,
size, pixel scale) and checked against it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from skydm.coadd.stack import WarpStack, _same_grid
from skydm.errors import BadValueError, SkydmError, UserError
from skydm.image import Exposure, Mask
from skydm.image.exposure import wcs_from_header

COMBINE_TYPES = ("CLIPPED", "MEDIAN", "AVERAGE", "WEIGHTED")


def swarp_executable() -> str | None:
    """Path of the SWarp program (Debian installs it as ``SWarp``), or ``None``."""
    return shutil.which("SWarp") or shutil.which("swarp")


def write_swarp_inputs(stack: WarpStack, directory: Path) -> list[Path]:
    """Write each warp as a plain FITS image with a ``.weight.fits`` map beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    header = stack.wcs.to_header()
    paths = []
    ny = stack.shape[0]
    rows = stack.default_chunk_rows() * len(stack)
    for k in range(len(stack)):
        img_path = directory / f"warp{k:03d}.fits"
        w_path = directory / f"warp{k:03d}.weight.fits"
        image = np.zeros(stack.shape, dtype=np.float32)
        weight = np.zeros(stack.shape, dtype=np.float32)
        for y0 in range(0, ny, rows):
            y1 = min(y0 + rows, ny)
            img, var, good = stack.rows(y0, y1)
            _ = var
            image[y0:y1] = img[k]
            weight[y0:y1] = np.where(good[k], np.float32(stack.weights[k]), np.float32(0))
        h = header.copy()
        # SWarp's clipping noise adds |x| / GAIN to 1 / weight, and takes a
        # missing GAIN as 0, i.e. infinite noise and no clipping at all
        # (astromatic/swarp#29): give it the warp's effective gain.
        h["GAIN"] = _effective_gain(stack, k)
        fits.writeto(img_path, image, h, overwrite=True)
        fits.writeto(w_path, weight, header, overwrite=True)
        paths.append(img_path)
    return paths


def _effective_gain(stack: WarpStack, k: int) -> float:
    """Electrons per warp unit: the visit's gain over the flux scale of the warp."""
    m = stack.members[k]
    gain = m.info.gain
    scale = 1.0
    if m.exposure is not None:
        scale = float(m.exposure.meta.get("FLXSCALE", 1.0))
    elif m.hdul is not None:
        scale = float(m.hdul[0].header.get("FLXSCALE", 1.0))
    if not (gain > 0) or not (scale > 0):
        return 1e12  # unknown: no Poisson term
    return float(gain / scale)


def run_swarp(
    warps: Sequence[Exposure | str | Path] | WarpStack,
    *,
    combine: str = "CLIPPED",
    nthreads: int = 1,
    workdir: str | Path | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
) -> tuple[Exposure, float]:
    """Coadd warps with SWarp.

    Parameters
    ----------
    warps : sequence of Exposure or path, or WarpStack
        Warps on one grid.
    combine : str
        SWarp's ``COMBINE_TYPE`` (default ``CLIPPED``, with its default
        ``CLIP_SIGMA`` 4 and ``CLIP_AMPFRAC`` 0.3).
    nthreads : int
        SWarp's ``NTHREADS`` (0 = all cores).
    workdir : path, optional
        Where to write SWarp's inputs and outputs (default: a temporary directory).
    weights : sequence of float, optional
        Per-warp weights (default: each warp's inverse median variance).

    Returns
    -------
    coadd : Exposure
        SWarp's coadd, variance ``1 / weight`` (inf where the weight is 0,
        with NO_DATA there).
    seconds : float
        Wall time of the SWarp process alone (writing its inputs excluded).

    Raises
    ------
    SkydmError
        When SWarp is not installed or fails.
    """
    if combine not in COMBINE_TYPES:
        raise BadValueError("combine", combine, f"one of {', '.join(COMBINE_TYPES)}")
    exe = swarp_executable()
    if exe is None:
        raise SkydmError("SWarp is not installed; install the Debian package `swarp`")
    stack = warps if isinstance(warps, WarpStack) else WarpStack(warps, weights=weights)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="skydm-swarp-")
        workdir = tmp.name
    work = Path(workdir)
    try:
        inputs = write_swarp_inputs(stack, work)
        ny, nx = stack.shape
        ra, dec = (float(v) for v in stack.wcs.wcs.crval)
        scale = float(abs(stack.wcs.pixel_scale_matrix[1, 1]) * 3600.0)
        out = work / "coadd.fits"
        wout = work / "coadd.weight.fits"
        cmd = [
            exe,
            *[str(p) for p in inputs],
            "-c", "/dev/null",
            "-IMAGEOUT_NAME", str(out),
            "-WEIGHTOUT_NAME", str(wout),
            "-RESAMPLE", "N",
            "-COMBINE_TYPE", combine,
            "-WEIGHT_TYPE", "MAP_WEIGHT",
            "-RESCALE_WEIGHTS", "N",
            "-SUBTRACT_BACK", "N",
            "-FSCALASTRO_TYPE", "NONE",
            "-CENTER_TYPE", "MANUAL",
            "-CENTER", f"{ra:.10f},{dec:.10f}",
            "-PIXELSCALE_TYPE", "MANUAL",
            "-PIXEL_SCALE", f"{scale:.10f}",
            "-IMAGE_SIZE", f"{nx},{ny}",
            "-NTHREADS", str(nthreads),
            "-WRITE_XML", "N",
            "-VERBOSE_TYPE", "QUIET",
            "-VMEM_DIR", str(work),
            "-RESAMPLE_DIR", str(work),
            "-MEM_MAX", "2048",
            "-COMBINE_BUFSIZE", "1024",
        ]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not out.exists():
            raise SkydmError(f"SWarp failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        with fits.open(out) as h_img, fits.open(wout) as h_w:
            image = np.asarray(h_img[0].data, dtype=np.float32)
            weight = np.asarray(h_w[0].data, dtype=np.float32)
            wcs = wcs_from_header(h_img[0].header)
        if wcs is None or image.shape != stack.shape or not _same_grid(stack.wcs, wcs, stack.shape):
            raise UserError("SWarp's output grid differs from the cell's; cannot compare them")
        with np.errstate(divide="ignore"):
            var = np.where(weight > 0, 1.0 / weight, np.inf).astype(np.float32)
        mask = np.where(weight > 0, 0, Mask.NO_DATA).astype(np.uint32)
        exp = Exposure(
            image=np.where(weight > 0, image, 0).astype(np.float32),
            variance=var,
            mask=mask,
            wcs=stack.wcs.deepcopy(),
            zero_point=stack.zero_point,
        )
        from skydm.coadd.assemble import coadd_psf

        exp.psf = coadd_psf(stack, stack.weights * stack.shape[0] * stack.shape[1])
        exp.meta["COADD"] = (f"swarp-{combine.lower()}", "coadd assembly method")
        return exp, seconds
    finally:
        if tmp is not None:
            tmp.cleanup()
        if not isinstance(warps, WarpStack):
            stack.close()
