"""Benchmark: the Object table of one simulated sky cell (``skydm.drp.measure_objects``).

A 2-band (g, r) survey of ``--epochs`` visits per band on ``--size``² images
is simulated; each visit is warped onto a cell that every dithered visit
covers and coadded (weighted mean), then ``measure_objects`` runs on the two
coadds.  Prints one JSON line: ``cell_side``, ``bands``, ``objects``,
``measure_s`` (detection, deblending, centroids, photometry; best of
``--repeat`` runs), ``per_object_ms``, ``mpix_per_s`` (cell megapixels per
second, all bands), ``completeness_snr10`` (stars with no brighter
neighbour within 3 PSF FWHM, predicted coadd S/N >= 10, found within 2 px),
``flux_ratio_g``/``flux_ratio_r`` (median PSF flux over truth of such stars
at S/N >= 50) and ``peak_rss_mb``.

Usage: ``python benchmarks/drp.py [--size 1024] [--epochs 6] [--seed 5] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side, pixels")
    parser.add_argument("--epochs", type=int, default=6, help="visits per band")
    parser.add_argument("--seed", type=int, default=5, help="simulation seed")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (best is kept)")
    args = parser.parse_args()

    from scipy.spatial import cKDTree

    from skydm.coadd import SkyCell, WarpStack, assemble_coadd, warp_exposure
    from skydm.drp import measure_objects
    from skydm.image import Mask
    from skydm.image.exposure import NJY_AB_MAG
    from skydm.sim import SurveyConfig, simulate_survey

    bands = ("g", "r")
    scale = (args.size / 512) ** 2
    cfg = SurveyConfig(
        seed=args.seed,
        shape=(args.size, args.size),
        n_visits=args.epochs,
        bands=bands,
        artefacts="none",
        n_transients=0,
        n_variables=0,
        n_movers=0,
        n_stars=round(150 * scale),
        n_galaxies=round(50 * scale),
        dither=20.0,
    )
    survey = simulate_survey(cfg)
    ra, dec = survey.fields[0]
    side = args.size - 64
    cell = SkyCell.centred(ra, dec, (side, side), cfg.pixel_scale)
    zp = float(np.median([v.zero_point for v in survey.visits]))
    coadds = {}
    sat = np.zeros(cell.shape, dtype=bool)
    for band in bands:
        warps = []
        for v in survey.visits:
            if v.band != band:
                continue
            exp = v.clean.copy()
            exp.image = (exp.image - np.float32(exp.info.sky)).astype(np.float32)
            warp = warp_exposure(exp, cell, zero_point=zp)
            sat |= (warp.msk & np.uint32(Mask.SAT)) != 0
            warps.append(warp)
            v.release()
        coadds[band] = assemble_coadd(WarpStack(warps), "mean")

    best = float("inf")
    table = None
    for _ in range(max(args.repeat, 1)):
        t0 = time.perf_counter()
        table = measure_objects(coadds)
        best = min(best, time.perf_counter() - t0)
    assert table is not None

    truth = survey.truth
    x, y = cell.wcs.world_to_pixel_values(np.asarray(truth["ra"]), np.asarray(truth["dec"]))
    fwhm = max(c.require_psf("benchmark").fwhm for c in coadds.values())
    edge = 3 * fwhm
    inside = (x > edge) & (x < side - 1 - edge) & (y > edge) & (y < side - 1 - edge)
    ix = np.clip(np.rint(x).astype(int), 0, side - 1)
    iy = np.clip(np.rint(y).astype(int), 0, side - 1)
    flux, snr = {}, {}
    for band, c in coadds.items():
        flux[band] = 10 ** ((NJY_AB_MAG - np.asarray(truth[f"mag_{band}"])) / 2.5)
        k = c.require_psf("benchmark").kernel()
        snr[band] = flux[band] / (
            np.sqrt(c.var[iy, ix] / np.sum(k * k)) * c.nanojansky_per_count("benchmark")
        )
    xy = np.column_stack([x, y])
    tree = cKDTree(xy)
    ref = flux["r"]
    isolated = np.array(
        [
            not any(ref[j] > 0.3 * ref[i] for j in nb if j != i)
            for i, nb in enumerate(tree.query_ball_point(xy, 3 * fwhm))
        ]
    )
    near_sat = np.zeros(len(truth), dtype=bool)
    if sat.any():
        sat_tree = cKDTree(np.argwhere(sat)[:, ::-1])
        near_sat = np.array([len(v) > 0 for v in sat_tree.query_ball_point(xy, 2 * fwhm)])
    stars = (np.asarray(truth["kind"]) == "star") & inside & isolated & ~near_sat
    d, j = cKDTree(np.column_stack([table["x"], table["y"]])).query(xy)
    best_snr = np.maximum(snr["g"], snr["r"])
    sel = stars & (best_snr >= 10)
    out = {
        "cell_side": side,
        "bands": len(bands),
        "epochs": args.epochs,
        "objects": len(table),
        "measure_s": round(best, 3),
        "per_object_ms": round(1000 * best / max(len(table), 1), 3),
        "mpix_per_s": round(len(bands) * side * side / 1e6 / best, 3),
        "completeness_snr10": round(float(np.mean(d[sel] < 2.0)), 4),
        "stars_snr10": int(sel.sum()),
    }
    for band in bands:
        b = stars & (snr[band] >= 50) & (d < 1.0)
        out[f"flux_ratio_{band}"] = round(
            float(np.median(np.asarray(table[f"{band}_psfFlux"])[j[b]] / flux[band][b])), 4
        )
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
