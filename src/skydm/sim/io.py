"""Writing a simulated survey as camera raws of the "skysim" instrument, with truth.

Layout under the output directory::

    skysim_<visit>_<detector>_<band>.fits   raw exposures (single HDU)
    clean/<same names>                       the artefact-free twins
    truth.ecsv                               catalog of every object
    visits.ecsv                              one row per visit and detector (conditions, file)
    truth/visit_<visit>.ecsv                 per-visit truth (x, y, flux of everything)
    truth/footprints_<visit>.fits            artefact footprints, one bit per class

A focal plane of several detectors names its truth per detector
(``truth/visit_<visit>_<detector>.ecsv``, ``truth/footprints_<visit>_<detector>.fits``),
and with ``mef=True`` writes one multi-extension raw per visit,
``skysim_<visit>_<band>.fits``: a primary HDU with the visit's cards and one
image extension per detector (``EXTNAME = 'DET<nn>'``, ``DETECTOR``, its WCS),
as DECam, HSC and LSST cameras do.
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


def mef_name(v: SimVisit) -> str:
    """File name of a visit's multi-extension raw (all detectors)."""
    return f"skysim_{v.visit:06d}_{v.band}.fits"


def _truth_stem(v: SimVisit) -> str:
    if v.config.n_detectors == 1:
        return f"{v.visit:06d}"
    return f"{v.visit:06d}_{v.detector:02d}"


def _primary_header(v: SimVisit, *, clean: bool = False) -> fits.Header:
    """A multi-extension raw's primary cards: the visit's, without detector or WCS."""
    h = fits.Header()
    for card in raw_header(v, clean=clean).cards:
        if card.keyword == "DETECTOR" or card.keyword in v.wcs.to_header():
            continue
        h.append(card)
    h["NEXTEND"] = (v.config.n_detectors, "number of detector extensions")
    return h


def write_mef(visits: list[SimVisit], out_dir: Path, *, clean: bool = True) -> Path:
    """Write the detectors of one visit as one multi-extension raw (and clean twin, truth)."""
    first = visits[0]
    dtype = first.config.raw_dtype
    for twin, folder in ((False, out_dir), (True, out_dir / "clean")):
        if twin and not clean:
            continue
        hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [
            fits.PrimaryHDU(header=_primary_header(first, clean=twin))
        ]
        for v in visits:
            image = v.clean.image if twin else v.raw.image
            prim = _hdu(image, dtype, raw_header(v, clean=twin))
            hdus.append(fits.ImageHDU(prim.data, header=prim.header, name=f"DET{v.detector:02d}"))
        atomic_write_hdulist(folder / mef_name(first), fits.HDUList(hdus))
    for v in visits:
        _write_truth(v, out_dir)
    return out_dir / mef_name(first)


def write_visit(v: SimVisit, out_dir: Path, *, clean: bool = True) -> Path:
    """Write one visit's raw (and clean twin, truth and footprints); returns the raw path."""
    dtype = v.config.raw_dtype
    name = raw_name(v)
    raw_path = out_dir / name
    atomic_write_hdulist(raw_path, fits.HDUList([_hdu(v.raw.image, dtype, raw_header(v))]))
    if clean:
        hdu = _hdu(v.clean.image, dtype, raw_header(v, clean=True))
        atomic_write_hdulist(out_dir / "clean" / name, fits.HDUList([hdu]))
    _write_truth(v, out_dir)
    return raw_path


def _write_truth(v: SimVisit, out_dir: Path) -> None:
    truth_dir = out_dir / "truth"
    stem = _truth_stem(v)
    _write_table(truth_dir / f"visit_{stem}.ecsv", v.truth)
    # int16 holds the ten classes' bits (below the sign bit) and RICE compresses it.
    bits = np.zeros(v.config.shape, dtype=np.int16)
    for i, cls in enumerate(FOOTPRINT_CLASSES):
        bits[v.artefacts[cls]] |= np.int16(1 << i)
    fp = fits.CompImageHDU(bits, compression_type="RICE_1", name="FOOTPRNT")
    for i, cls in enumerate(FOOTPRINT_CLASSES):
        fp.header[f"FPBIT{i}"] = (cls, "artefact class of this bit")
    fp.header["VISIT"] = v.visit
    fp.header["DETECTOR"] = v.detector
    atomic_write_hdulist(
        truth_dir / f"footprints_{stem}.fits", fits.HDUList([fits.PrimaryHDU(), fp])
    )


def write_survey(
    survey: Survey,
    out_dir: str | Path,
    clean: bool = True,
    *,
    progress: Progress | None = None,
    mef: bool = False,
) -> list[Path]:
    """Write every visit as a camera raw, plus clean twins and truth tables.

    Visits not yet rendered are rendered, written and released one at a time,
    so memory holds one visit (one focal plane with ``mef``) whatever the
    survey's size.

    Parameters
    ----------
    survey : Survey
        From :func:`~skydm.sim.simulate_survey`.
    out_dir : str or pathlib.Path
        Output directory (created).
    clean : bool
        Also write the artefact-free twins under ``clean/``.
    progress : Progress, optional
        Advanced once per raw file.
    mef : bool
        Write each visit's detectors as one multi-extension file.

    Returns
    -------
    list of pathlib.Path
        The raw files, in visit order (detectors in order within a visit).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_table(out / "truth.ecsv", survey.truth)
    groups: list[list[SimVisit]] = []
    for v in survey.visits:
        if mef and groups and groups[-1][0].visit == v.visit:
            groups[-1].append(v)
        else:
            groups.append([v])
    paths, files = [], []
    for group in groups:
        rendered = [v.rendered for v in group]
        path = (
            write_mef(group, out, clean=clean) if mef else write_visit(group[0], out, clean=clean)
        )
        paths.append(path)
        files += [path.name] * len(group)
        for v, was in zip(group, rendered, strict=True):
            if not was:
                v.release()
        if progress is not None:
            v = group[0]
            progress.advance(note=f'visit {v.visit} {v.band} seeing {v.seeing:.2f}"')
    visits = survey.visit_table()
    visits["file"] = files
    visits.meta["seed"] = survey.config.seed
    visits.meta["config"] = {
        k: (list(val) if isinstance(val, tuple) else val)
        for k, val in vars(survey.config).items()
        if not (isinstance(val, float) and math.isnan(val))
    }
    _write_table(out / "visits.ecsv", visits)
    return paths
