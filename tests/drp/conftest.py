"""Fixtures of the Object catalog tests: measured simulated sky cells (held-out seeds)."""

from __future__ import annotations

import pytest
from astropy.table import Table
from drp_cells import SEEDS, SimCell, build_cell


@pytest.fixture(scope="module", params=SEEDS)
def measured(request: pytest.FixtureRequest) -> tuple[SimCell, Table]:
    from skydm.drp import measure_objects

    sim = build_cell(request.param)
    return sim, measure_objects(sim.coadds)
