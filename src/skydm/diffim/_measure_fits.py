"""The dipole and trailed-source fits of DIA measurement, on the sources their rules select.

The rules (documented in ``docs/alerts.md``): a dipole fit where pixels of
the opposite sign reach ``dipole_min_sigma`` within ``dipole_max_separation``
FWHM of the peak; a trail fit on bright-enough sources without a dipole fit
whose adaptive moments are significantly elongated.
"""

from __future__ import annotations

import math

import numpy as np

from skydm.diffim import _fits, _stamps
from skydm.diffim._geometry import Geometry
from skydm.diffim._mconfig import MeasureConfig
from skydm.image import Exposure
from skydm.image.psf import Psf

#: The diaSource fields a dipole fit fills (NaN where none ran or converged).
DIPOLE_FIELDS = (
    "dipoleMeanFlux",
    "dipoleMeanFluxErr",
    "dipoleFluxDiff",
    "dipoleFluxDiffErr",
    "dipoleLength",
    "dipoleAngle",
    "dipoleChi2",
)
#: The diaSource fields a trail fit fills (NaN where none ran or converged).
TRAIL_FIELDS = (
    "trailFlux",
    "trailFluxErr",
    "trailRa",
    "trailRaErr",
    "trailDec",
    "trailDecErr",
    "trailLength",
    "trailLengthErr",
    "trailAngle",
    "trailAngleErr",
    "trailChi2",
)


def dipoles(
    st: _stamps.Stamps,
    z: np.ndarray,
    fmap: np.ndarray,
    sign: np.ndarray,
    psf: Psf,
    fwhm: float,
    geo: Geometry,
    cfg: MeasureConfig,
) -> dict[str, np.ndarray]:
    """Dipole fits where both signs are significant near the peak.

    ``z``/``fmap`` are the stamps' matched-filter significance and flux
    maps, ``sign`` each source's sign; returns the ``dipole*`` columns.
    """
    n = st.data.shape[0]
    u, v = st.offsets()
    rmax = cfg.dipole_max_separation * fwhm
    near = (u * u + v * v) <= rmax * rmax
    opposite = np.min(np.where(near, sign[:, None, None] * z, np.inf), axis=(1, 2))
    attempt = opposite <= -cfg.dipole_min_sigma
    out = {
        "dipoleFitAttempted": attempt.copy(),
        "isDipole": np.zeros(n, dtype=bool),
        "dipoleNdata": np.zeros(n, dtype=np.int32),
    }
    for name in (
        "dipoleMeanFlux",
        "dipoleMeanFluxErr",
        "dipoleFluxDiff",
        "dipoleFluxDiffErr",
        "dipoleLength",
        "dipoleAngle",
        "dipoleChi2",
    ):
        out[name] = np.full(n, np.nan)
    if not attempt.any():
        return out
    shifted = _fits.ShiftedPsf(psf)
    for k in np.flatnonzero(attempt):
        g = st.good[k]
        zk = np.where(near[k], z[k], 0.0)
        ip = np.unravel_index(int(np.argmax(zk)), zk.shape)
        ineg = np.unravel_index(int(np.argmin(zk)), zk.shape)
        start = np.array(
            [
                max(float(fmap[k][ip]), 1e-6),
                max(-float(fmap[k][ineg]), 1e-6),
                float(u[k][ip]),
                float(v[k][ip]),
                float(u[k][ineg]),
                float(v[k][ineg]),
            ]
        )
        # Only the pixels around the two lobes carry information on them.
        mid_u, mid_v = 0.5 * (start[2] + start[4]), 0.5 * (start[3] + start[5])
        reach = 0.5 * math.hypot(start[2] - start[4], start[3] - start[5]) + 2 * fwhm
        g = g & ((u[k] - mid_u) ** 2 + (v[k] - mid_v) ** 2 <= reach * reach)
        res = _fits.fit_dipole(
            st.data[k],
            np.sqrt(st.var[k]),
            g,
            (float(st.dx[k]), float(st.dy[k])),
            shifted,
            start,
            max_offset=float(st.half - 1),
        )
        out["dipoleNdata"][k] = res.ndata
        if not res.success:
            continue
        fp, fn, xp, yp, xn, yn = res.params
        c = res.cov
        out["dipoleMeanFlux"][k] = 0.5 * (fp + fn)
        out["dipoleMeanFluxErr"][k] = 0.5 * math.sqrt(max(c[0, 0] + c[1, 1] + 2 * c[0, 1], 0))
        out["dipoleFluxDiff"][k] = fp - fn
        out["dipoleFluxDiffErr"][k] = math.sqrt(max(c[0, 0] + c[1, 1] - 2 * c[0, 1], 0))
        out["dipoleChi2"][k] = res.chi2
        sep_x, sep_y = np.array([xp - xn]), np.array([yp - yn])
        if geo.jac is not None:
            one = Geometry(geo.jac[k : k + 1])
            out["dipoleLength"][k] = float(one.arcsec(sep_x, sep_y)[0])
            out["dipoleAngle"][k] = float(one.bearing(sep_x, sep_y)[0])
        else:
            out["dipoleLength"][k] = math.nan
        snr_p = fp / math.sqrt(c[0, 0]) if c[0, 0] > 0 else 0.0
        snr_n = fn / math.sqrt(c[1, 1]) if c[1, 1] > 0 else 0.0
        sep = math.hypot(float(sep_x[0]), float(sep_y[0]))
        out["isDipole"][k] = bool(
            snr_p >= cfg.dipole_lobe_snr and snr_n >= cfg.dipole_lobe_snr and sep <= rmax
        )
    return out


def trails(
    difference: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    sign: np.ndarray,
    snr: np.ndarray,
    cols: dict[str, np.ndarray],
    sigma_psf: float,
    half: int,
    geo: Geometry,
    cfg: MeasureConfig,
) -> dict[str, np.ndarray]:
    """Trailed-source fits on elongated, bright-enough sources without a dipole fit.

    ``cols`` holds the columns measured so far (its private moment columns
    are consumed here); returns the ``trail*`` columns.
    """
    n = x.size
    mxx, myy, mxy = cols.pop("_mxx"), cols.pop("_myy"), cols.pop("_mxy")
    psf_vars = cols.pop("_psf_var")
    psf_var = float(psf_vars[0]) if n else math.nan
    if math.isfinite(psf_var) and psf_var > 0:
        sigma_psf = math.sqrt(psf_var)
    mom = _stamps.Moments(mxx, myy, mxy, np.isfinite(mxx))
    major, minor, theta0 = mom.axes()
    s2 = sigma_psf**2
    # The elongation must be significant too: the moments' fractional noise
    # is about 2 / S/N, so a faint round source often looks 30% elongated.
    e = np.maximum(
        cfg.trail_min_elongation,
        cfg.trail_elongation_sigma * cfg.extendedness_size_noise / np.maximum(np.abs(snr), 1e-3),
    )
    attempt = (
        mom.ok
        & (np.abs(snr) >= cfg.trail_min_snr)
        & (major >= (1 + e) * s2)
        & (major - minor >= e * s2)
        & ~cols["dipoleFitAttempted"]  # both signs: a dipole, not a trail
    )
    out: dict[str, np.ndarray] = {
        "trail_flag": np.zeros(n, dtype=bool),
        "trail_flag_edge": np.zeros(n, dtype=bool),
        "trailNdata": np.zeros(n, dtype=np.int32),
    }
    for name in TRAIL_FIELDS:
        out[name] = np.full(n, np.nan)
    for k in np.flatnonzero(attempt):
        l0 = math.sqrt(max(12.0 * (major[k] - s2), 1.0))
        h = int(
            min(
                math.ceil(0.5 * cfg.trail_max_length + 3 * sigma_psf),
                max(half, math.ceil(0.75 * l0 + 3 * sigma_psf + 2)),
            )
        )
        st = _stamps.gather(difference, x[k : k + 1], y[k : k + 1], h)
        u, v = (a[0] for a in st.offsets())
        # Pixels within a capsule around the first guess of the line (the
        # moments overestimate a trail's length by ~20%, so it holds the trail).
        c, sn = math.cos(theta0[k]), math.sin(theta0[k])
        along = np.abs(u * c + v * sn) - 0.6 * l0
        across = np.abs(-u * sn + v * c)
        dist = np.hypot(np.maximum(along, 0.0), across)
        g = st.good[0] & (dist <= 4 * sigma_psf + 2)
        data = st.data[0][g]
        out["trail_flag_edge"][k] = bool(
            np.any(~st.inside[0]) or np.any((st.mask[0] & _stamps.EDGE_BITS) != 0)
        )
        start = np.array(
            [
                float(cols["apFlux"][k]) if np.isfinite(cols["apFlux"][k]) else sign[k],
                0.0,
                0.0,
                l0,
                float(theta0[k]),
            ]
        )
        res = _fits.fit_trail(
            data,
            np.sqrt(st.var[0][g]),
            u[g],
            v[g],
            sigma_psf,
            start,
            max_length=cfg.trail_max_length,
            max_offset=float(h - 1),
        )
        out["trailNdata"][k] = res.ndata
        if not res.success:
            out["trail_flag"][k] = True
            continue
        flux, x0, y0, length, theta = res.params
        theta = theta % math.pi
        err = np.sqrt(np.clip(np.diag(res.cov), 0, None))
        out["trailFlux"][k], out["trailFluxErr"][k] = flux, err[0]
        out["trailChi2"][k] = res.chi2
        out["trailAngleErr"][k] = math.degrees(err[4])
        if geo.jac is None or difference.wcs is None:
            continue
        one = Geometry(geo.jac[k : k + 1])
        cx, cy = np.array([x[k] + x0]), np.array([y[k] + y0])
        ra, dec = difference.wcs.pixel_to_world_values(cx, cy)
        out["trailRa"][k], out["trailDec"][k] = float(np.asarray(ra)[0]), float(np.asarray(dec)[0])
        sky = one.sky_cov(res.cov[None, 1:3, 1:3])[0]
        out["trailRaErr"][k] = math.sqrt(max(sky[0, 0], 0.0))
        out["trailDecErr"][k] = math.sqrt(max(sky[1, 1], 0.0))
        ux, uy = np.array([math.cos(theta)]), np.array([math.sin(theta)])
        scale = float(one.arcsec(ux, uy)[0])
        out["trailLength"][k] = length * scale
        out["trailLengthErr"][k] = err[3] * scale
        # A trail has no direction: its bearing is folded into [0, 180).
        out["trailAngle"][k] = float(one.bearing(ux, uy)[0]) % 180.0
    return out
