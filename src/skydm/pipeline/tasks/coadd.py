"""``coadd``: the warps of a sky cell and band -> one coadd (CompareWarp)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from skydm.errors import BadValueError
from skydm.pipeline.io import UnitIO
from skydm.pipeline.task import Connection, DatasetKey, GraphContext, Task, TaskConfig, WorkUnit
from skydm.pipeline.tasks.visit import CELL_DIMS, WARP_DIMS
from skydm.repo import DataId

METHODS = ("compare", "mean", "median", "clipped")


@dataclass(frozen=True)
class CoaddConfig(TaskConfig):
    """Config of ``coadd``.

    Attributes
    ----------
    method : str
        Assembly (:func:`skydm.coadd.assemble_coadd`); CompareWarp by default.
    min_warps : int
        Cells and bands with fewer warps get no coadd (CompareWarp needs
        several epochs to tell an artefact from the sky).
    """

    method: str = "compare"
    min_warps: int = 3

    def validate(self) -> None:
        if self.method not in METHODS:
            raise BadValueError("coadd.method", self.method, f"one of {', '.join(METHODS)}")
        if self.min_warps < 1:
            raise BadValueError("coadd.min_warps", self.min_warps, "an integer >= 1")


class CoaddTask(Task):
    """Every warp of a sky cell and band -> a ``coadd`` on that cell."""

    name = "coadd"
    config_class = CoaddConfig
    dimensions = CELL_DIMS
    inputs = (Connection("warp", WARP_DIMS),)
    outputs = (Connection("coadd", CELL_DIMS),)

    def units(self, context: GraphContext) -> Iterator[WorkUnit]:
        assert isinstance(self.config, CoaddConfig)
        groups: dict[tuple[str, str, str | None], list[DataId]] = defaultdict(list)
        for data_id in context.ids("warp"):
            groups[(data_id.instrument, data_id.band, data_id.skycell)].append(data_id)
        for (instrument, band, skycell), warps in sorted(groups.items()):
            cell = DataId(instrument, band=band, skycell=skycell)
            if len(warps) < self.config.min_warps:
                context.skip(f"coadd: fewer than {self.config.min_warps} warps")
                continue
            yield self.unit(
                cell, [DatasetKey("warp", w) for w in warps], [DatasetKey("coadd", cell)]
            )

    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        from skydm.coadd import assemble_coadd

        assert isinstance(self.config, CoaddConfig)
        paths = [io.path(key) for key in unit.inputs]
        coadd = assemble_coadd(paths, self.config.method)
        coadd.info.band = unit.data_id.band
        io.put_exposure(unit.outputs[0], coadd)
