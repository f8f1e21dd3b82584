"""Per detector-visit tasks: ``calibrate`` (raw -> calexp) and ``warp`` (calexp -> warps)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from skydm.errors import BadValueError
from skydm.pipeline.io import UnitIO
from skydm.pipeline.regions import GridConfig
from skydm.pipeline.task import (
    Connection,
    DatasetKey,
    GraphContext,
    Task,
    TaskConfig,
    WorkUnit,
)

VISIT_DIMS = ("instrument", "detector", "visit", "band")
CELL_DIMS = ("instrument", "skycell", "band")
WARP_DIMS = ("instrument", "detector", "visit", "band", "skycell")


@dataclass(frozen=True)
class CalibrateConfig(TaskConfig):
    """Config of ``calibrate``.

    Attributes
    ----------
    psf_fallback : bool
        With too few stars for a PSF, use a Moffat of the header's seeing.
    psf_max_weight : float
        Cap on one PSF candidate's weight in the common profile fit, in units
        of the median candidate's (:class:`skydm.image.StarPsfConfig`
        ``max_weight``); 0 is off.
    """

    psf_fallback: bool = True
    psf_max_weight: float = 0.0

    def validate(self) -> None:
        w = self.psf_max_weight
        if isinstance(w, bool) or not (w == 0 or 1 <= w < math.inf):
            raise BadValueError("calibrate.psf_max_weight", w, "a weight ratio >= 1, or 0 (off)")


class CalibrateTask(Task):
    """raw -> calexp, one unit per detector-visit (:func:`skydm.pipeline.calibrate_raw`)."""

    name = "calibrate"
    config_class = CalibrateConfig
    dimensions = VISIT_DIMS
    inputs = (Connection("raw", VISIT_DIMS),)
    outputs = (Connection("calexp", VISIT_DIMS),)

    def units(self, context: GraphContext) -> Iterator[WorkUnit]:
        for data_id in context.ids("raw"):
            yield self.unit(data_id, [DatasetKey("raw", data_id)], [DatasetKey("calexp", data_id)])

    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        from skydm.pipeline.calibrate import calibrate_raw

        assert isinstance(self.config, CalibrateConfig)
        from skydm.image.starpsf import StarPsfConfig
        from skydm.pipeline.calibrate import CalibrateConfig as Settings

        settings = Settings(
            psf_fallback=self.config.psf_fallback,
            psf=StarPsfConfig(max_weight=self.config.psf_max_weight),
        )
        calexp = calibrate_raw(io.exposure(unit.inputs[0]), config=settings)
        io.put_exposure(unit.outputs[0], calexp)


@dataclass(frozen=True)
class WarpConfig(GridConfig, TaskConfig):
    """Config of ``warp``: the sky grid, the resampling and the common zero point.

    Attributes
    ----------
    method : str
        ``bilinear``, ``bicubic`` or ``adaptive`` (see :func:`skydm.coadd.warp_exposure`).
    zero_point : float
        Zero point every warp is scaled to (when the calexp has one).
    min_overlap : int
        Pixels a calexp must reach into a cell to be warped onto it (a
        grazing overlap leaves no pixel unmasked by the resampling's edge).
    """

    method: str = "bilinear"
    zero_point: float = 27.0
    min_overlap: int = 8

    def validate(self) -> None:
        self.grid()  # raises BadValueError naming the bad grid value
        if self.method not in ("bilinear", "bicubic", "adaptive"):
            raise BadValueError("warp.method", self.method, "bilinear, bicubic or adaptive")
        if not math.isfinite(self.zero_point):
            raise BadValueError("warp.zero_point", self.zero_point, "a finite magnitude")
        if not 0 <= self.min_overlap <= 1000:
            raise BadValueError("warp.min_overlap", self.min_overlap, "0 to 1000 pixels")


class WarpTask(Task):
    """calexp -> one warp per sky cell it overlaps (:func:`skydm.coadd.warp_exposure`)."""

    name = "warp"
    config_class = WarpConfig
    dimensions = VISIT_DIMS
    inputs = (Connection("calexp", VISIT_DIMS),)
    outputs = (Connection("warp", WARP_DIMS),)

    def units(self, context: GraphContext) -> Iterator[WorkUnit]:
        assert isinstance(self.config, WarpConfig)
        ids = context.ids("calexp")
        raws = [context.raw_ref(d) for d in ids]
        # Place the raws not yet on this grid in batches (a cold graph).
        context.regions.prepare(
            [r for r in raws if r is not None], self.config, min_overlap=self.config.min_overlap
        )
        for data_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                context.skip("warp: no raw to place the calexp on the sky")
                continue
            try:
                cells = context.regions.cells(raw, self.config, min_overlap=self.config.min_overlap)
            except Exception as exc:  # an unreadable raw fails in calibrate, named there
                context.skip(f"warp: footprint of raw {data_id} unreadable ({exc})")
                continue
            outputs = [DatasetKey("warp", data_id.with_skycell(c)) for c in cells]
            if outputs:
                yield self.unit(data_id, [DatasetKey("calexp", data_id)], outputs)

    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        from skydm.coadd import warp_exposure

        assert isinstance(self.config, WarpConfig)
        calexp = io.exposure(unit.inputs[0])
        grid = self.config.grid()
        zp = self.config.zero_point if math.isfinite(calexp.zero_point) else None
        for key in unit.outputs:
            assert key.data_id.skycell is not None
            cell = grid.cell_by_id(key.data_id.skycell)
            warp = warp_exposure(calexp, cell, method=self.config.method, zero_point=zp)
            io.put_exposure(key, warp)
