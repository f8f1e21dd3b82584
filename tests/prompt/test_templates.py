"""The template of a detector: the sky cell covering it best, not only the one holding its centre.

Real :class:`SkyGrid` geometry, real WCSs and coverage measured on template
pixels; no broker, no pipeline.  The grid's cells are 0.05 degrees (900
pixels of 0.2 arcsec, 20 pixels of margin) and the detector 256 pixels
(0.0142 degrees), placed on the border between two cells of one ring.
"""

from __future__ import annotations

import numpy as np
import pytest

from skydm.coadd.skygrid import SkyCell, SkyGrid, tan_wcs
from skydm.errors import UserError
from skydm.image import Exposure
from skydm.image.mask import Mask
from skydm.prompt.templates import choose_template, coverage, preload_cells

GRID = SkyGrid(ra0=150.0, dec0=2.0, cell_size_deg=0.05, pixel_scale=0.2, margin=20)
SIDE = 256


def _template(cell: SkyCell, *, no_data: bool = False) -> Exposure:
    mask = np.full(cell.shape, np.uint32(Mask.NO_DATA) if no_data else 0, dtype=np.uint32)
    return Exposure(image=np.zeros(cell.shape, dtype=np.float32), mask=mask, wcs=cell.wcs)


def _detector(ra: float, dec: float = 2.0) -> Exposure:
    return Exposure(
        image=np.zeros((SIDE, SIDE), dtype=np.float32), wcs=tan_wcs(ra, dec, (SIDE, SIDE), 0.2)
    )


def _border() -> tuple[SkyCell, SkyCell, float]:
    """Two neighbouring cells of the ring at dec 2 and the RA of their shared border."""
    left = GRID.cell_containing(150.0, 2.0)
    right = GRID.cell_containing(150.0 + 0.05, 2.0)
    assert left.id != right.id
    return left, right, (left.ra + right.ra) / 2.0


def _choose(det: Exposure, templates: dict[str, Exposure], minimum: float = 0.5):  # type: ignore[no-untyped-def]
    assert det.wcs is not None
    cells = GRID.cells_overlapping(det.wcs, det.image.shape)
    return choose_template(
        det, cells, templates.get, min_coverage=minimum, what="visit 7 detector 3 band r"
    )


def test_a_detector_straddling_two_cells_gets_the_one_covering_it_most() -> None:
    left, right, border = _border()
    # Centre 0.004 degrees left of the border: about 86% on the left cell's
    # grid (margin included) and 30% on the right one's.
    det = _detector(border - 0.004)
    both = {left.id: _template(left), right.id: _template(right)}
    choice = _choose(det, both)
    assert choice.cell_id == left.id
    by = {c.cell_id: c.coverage for c in choice.searched}
    assert set(by) == {left.id, right.id}
    assert 0.8 < by[left.id] < 0.92 and 0.24 < by[right.id] < 0.36
    # Valid pixels count, not the grid: a template with no data covers nothing.
    assert coverage(det, _template(left, no_data=True)) == 0.0
    both[left.id] = _template(left, no_data=True)
    assert _choose(det, both, 0.2).cell_id == right.id


def test_a_detector_whose_centre_cell_has_no_template_gets_its_neighbours() -> None:
    left, right, border = _border()
    det = _detector(border - 0.0005)  # centre in the left cell, 54% on the right one's grid
    assert det.wcs is not None
    ra, dec = det.wcs.pixel_to_world_values((SIDE - 1) / 2.0, (SIDE - 1) / 2.0)
    assert GRID.cell_containing(float(ra), float(dec)).id == left.id
    choice = _choose(det, {right.id: _template(right)})
    assert choice.cell_id == right.id and 0.5 < choice.coverage < 0.6
    # And the preload (from the event's centre only) reads both cells.
    ids = [c.id for c in preload_cells(GRID, float(ra), float(dec), 0.01)]
    assert ids[0] == left.id and right.id in ids


def test_a_detector_not_covered_enough_names_the_cells_searched() -> None:
    left, right, border = _border()
    det = _detector(border - 0.004)  # the right cell's template covers 30% of it
    with pytest.raises(UserError) as err:
        _choose(det, {right.id: _template(right)})
    text = str(err.value)
    assert "visit 7 detector 3 band r" in text and "50%" in text
    assert f"{left.id} (no template)" in text and f"{right.id} (3" in text
    assert "skydm run drp" in text


def test_a_detector_off_every_template_names_its_cells() -> None:
    left, right, _ = _border()
    far = _detector(150.5)  # ten cells away from either template
    with pytest.raises(UserError) as err:
        _choose(far, {left.id: _template(left), right.id: _template(right)})
    text = str(err.value)
    assert "searched sky cells c" in text and "(no template)" in text
    assert left.id not in text and right.id not in text
    assert "skydm run drp" in text
