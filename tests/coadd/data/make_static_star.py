"""Regenerate ``static_star.npz`` (see ``tests/coadd/test_coadd_static_star.py``).

A 64x64 cut of held-out field 236791440:8 (``coadd_harness.fields``) centred
on pixel (64, 76) of its cell: a bright static star (peak about 40,000)
with a variable 5 px away, a ghost on the star and a trail across the
variable, in eight epochs of 3.2-6.7 px seeing.  Stored: the artefact
warps (image, variance, mask, Moffat FWHM and index, MJD), the weights
of the artefact-free warps, the cut's WCS, and the plain weighted mean
of the artefact-free warps (image and variance) as the truth.

    PYTHONPATH=src:tests python tests/coadd/data/make_static_star.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coadd_harness.fields import simulate_field
from skydm.coadd import WarpStack, assemble_coadd

SEED, EPOCHS, X, Y, SIZE = 236791440, 8, 64, 76, 64


def main() -> None:
    sim = simulate_field(SEED, EPOCHS).sim
    art = [w.cutout(X, Y, SIZE) for w in sim.art]
    clean = [w.cutout(X, Y, SIZE) for w in sim.clean]
    truth = assemble_coadd(WarpStack(clean, weights=sim.weights), "mean")
    np.savez_compressed(
        Path(__file__).with_name("static_star.npz"),
        image=np.stack([w.image for w in art]),
        variance=np.stack([w.var for w in art]),
        mask=np.stack([w.msk for w in art]),
        fwhm=np.array([w.psf.fwhm for w in art]),
        beta=np.array([w.psf.beta for w in art]),
        mjd=np.array([float(w.info.mjd) for w in art]),
        zero_point=np.array([w.zero_point for w in art]),
        weights=np.asarray(sim.weights),
        wcs=np.array(art[0].wcs.to_header_string()),
        truth=truth.image,
        truth_var=truth.var,
    )


if __name__ == "__main__":
    main()
