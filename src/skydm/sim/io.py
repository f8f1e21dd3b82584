"""Writing a simulated survey as camera raws of the "skysim" instrument, with truth.

Layout under the output directory::

    skysim_<visit>_<detector>_<band>.fits   raw exposures (single HDU)
    clean/<same names>                       the artefact-free twins
    truth.ecsv                               catalog of every object
    visits.ecsv                              one row per visit (conditions, file)
    truth/visit_<visit>.ecsv                 per-visit truth (x, y, flux of everything)
    truth/footprints_<visit>.fits            artefact footprints, one bit per class
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from skydm.progress import Progress
from skydm.repo.atomic import atomic_write_bytes, atomic_write_hdulist
from skydm.sim.config import FOOTPRINT_CLASSES
from skydm.sim.survey import SimVisit, Survey

_DTYPES = {"uint16": np.uint16, "int32": np.int32, "float32": np.float32}


def raw_name(v: SimVisit) -> str:
    """File name of a visit's raw (and clean twin)."""
    return f"skysim_{v.visit:06d}_{v.detector:02d}_{v.band}.fits"


def raw_header(v: SimVisit, *, clean: bool = False) -> fits.Header:
    """The header a "skysim" camera writes: observation cards and the TAN WCS."""
    cfg = v.config
    h = fits.Header()
    h["INSTRUME"] = ("SKYSIM", "instrument")
    h["TELESCOP"] = ("SKYDM-SIM", "telescope")
    h["DETECTOR"] = (int(v.detector), "detector number")
    h["VISIT"] = (int(v.visit), "visit (exposure) number")
    h["FILTER"] = (v.band, "band")
    h["FIELD"] = (f"F{v.field:03d}", "survey field")
    start = Time(v.mjd - v.exptime / 2 / 86400.0, format="mjd", scale="tai")
    h["MJD-OBS"] = (float(v.mjd), "MJD (TAI) at mid-exposure")
    h["DATE-OBS"] = (start.isot, "start of exposure (TAI)")
    h["DATE-AVG"] = (Time(v.mjd, format="mjd", scale="tai").isot, "mid-exposure (TAI)")
    h["TIMESYS"] = ("TAI", "time scale of MJD-OBS and DATE-OBS")
    h["EXPTIME"] = (float(v.exptime), "exposure time, s")
    h["AIRMASS"] = (round(v.airmass, 4), "airmass at mid-exposure")
    h["GAIN"] = (cfg.gain, "electrons per ADU")
    h["RDNOISE"] = (cfg.read_noise, "read noise, electrons")
    h["SATURATE"] = (cfg.saturation, "saturation level, ADU")
    h["SEEING"] = (round(v.seeing, 4), "PSF FWHM, arcsec")
    h["SKYLEVEL"] = (round(v.sky, 3), "sky level in the image (not subtracted), ADU")
    h["MAGZERO"] = (round(v.zero_point, 5), "true AB zero point (mag of 1 ADU)")
    h["PSFKIND"] = (v.psf.kind, "true PSF model")
    h["PSFFWHM"] = (round(v.psf.fwhm, 5), "true PSF FWHM, pixels")
    ra, dec = (float(c) for c in v.wcs.wcs.crval)
    h["RA"] = (ra, "pointing RA, deg")
    h["DEC"] = (dec, "pointing Dec, deg")
    h["BUNIT"] = ("adu", "pixel unit")
    h["SIMSEED"] = (int(cfg.seed), "skydm.sim seed")
    h["SIMCLEAN"] = (bool(clean), "artefact-free twin of a raw")
    h.extend(v.wcs.to_header(), update=True)
    return h


def _hdu(image: np.ndarray, dtype: str, header: fits.Header) -> fits.PrimaryHDU:
    target = _DTYPES[dtype]
    if dtype == "float32":
        data = image.astype(np.float32)
    else:
        lo, hi = (0, 65535) if dtype == "uint16" else (-(2**31), 2**31 - 1)
        data = np.clip(np.rint(image), lo, hi).astype(target)
    # astropy stores uint16 as BITPIX=16 with BZERO=32768, as cameras do.
    return fits.PrimaryHDU(data=data, header=header)


def _write_table(path: Path, table: Table) -> None:
    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    atomic_write_bytes(path, buf.getvalue().encode())


def write_visit(v: SimVisit, out_dir: Path, *, clean: bool = True) -> Path:
    """Write one visit's raw (and clean twin, truth and footprints); returns the raw path."""
    dtype = v.config.raw_dtype
    name = raw_name(v)
    raw_path = out_dir / name
    atomic_write_hdulist(raw_path, fits.HDUList([_hdu(v.raw.image, dtype, raw_header(v))]))
    if clean:
        hdu = _hdu(v.clean.image, dtype, raw_header(v, clean=True))
        atomic_write_hdulist(out_dir / "clean" / name, fits.HDUList([hdu]))
    truth_dir = out_dir / "truth"
    _write_table(truth_dir / f"visit_{v.visit:06d}.ecsv", v.truth)
    bits = np.zeros(v.config.shape, dtype=np.uint8)
    for i, cls in enumerate(FOOTPRINT_CLASSES):
        bits[v.artefacts[cls]] |= np.uint8(1 << i)
    fp = fits.CompImageHDU(bits, compression_type="RICE_1", name="FOOTPRNT")
    for i, cls in enumerate(FOOTPRINT_CLASSES):
        fp.header[f"FPBIT{i}"] = (cls, "artefact class of this bit")
    fp.header["VISIT"] = v.visit
    atomic_write_hdulist(
        truth_dir / f"footprints_{v.visit:06d}.fits", fits.HDUList([fits.PrimaryHDU(), fp])
    )
    return raw_path


def write_survey(
    survey: Survey, out_dir: str | Path, clean: bool = True, *, progress: Progress | None = None
) -> list[Path]:
    """Write every visit as a camera raw, plus clean twins and truth tables.

    Visits not yet rendered are rendered, written and released one at a time,
    so memory holds one visit whatever the survey's size.

    Parameters
    ----------
    survey : Survey
        From :func:`~skydm.sim.simulate_survey`.
    out_dir : str or pathlib.Path
        Output directory (created).
    clean : bool
        Also write the artefact-free twins under ``clean/``.
    progress : Progress, optional
        Advanced once per visit.

    Returns
    -------
    list of pathlib.Path
        The raw files, in visit order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_table(out / "truth.ecsv", survey.truth)
    paths = []
    for v in survey.visits:
        rendered = v.rendered
        paths.append(write_visit(v, out, clean=clean))
        if not rendered:
            v.release()
        if progress is not None:
            progress.advance(note=f'visit {v.visit} {v.band} seeing {v.seeing:.2f}"')
    visits = survey.visit_table()
    visits["file"] = [p.name for p in paths]
    visits.meta["seed"] = survey.config.seed
    visits.meta["config"] = {
        k: (list(val) if isinstance(val, tuple) else val)
        for k, val in vars(survey.config).items()
        if not (isinstance(val, float) and math.isnan(val))
    }
    _write_table(out / "visits.ecsv", visits)
    return paths
