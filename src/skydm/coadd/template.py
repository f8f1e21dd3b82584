"""Templates for differencing: coadds of a repository's visit images on a sky cell.

:func:`build_template` finds a band's calibrated visit images (``calexp``)
that overlap a sky cell, warps each onto the cell (to a common zero
point), coadds them with CompareWarp and stores the result as a
``template`` dataset whose data ID names the cell.  The warps are written
to a temporary directory and memory-mapped, so memory stays bounded by the
coadd's band of rows, whatever the number of visits.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skydm.coadd.assemble import assemble_coadd
from skydm.coadd.skygrid import SkyCell, SkyGrid
from skydm.coadd.warp import warp_exposure
from skydm.errors import UserError
from skydm.image import Exposure
from skydm.progress import Progress

if TYPE_CHECKING:
    from skydm.repo import DatasetRef, Repository

#: The default sky grid of templates: 0.1-degree cells of 0.2-arcsec pixels.
DEFAULT_GRID = {"ra0": 0.0, "dec0": 0.0, "cell_size_deg": 0.1, "pixel_scale": 0.2, "margin": 50}


def default_grid(pixel_scale: float | None = None, cell_size_deg: float | None = None) -> SkyGrid:
    """The project's sky grid, optionally with another pixel scale or cell size."""
    args = dict(DEFAULT_GRID)
    if pixel_scale is not None:
        args["pixel_scale"] = pixel_scale
    if cell_size_deg is not None:
        args["cell_size_deg"] = cell_size_deg
    margin = int(args.pop("margin"))
    return SkyGrid(**args, margin=margin)  # type: ignore[arg-type]


def build_template(
    repo: Repository,
    skycell: str | SkyCell,
    band: str,
    *,
    grid: SkyGrid | None = None,
    method: str = "compare",
    input_type: str = "calexp",
    output_type: str = "template",
    instrument: str | None = None,
    visits: Sequence[int] | None = None,
    replace: bool = True,
    progress: Progress | None = None,
) -> tuple[Exposure, DatasetRef]:
    """Warp and coadd a band's visit images onto a sky cell and store the result.

    Parameters
    ----------
    repo : Repository
        Holds the ``input_type`` datasets.
    skycell : str or SkyCell
        Cell id on ``grid`` (e.g. ``"c12_34"``) or a cell.
    band : str
        Band of the visits to coadd.
    grid : SkyGrid, optional
        The sky grid (default :func:`default_grid`).
    method : str
        Assembly method (see :func:`skydm.coadd.assemble_coadd`).
    input_type, output_type : str
        Dataset types read and written.
    instrument : str, optional
        Only visits of this instrument.
    visits : sequence of int, optional
        Only these visits (e.g. the epochs reserved for templates).
    replace : bool
        Replace an existing template of the same data ID.
    progress : Progress, optional
        Reports visits warped.

    Returns
    -------
    coadd : Exposure
    ref : DatasetRef
        The stored template.

    Raises
    ------
    UserError
        When no visit of the band overlaps the cell.
    """
    from skydm.repo import DataId

    grid = grid or default_grid()
    cell = skycell if isinstance(skycell, SkyCell) else grid.cell_by_id(skycell)
    refs = repo.query(dataset_type=input_type, band=band, instrument=instrument)
    if visits is not None:
        wanted = set(visits)
        refs = [r for r in refs if r.data_id.visit in wanted]
    if not refs:
        raise UserError(
            f"the repository holds no {input_type} in band {band!r}; process some visits first"
        )
    exposures: list[tuple[DatasetRef, Exposure]] = []
    for ref in refs:
        exp = repo.get_exposure(input_type, ref.data_id)
        if exp.wcs is not None and cell.overlap_bbox(exp.wcs, exp.shape) is not None:
            exposures.append((ref, exp))
    if not exposures:
        raise UserError(
            f"none of the {len(refs)} {input_type} datasets in band {band!r} overlaps sky cell "
            f"{cell.id}; pick a cell they cover (see SkyGrid.cells_overlapping)"
        )
    zps = [e.zero_point for _, e in exposures if math.isfinite(e.zero_point)]
    zero_point = float(np.median(zps)) if len(zps) == len(exposures) else None
    if progress is not None:
        progress.total = len(exposures)
    with tempfile.TemporaryDirectory(prefix="skydm-warps-") as tmp:
        paths = []
        for ref, exp in exposures:
            warp = warp_exposure(exp, cell, zero_point=zero_point)
            path = Path(tmp) / f"warp-{ref.data_id.visit}-{ref.data_id.detector}.fits"
            warp.write(path)
            paths.append(path)
            if progress is not None:
                progress.advance(1, f"warped visit {ref.data_id.visit}")
        try:
            coadd = assemble_coadd(paths, method)
        except UserError as exc:
            # The warps are temporary files: name the dataset a user can fix.
            text = str(exc)
            for path, (ref, _) in zip(paths, exposures, strict=True):
                if str(path) in text:
                    label = f"the warp of {input_type} {ref.data_id}"
                    raise UserError(text.replace(str(path), label)) from exc
            raise
    first = exposures[0][0].data_id
    coadd.info.band = band
    data_id = DataId(instrument=first.instrument, band=band, skycell=cell.id)
    # The inputs are recorded so that image services can list a coadd's progenitors.
    inputs = [{"dataset_type": input_type, **ref.data_id.as_dict()} for ref, _ in exposures]
    stored = repo.put_exposure(
        coadd, output_type, data_id, replace=replace, meta={"inputs": inputs}
    )
    return coadd, stored
