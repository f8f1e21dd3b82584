"""Survey simulator: raw exposures of seeded fields over many visits, with truth.

``simulate_survey(SurveyConfig(...))`` plans a survey whose visits render
their raw and clean (artefact-free, same noise) exposures on first use;
``write_survey`` writes them as camera raws with a truth catalog;
``simulate_pair`` makes a science/template pair on one pixel grid for
image differencing.  See ``docs/sim.md``.
"""

from skydm.sim.config import ARTEFACT_KINDS, FOOTPRINT_CLASSES, SurveyConfig
from skydm.sim.io import write_survey
from skydm.sim.pair import simulate_pair
from skydm.sim.survey import SimVisit, Survey, simulate_survey

__all__ = [
    "ARTEFACT_KINDS",
    "FOOTPRINT_CLASSES",
    "SimVisit",
    "Survey",
    "SurveyConfig",
    "simulate_pair",
    "simulate_survey",
    "write_survey",
]
