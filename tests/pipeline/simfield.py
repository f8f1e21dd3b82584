"""A small multi-detector, multi-band simulated survey for the pipeline tests.

Until the simulator writes focal planes, each detector is simulated as its
own survey with the same seed (same visits, bands, epochs and seeing),
shifted on the sky by one detector width, with its own ``DETNUM``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from astropy.table import Table, vstack

SIZE = 256
PIXEL_SCALE = 0.2
RA0, DEC0 = 150.0, 2.0
#: The grid the tests' pipelines use: one cell holds the whole field.
GRID = [
    f"ra0={RA0}",
    f"dec0={DEC0}",
    "cell_size_deg=0.04",
    "margin=20",
]


@dataclass
class SimField:
    """Raw files written and the merged truth."""

    raws: list[Path]
    truth: Table


def simulate_field(
    out: Path, *, detectors: int = 2, visits: int = 10, bands: tuple[str, ...] = ("g", "r"),
    seed: int = 7, size: int = SIZE,
) -> SimField:  # fmt: skip
    """Write raws of ``detectors`` detectors side by side; returns paths and truth."""
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    step = (size + 10) * PIXEL_SCALE / 3600.0
    raws: list[Path] = []
    truths = []
    for k in range(detectors):
        dra = (k - (detectors - 1) / 2) * step / math.cos(math.radians(DEC0))
        cfg = SurveyConfig(
            seed=seed,
            shape=(size, size),
            n_visits=visits,
            bands=bands,
            n_stars=60,
            n_galaxies=20,
            dither=5.0,
            n_transients=2,
            n_variables=1,
            n_movers=0,
            artefacts=("cosmic_rays",),
            ra=RA0 + dra,
            dec=DEC0,
            detector=k,
        )
        survey = simulate_survey(cfg)
        raws += write_survey(survey, out / f"det{k}", clean=False)
        truth = survey.truth.copy()
        truth["detector"] = k
        truths.append(truth)
    return SimField(raws, vstack(truths, metadata_conflicts="silent"))
