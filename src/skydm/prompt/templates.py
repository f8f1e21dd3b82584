"""Which coadd a detector is differenced against: the sky cell that covers it best.

A detector's footprint may straddle sky cells, and the cell holding its
centre may have no coadd (a neighbour's grid, margin included, may still
cover it).  :func:`choose_template` therefore looks at every cell whose
pixel grid the calexp overlaps, measures for each one that has a template
the fraction of the detector's pixels that fall on valid template pixels
(finite, not ``NO_DATA``), and takes the best; when even the best covers
less than the configured fraction, it raises a :class:`UserError` naming
every cell searched and how to make the template.  :func:`preload_cells`
gives the cells worth reading before the raw exists (from the event's
expected centre and a radius).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from skydm.errors import UserError

if TYPE_CHECKING:
    from skydm.coadd.skygrid import SkyCell, SkyGrid
    from skydm.image import Exposure

#: Points per side of the detector at which coverage is sampled (32 x 32: a
#: coverage known to about 3%, at the cost of one WCS transform of 1024 points).
SAMPLES = 32


@dataclass(frozen=True)
class CellCoverage:
    """How much of a detector one sky cell's template covers.

    Attributes
    ----------
    cell_id : str
        The sky cell.
    has_template : bool
        Whether the repository holds a template for it (in the band).
    coverage : float
        Fraction of the detector's pixels on valid template pixels (0 without one).
    """

    cell_id: str
    has_template: bool
    coverage: float


@dataclass(frozen=True)
class TemplateChoice:
    """The template chosen for a detector, and what was searched.

    Attributes
    ----------
    cell_id : str
        Sky cell of the chosen template.
    coverage : float
        Fraction of the detector it covers.
    searched : tuple of CellCoverage
        Every cell the detector overlaps, best first.
    """

    cell_id: str
    coverage: float
    searched: tuple[CellCoverage, ...]


def coverage(science: Exposure, template: Exposure, *, samples: int = SAMPLES) -> float:
    """Fraction of ``science``'s pixels that land on valid pixels of ``template``.

    Both need a WCS.  Sampled on a ``samples`` x ``samples`` grid of pixel
    centres spread over the detector.
    """
    from skydm.image.mask import Mask

    if science.wcs is None or template.wcs is None:
        return 0.0
    ny, nx = science.image.shape
    ys, xs = np.meshgrid(
        np.linspace(0.0, ny - 1.0, samples), np.linspace(0.0, nx - 1.0, samples), indexing="ij"
    )
    ra, dec = science.wcs.pixel_to_world_values(xs.ravel(), ys.ravel())
    tx, ty = template.wcs.world_to_pixel_values(ra, dec)
    ty_n, tx_n = template.image.shape
    ix = np.round(np.asarray(tx, dtype=float))
    iy = np.round(np.asarray(ty, dtype=float))
    inside = np.isfinite(ix) & np.isfinite(iy) & (ix >= 0) & (iy >= 0) & (ix < tx_n) & (iy < ty_n)
    if not inside.any():
        return 0.0
    cx, cy = ix[inside].astype(int), iy[inside].astype(int)
    valid = np.isfinite(template.image[cy, cx])
    if template.mask is not None:
        valid &= (template.mask[cy, cx] & np.uint32(Mask.NO_DATA)) == 0
    return float(valid.sum()) / float(ix.size)


def choose_template(
    science: Exposure,
    cells: Sequence[SkyCell],
    load: Callable[[str], Exposure | None],
    *,
    min_coverage: float,
    what: str,
    template_type: str = "coadd",
) -> TemplateChoice:
    """The template that covers ``science`` best among ``cells``.

    Parameters
    ----------
    science : Exposure
        The calexp (with its WCS).
    cells : sequence of SkyCell
        The cells whose grid the detector overlaps
        (:meth:`SkyGrid.cells_overlapping`).
    load : callable
        Cell id -> its template, or ``None`` when the repository has none.
    min_coverage : float
        Least fraction of the detector the chosen template must cover.
    what : str
        The detector-visit, for the message.
    template_type : str
        Dataset type of the templates, for the message.

    Raises
    ------
    UserError
        When no template covers ``min_coverage`` of the detector: names the
        cells searched (with what each covers) and how to make templates.
    """
    searched = []
    for cell in cells:
        template = load(cell.id)
        cov = 0.0 if template is None else coverage(science, template)
        searched.append(CellCoverage(cell.id, template is not None, cov))
    searched.sort(key=lambda c: (-c.coverage, c.cell_id))
    best = searched[0] if searched else None
    if best is None or not best.has_template or best.coverage < min_coverage:
        listed = ", ".join(
            f"{c.cell_id} ({f'{c.coverage:.0%} covered' if c.has_template else 'no template'})"
            for c in sorted(searched, key=lambda c: c.cell_id)
        )
        where = (
            f"searched sky cells {listed}" if searched else "it overlaps no sky cell of the grid"
        )
        raise UserError(
            f"no {template_type} template covers {min_coverage:.0%} of {what}: {where}; "
            f"build the template over those cells with `skydm run drp` (or lower "
            f"template_min_coverage in prompt/config.json)"
        )
    return TemplateChoice(best.cell_id, best.coverage, tuple(searched))


def preload_cells(grid: SkyGrid, ra: float, dec: float, radius_deg: float) -> list[SkyCell]:
    """Cells whose grid a detector centred on ``(ra, dec)`` of half-size ``radius_deg`` may overlap.

    The event gives only a detector's expected centre, so its footprint is
    taken as a square of side ``2 * radius_deg`` around it; the cell holding
    the centre comes first.
    """
    from skydm.coadd.skygrid import tan_wcs

    pixel_scale = 36.0  # 0.01 degree pixels: only the outline matters
    side = max(2, int(np.ceil(2.0 * radius_deg * 3600.0 / pixel_scale)))
    wcs = tan_wcs(ra, dec, (side, side), pixel_scale)
    centre = grid.cell_containing(ra % 360.0, dec)
    others = [c for c in grid.cells_overlapping(wcs, (side, side)) if c.id != centre.id]
    return [centre, *others]
