"""How a simulated detector is read out: amplifiers with their own gains, bias and overscan.

The scene is rendered in ADU of the survey's nominal ``gain`` (one number
per detector).  With ``n_amps > 1`` or ``overscan > 0`` the written raw is
what a real readout would give: the detector split into ``n_amps`` strips
side by side in x, each converted to ADU with its own gain
(:meth:`~skydm.sim.SurveyConfig.amp_gains`) on top of its own bias level,
and ``overscan`` columns per amplifier after all the data columns holding
that bias plus read noise.  The header describes each amplifier in the
DECam convention (``DATASECA``, ``BIASSECA``, ``GAINA``, ``RDNOISEA``,
``SATURATA``, then ``B``...), which the built-in ``skysim`` instrument
definition reads.  The in-memory exposures (``SimVisit.raw``) stay in
nominal ADU; only the files carry the readout.
"""

from __future__ import annotations

import math
import string

import numpy as np
from astropy.io import fits

from skydm.sim.survey import SimVisit, stream

#: Random stream of the overscan's read noise (after survey.py's five).
STREAM_READOUT = 5
#: Largest value of each raw pixel type.
_TOP = {"uint16": 65535.0, "int32": 2.0**31 - 1, "float32": math.inf}
#: Bias step between neighbouring amplifiers and drift along the rows, ADU.
BIAS_STEP, BIAS_DRIFT = 37.0, 3.0


def has_readout(v: SimVisit) -> bool:
    """Whether the raws of this survey carry amplifiers or overscan."""
    return v.config.n_amps > 1 or v.config.overscan > 0


def read_out(v: SimVisit, image: np.ndarray) -> tuple[np.ndarray, fits.Header]:
    """The raw pixels (float64 ADU, overscan columns appended) and the amplifier cards.

    ``image`` (nominal ADU) is returned unchanged, with no cards, without
    amplifiers or overscan.
    """
    cfg = v.config
    cards = fits.Header()
    if not has_readout(v):
        return image, cards
    n, oc = int(cfg.n_amps), int(cfg.overscan)
    ny, nx = image.shape
    width = nx // n
    out = np.zeros((ny, nx + n * oc))
    rng = stream(cfg, STREAM_READOUT, v.visit, v.detector)
    drift = BIAS_DRIFT * np.arange(ny) / max(ny - 1, 1)
    for k, gain in enumerate(cfg.amp_gains()):
        name = string.ascii_uppercase[k]
        bias = (cfg.bias_adu + BIAS_STEP * k + drift) if oc else np.zeros(ny)
        cols = slice(k * width, (k + 1) * width)
        out[:, cols] = image[:, cols] * (cfg.gain / gain) + bias[:, None]
        cards[f"DATASEC{name}"] = (f"[{k * width + 1}:{(k + 1) * width},1:{ny}]", "amp data")
        if oc:
            over = slice(nx + k * oc, nx + (k + 1) * oc)
            noise = rng.normal(0.0, cfg.read_noise / gain, (ny, oc))
            out[:, over] = bias[:, None] + noise
            cards[f"BIASSEC{name}"] = (f"[{over.start + 1}:{over.stop},1:{ny}]", "amp overscan")
        cards[f"GAIN{name}"] = (round(gain, 6), f"amp {name} electrons per ADU")
        cards[f"RDNOISE{name}"] = (cfg.read_noise, f"amp {name} read noise, electrons")
        # The full well in this amplifier's ADU, above its lowest bias; and
        # never above what the pixel type holds.
        level = min(cfg.saturation * cfg.gain / gain + float(bias.min()), _TOP[cfg.raw_dtype])
        if math.isfinite(level):
            cards[f"SATURAT{name}"] = (math.floor(level), f"amp {name} saturation, ADU")
    return out, cards
