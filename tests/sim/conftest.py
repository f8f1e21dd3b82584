"""Small simulated surveys shared by the simulator tests (rendered once per session)."""

from __future__ import annotations

import pytest

from skydm.sim import SurveyConfig, simulate_survey
from skydm.sim.survey import Survey

#: Every artefact class on, rates high enough that each class shows up in a
#: four-visit survey of 256 x 256 pixels.
SMALL = SurveyConfig(
    seed=7,
    shape=(256, 320),
    n_visits=4,
    bands=("r",),
    n_stars=120,
    n_galaxies=30,
    n_transients=3,
    n_variables=2,
    n_movers=2,
    n_slow_movers=2,
    trails_on_variables=1.0,
    ghosts_on_stars=1.0,
    trail_rate=1.5,
    ghost_rate=1.0,
    cosmic_ray_rate=150.0,
    bad_columns=2,
    rotation=1.0,
)


@pytest.fixture(scope="session")
def small_survey() -> Survey:
    """A four-visit survey with every artefact class (visits rendered lazily, cached)."""
    return simulate_survey(SMALL)
