"""Simulated sky cells for the Object catalog tests: 2-band coadds of a small
simulated field, with the simulator's truth on the cell's pixel grid.

Each band's visits are warped onto a cell inside the area every dithered
visit covers and coadded with the real coadd code (the inverse-variance
weighted mean: the fields have no artefacts).  The seeds used here are held
out: the defaults of :class:`skydm.drp.ObjectConfig` were set on seeds 1 and
11, never on these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from skydm.coadd import SkyCell, WarpStack, assemble_coadd, warp_exposure
from skydm.image import Exposure, Mask
from skydm.image.exposure import NJY_AB_MAG

#: Held-out seeds of the acceptance fields.
SEEDS = (2, 3)
BANDS = ("g", "r")


@dataclass
class SimCell:
    """Coadds of one cell and the truth on its grid.

    ``truth`` has, per object, ``x``, ``y`` (cell pixels), ``flux_<band>``
    (nJy), ``snr_<band>`` (the PSF-flux S/N the coadd's variance predicts),
    ``snr`` (the best band's), ``saturated`` (a SAT pixel within 2 PSF FWHM
    in some visit), ``isolated`` (no object brighter than 0.3 times its flux
    within 3 PSF FWHM) and ``inside`` (a PSF stamp from the cell's border).
    """

    seed: int
    coadds: dict[str, Exposure]
    truth: Table


def build_cell(seed: int, *, side: int = 512, n_visits: int = 6) -> SimCell:
    from skydm.sim import SurveyConfig, simulate_survey

    cfg = SurveyConfig(
        seed=seed,
        shape=(side, side),
        n_visits=n_visits,
        bands=BANDS,
        artefacts="none",
        n_transients=0,
        n_variables=0,
        n_movers=0,
        n_stars=round(150 * (side / 512) ** 2),
        n_galaxies=round(50 * (side / 512) ** 2),
        dither=20.0,
    )
    survey = simulate_survey(cfg)
    ra, dec = survey.fields[0]
    inner = side - 2 * int(cfg.dither) - 24
    cell = SkyCell.centred(ra, dec, (inner, inner), cfg.pixel_scale)
    zp = float(np.median([v.zero_point for v in survey.visits]))
    coadds: dict[str, Exposure] = {}
    sat = np.zeros(cell.shape, dtype=bool)
    for band in BANDS:
        warps = []
        for v in survey.visits:
            if v.band != band:
                continue
            exp = v.clean.copy()
            # The simulator's sky is flat and known (a calibration pipeline fits it).
            exp.image = (exp.image - np.float32(exp.info.sky)).astype(np.float32)
            warp = warp_exposure(exp, cell, zero_point=zp)
            sat |= (warp.msk & np.uint32(Mask.SAT)) != 0
            warps.append(warp)
            v.release()
        coadds[band] = assemble_coadd(WarpStack(warps), "mean")
    truth = survey.truth
    x, y = cell.wcs.world_to_pixel_values(np.asarray(truth["ra"]), np.asarray(truth["dec"]))
    truth["x"], truth["y"] = x, y
    fwhm = max(c.require_psf("truth").fwhm for c in coadds.values())
    half = int(np.ceil(2.5 * fwhm))
    truth["inside"] = (x > half) & (x < inner - 1 - half) & (y > half) & (y < inner - 1 - half)
    truth = truth[(x > -5) & (x < inner + 5) & (y > -5) & (y < inner + 5)]
    ix = np.clip(np.rint(truth["x"]).astype(int), 0, inner - 1)
    iy = np.clip(np.rint(truth["y"]).astype(int), 0, inner - 1)
    best = np.zeros(len(truth))
    for band, c in coadds.items():
        flux = 10 ** ((NJY_AB_MAG - np.asarray(truth[f"mag_{band}"])) / 2.5)
        truth[f"flux_{band}"] = flux
        k = c.require_psf("truth").kernel()
        sigma = np.sqrt(c.var[iy, ix] / np.sum(k * k)) * c.nanojansky_per_count("truth")
        truth[f"snr_{band}"] = flux / sigma
        best = np.maximum(best, truth[f"snr_{band}"])
    truth["snr"] = best
    near_sat = cKDTree(np.argwhere(sat)[:, ::-1]) if sat.any() else None
    xy = np.column_stack([truth["x"], truth["y"]])
    truth["saturated"] = (
        np.array([len(v) > 0 for v in near_sat.query_ball_point(xy, 2 * fwhm)])
        if near_sat is not None
        else np.zeros(len(truth), dtype=bool)
    )
    ref = np.asarray(truth[f"flux_{BANDS[-1]}"])
    tree = cKDTree(xy)
    truth["isolated"] = [
        not any(ref[j] > 0.3 * ref[i] for j in near if j != i)
        for i, near in enumerate(tree.query_ball_point(xy, 3 * fwhm))
    ]
    return SimCell(seed, coadds, truth)


def match(table: Table, truth: Table) -> tuple[np.ndarray, np.ndarray]:
    """For each truth object, the distance to and row of the nearest Object."""
    if len(table) == 0:
        return np.full(len(truth), np.inf), np.zeros(len(truth), dtype=int)
    tree = cKDTree(np.column_stack([table["x"], table["y"]]))
    d, j = tree.query(np.column_stack([truth["x"], truth["y"]]))
    return np.asarray(d), np.asarray(j)
