"""A small multi-detector, multi-band simulated survey for the pipeline tests.

One ``skydm sim`` focal plane: ``detectors`` detectors in a grid sharing
every visit's pointing (:attr:`skydm.sim.SurveyConfig.n_detectors`), written
as one raw per detector and visit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from astropy.table import Table

SIZE = 256
PIXEL_SCALE = 0.2
RA0, DEC0 = 150.0, 2.0
#: Gap between the detectors, pixels.
GAP = 10.0
#: The grid the tests' pipelines use: one cell holds the whole focal plane.
GRID = [
    f"ra0={RA0}",
    f"dec0={DEC0}",
    "cell_size_deg=0.04",
    "margin=20",
]


@dataclass
class SimField:
    """Raw files written, the truth catalog and the survey's config."""

    raws: list[Path]
    truth: Table
    size: int = SIZE


def simulate_field(
    out: Path, *, detectors: int = 4, visits: int = 5, bands: tuple[str, ...] = ("g", "r"),
    seed: int = 7, size: int = SIZE,
) -> SimField:  # fmt: skip
    """Write raws of a focal plane of ``detectors`` detectors; ``visits`` per band."""
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    cfg = SurveyConfig(
        seed=seed,
        shape=(size, size),
        n_visits=visits,
        bands=bands,
        pixel_scale=PIXEL_SCALE,
        n_stars=60,
        n_galaxies=20,
        dither=5.0,
        n_transients=2,
        n_variables=1,
        n_movers=0,
        artefacts=("cosmic_rays",),
        ra=RA0,
        dec=DEC0,
        n_detectors=detectors,
        detector_gap=GAP,
    )
    survey = simulate_survey(cfg)
    raws = write_survey(survey, out, clean=False)
    return SimField(raws, survey.truth, size)
