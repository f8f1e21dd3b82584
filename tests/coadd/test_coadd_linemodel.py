"""The streak line model's analytic Jacobian (issue 19: the fits' speed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skydm.coadd._cw_linemodel import LineModel, line_profiles
from skydm.image.psf import MoffatPsf


@pytest.mark.parametrize(
    ("long", "n_nodes", "diffuse"),
    [(True, 1, True), (True, 3, True), (False, 1, False), (False, 1, True)],
)
def test_the_analytic_jacobian_matches_finite_differences(
    long: bool, n_nodes: int, diffuse: bool
) -> None:
    # A faint segment at 30 degrees through a 60x40 patch, in unit noise.
    rng = np.random.default_rng(5)
    y, x = (a.reshape(-1).astype(np.float64) for a in np.mgrid[0:40, 0:60])
    theta = math.radians(30)
    psf = MoffatPsf(3.0, 3.0)
    prof = line_profiles(psf, theta, 4 * psf.fwhm + 8)
    t = (x - 30) * math.cos(theta) + (y - 20) * math.sin(theta)
    dd = -(x - 30) * math.sin(theta) + (y - 20) * math.cos(theta)
    d = 40 * np.exp(-0.5 * (dd / 1.5) ** 2) * (np.abs(t) < 15) + rng.normal(size=x.size)
    iv = np.ones_like(d)
    nodes = np.linspace(t.min(), t.max(), n_nodes) if n_nodes > 1 else None
    model = LineModel(prof, 30.0, 20.0, long, nodes, diffuse)
    # Off the optimum, where the fluxes' own change matters most.
    p = np.array([theta + 0.05, 0.4, 0.5, 1.8, 1.0, 12.0][: 4 if long else 6])
    jac = model.jacobian(p, x, y, d, iv)
    # Central differences of the residual, fluxes solved again at each point.
    num = np.empty_like(jac)
    for j in range(p.size):
        h = np.zeros_like(p)
        h[j] = 1e-5 * max(1.0, abs(p[j]))
        num[:, j] = (model.residual(p + h, x, y, d, iv) - model.residual(p - h, x, y, d, iv)) / (
            2 * h[j]
        )
    scale = np.maximum(np.linalg.norm(num, axis=0), 1e-9)
    # The tabulated profiles are interpolated linearly: a few per cent.
    assert np.all(np.linalg.norm(jac - num, axis=0) / scale < 0.05)
