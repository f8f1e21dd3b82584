"""Data release tasks: ``measure`` (coadds of every band -> Object rows) and ``object_catalog``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from astropy.table import Table, vstack

from skydm.errors import BadValueError
from skydm.pipeline.io import UnitIO
from skydm.pipeline.regions import GridConfig
from skydm.pipeline.task import Connection, DatasetKey, GraphContext, Task, TaskConfig, WorkUnit
from skydm.pipeline.tasks.visit import CELL_DIMS
from skydm.repo import DataId

SKYCELL_DIMS = ("instrument", "skycell")


@dataclass(frozen=True)
class MeasureConfig(TaskConfig):
    """Config of ``measure``.

    Attributes
    ----------
    min_bands : int
        Cells with coadds in fewer bands are left out.
    """

    min_bands: int = 1

    def validate(self) -> None:
        if self.min_bands < 1:
            raise BadValueError("measure.min_bands", self.min_bands, "an integer >= 1")


class MeasureTask(Task):
    """Detection on a sky cell's coadds (all bands) and multi-band forced photometry.

    Wraps :func:`skydm.drp.measure_objects`; the rows of a cell, with ids
    unique across cells (:func:`skydm.drp.assign_object_ids`), are an
    ``object_table`` dataset (FITS).
    """

    name = "measure"
    config_class = MeasureConfig
    dimensions = SKYCELL_DIMS
    inputs = (Connection("coadd", CELL_DIMS),)
    outputs = (Connection("object_table", SKYCELL_DIMS),)

    def units(self, context: GraphContext) -> Iterator[WorkUnit]:
        assert isinstance(self.config, MeasureConfig)
        cells: dict[DataId, list[DataId]] = defaultdict(list)
        for data_id in context.ids("coadd"):
            cells[DataId(data_id.instrument, band="all", skycell=data_id.skycell)].append(data_id)
        for cell, coadds in sorted(cells.items()):
            if len(coadds) < self.config.min_bands:
                context.skip(f"measure: coadds in fewer than {self.config.min_bands} bands")
                continue
            yield self.unit(
                cell, [DatasetKey("coadd", c) for c in coadds], [DatasetKey("object_table", cell)]
            )

    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        from skydm.drp import assign_object_ids, measure_objects

        coadds = {key.data_id.band: io.exposure(key) for key in unit.inputs}
        table = measure_objects(coadds)
        assert unit.data_id.skycell is not None
        assign_object_ids(table, unit.data_id.skycell)
        table.meta = {k: v for k, v in table.meta.items() if isinstance(v, int | float | str)}
        io.put_table(unit.outputs[0], table)


@dataclass(frozen=True)
class ObjectCatalogConfig(GridConfig, TaskConfig):
    """Config of ``object_catalog``: the sky grid of the coadds (to drop margin duplicates)."""

    def validate(self) -> None:
        self.grid()


class ObjectCatalogTask(Task):
    """Every sky cell's Object rows -> the catalog's Object table (served over TAP).

    Cells overlap by their margins; an object is kept in the cell whose
    inner area holds it, so that it appears once.
    """

    name = "object_catalog"
    config_class = ObjectCatalogConfig
    dimensions = ("instrument",)
    inputs = (Connection("object_table", SKYCELL_DIMS),)
    outputs = (Connection("object_catalog", ("instrument",)),)

    def units(self, context: GraphContext) -> Iterator[WorkUnit]:
        by_instrument: dict[str, list[DataId]] = defaultdict(list)
        for data_id in context.ids("object_table"):
            by_instrument[data_id.instrument].append(data_id)
        for instrument, ids in sorted(by_instrument.items()):
            target = DataId(instrument, band="all")
            yield self.unit(
                target,
                [DatasetKey("object_table", d) for d in ids],
                [DatasetKey("object_catalog", target)],
            )

    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        from skydm.pipeline.catalogs import load_object_table

        assert isinstance(self.config, ObjectCatalogConfig)
        grid = self.config.grid()
        parts = []
        for key in unit.inputs:
            table = io.table(key)
            if len(table):
                home = [
                    grid.cell_containing(float(ra), float(dec)).id
                    for ra, dec in zip(table["coord_ra"], table["coord_dec"], strict=True)
                ]
                table = table[np.asarray(home) == key.data_id.skycell]
            # A typed column even when empty: a cell with no objects would
            # otherwise give a float column that cannot be stacked with strings.
            table["skycell"] = np.array([key.data_id.skycell] * len(table), dtype=str)
            parts.append(table)
        table = vstack(parts, metadata_conflicts="silent") if parts else Table()
        table.meta = {}
        rows = load_object_table(table, io.repo.root / "catalog")
        io.put_json(unit.outputs[0], {"tables": {"Object": rows}})
