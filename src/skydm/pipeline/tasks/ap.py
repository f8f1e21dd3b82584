"""Alert production tasks: ``diffim``, ``ap`` (association and alerts) and ``dia_catalog``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skydm.errors import BadValueError
from skydm.pipeline.io import UnitIO
from skydm.pipeline.regions import GridConfig
from skydm.pipeline.task import Connection, DatasetKey, GraphContext, Task, TaskConfig, WorkUnit
from skydm.pipeline.tasks.visit import CELL_DIMS, VISIT_DIMS
from skydm.repo import DataId


@dataclass(frozen=True)
class DiffimConfig(GridConfig, TaskConfig):
    """Config of ``diffim``: the sky grid of the templates, method and threshold.

    Attributes
    ----------
    method : str
        ``al`` (Alard–Lupton with decorrelation) or ``zogy``.
    threshold : float
        Detection threshold of DIA sources in sigma.
    template_type : str
        Dataset type of the templates (the ``coadd`` of ``drp`` by default).
    """

    method: str = "al"
    threshold: float = 5.0
    template_type: str = "coadd"

    def validate(self) -> None:
        self.grid()
        if self.method not in ("al", "zogy"):
            raise BadValueError("diffim.method", self.method, "al or zogy")
        if not 1.0 <= self.threshold <= 100.0:
            raise BadValueError("diffim.threshold", self.threshold, "1 to 100 sigma")


class DiffimTask(Task):
    """calexp - template -> difference + DIA sources, per detector-visit.

    The template is the coadd of the sky cell that holds the detector's
    centre; its resampling onto the calexp is kept (``diff_template``) for
    the alerts' cutouts.
    """

    name = "diffim"
    config_class = DiffimConfig
    dimensions = VISIT_DIMS
    inputs = (Connection("calexp", VISIT_DIMS), Connection("coadd", CELL_DIMS))
    outputs = (
        Connection("diff", VISIT_DIMS),
        Connection("dia_src", VISIT_DIMS),
        Connection("diff_template", VISIT_DIMS),
    )

    def units(self, context: GraphContext) -> Iterator[WorkUnit]:
        assert isinstance(self.config, DiffimConfig)
        templates = context.available.get(self.config.template_type, set())
        for data_id in context.ids("calexp"):
            raw = context.raw_ref(data_id)
            if raw is None:
                context.skip("diffim: no raw to place the calexp on the sky")
                continue
            try:
                cell = context.regions.centre_cell(raw, self.config)
            except Exception as exc:  # an unreadable raw fails in calibrate, named there
                context.skip(f"diffim: footprint of raw {data_id} unreadable ({exc})")
                continue
            template = DataId(data_id.instrument, band=data_id.band, skycell=cell)
            if template not in templates:
                context.skip(
                    f"diffim: no {self.config.template_type} template (run `skydm run drp` first)"
                )
                continue
            yield self.unit(
                data_id,
                [DatasetKey("calexp", data_id), DatasetKey(self.config.template_type, template)],
                [
                    DatasetKey("diff", data_id),
                    DatasetKey("dia_src", data_id),
                    DatasetKey("diff_template", data_id),
                ],
            )

    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        from skydm.diffim import detect_dia_sources, subtract
        from skydm.diffim.measure import measure_dia_sources

        assert isinstance(self.config, DiffimConfig)
        science = io.exposure(unit.inputs[0])
        template = io.exposure(unit.inputs[1])
        result = subtract(science, template, method=self.config.method)
        sources = detect_dia_sources(result, threshold=self.config.threshold)
        sources = measure_dia_sources(
            sources,
            result.difference,
            science=science,
            template=result.template,
            science_psf=result.science_psf,
            template_psf=result.template_psf,
        )
        io.put_exposure(unit.outputs[0], result.difference)
        # The template on the science's grid: for the alerts' cutouts and scores.
        io.put_exposure(unit.outputs[2], result.template)
        sources.meta = {k: v for k, v in sources.meta.items() if _fits_scalar(v)}
        io.put_table(unit.outputs[1], sources)


def _fits_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


@dataclass(frozen=True)
class ApConfig(TaskConfig):
    """Config of ``ap``.

    Attributes
    ----------
    apdb : str
        SQLAlchemy URL of the APDB; empty for ``apdb.sqlite3`` in the
        repository (a cluster without a shared filesystem needs PostgreSQL).
    radius_arcsec : float
        Association radius.
    bootstrap : str
        Kafka bootstrap servers to stream alerts to; empty for archives only.
    """

    apdb: str = ""
    radius_arcsec: float = 1.0
    bootstrap: str = ""

    def validate(self) -> None:
        if not 0.01 <= self.radius_arcsec <= 60.0:
            raise BadValueError("ap.radius_arcsec", self.radius_arcsec, "0.01 to 60 arcsec")


def apdb_url(config: ApConfig, root: Path) -> str | Path:
    """The APDB of a repository under ``config``."""
    return config.apdb or root / "apdb.sqlite3"


class ApTask(Task):
    """DIA sources -> association (APDB), forced photometry, alert packets, per detector-visit.

    Units run one at a time in visit order, since each visit's association
    depends on the DIA objects of the visits before it.
    """

    name = "ap"
    config_class = ApConfig
    dimensions = VISIT_DIMS
    serial = True
    inputs = (
        Connection("calexp", VISIT_DIMS),
        Connection("diff", VISIT_DIMS),
        Connection("dia_src", VISIT_DIMS),
        Connection("diff_template", VISIT_DIMS),
    )
    outputs = (Connection("alert_summary", VISIT_DIMS),)

    def units(self, context: GraphContext) -> Iterator[WorkUnit]:
        diffs = context.available.get("dia_src", set())
        for data_id in sorted(context.ids("diff"), key=lambda d: (d.visit, d.detector)):
            if data_id not in diffs:
                continue
            yield self.unit(
                data_id,
                [DatasetKey(t, data_id) for t in ("calexp", "diff", "dia_src", "diff_template")],
                [DatasetKey("alert_summary", data_id)],
            )

    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        from skydm.alerts.archive import archive_name
        from skydm.alerts.produce import produce_visit_alerts
        from skydm.ap.apdb import Apdb

        assert isinstance(self.config, ApConfig)
        d = unit.data_id
        archive_dir = io.repo.root / "alerts"
        apdb = Apdb(apdb_url(self.config, io.repo.root))
        try:
            # A unit killed after the APDB commit (which happens only once the
            # archive is complete) is finished, not redone: redoing it would
            # associate the visit twice.
            if apdb.has_visit(d.visit, d.detector):
                n_sources = len(apdb.sources_of_visit(d.visit, d.detector))
                archive = archive_dir / archive_name(d.visit, d.detector)
                summary: dict[str, Any] = {
                    "n_sources": n_sources,
                    "n_alerts": None,
                    "resumed": True,
                }
            else:
                sources = io.table(unit.inputs[2])
                diff = io.exposure(unit.inputs[1])
                science = io.exposure(unit.inputs[0])
                done = produce_visit_alerts(
                    sources,
                    diff,
                    apdb=apdb,
                    archive_dir=archive_dir,
                    science=science,
                    template=io.exposure(unit.inputs[3]),
                    radius_arcsec=self.config.radius_arcsec,
                    bootstrap=self.config.bootstrap or None,
                )
                archive = done.archive or archive_dir / archive_name(d.visit, d.detector)
                summary = {
                    "n_sources": done.n_sources,
                    "n_alerts": done.n_alerts,
                    "n_new_objects": done.n_new_objects,
                    "resumed": False,
                    "streamed": done.stream.delivered if done.stream is not None else None,
                    "pending": done.stream.pending if done.stream is not None else 0,
                }
        finally:
            apdb.close()
        summary["archive"] = str(archive.relative_to(io.repo.root)) if archive.exists() else None
        io.put_json(unit.outputs[0], summary)


@dataclass(frozen=True)
class DiaCatalogConfig(TaskConfig):
    """Config of ``dia_catalog`` (the APDB is the ``ap`` task's)."""

    apdb: str = ""


class DiaCatalogTask(Task):
    """The APDB's DiaObject and DiaSource tables -> the catalog (served over TAP)."""

    name = "dia_catalog"
    config_class = DiaCatalogConfig
    dimensions = ("instrument",)
    inputs = (Connection("alert_summary", VISIT_DIMS),)
    outputs = (Connection("dia_catalog", ("instrument",)),)

    def units(self, context: GraphContext) -> Iterator[WorkUnit]:
        by_instrument: dict[str, list[DataId]] = {}
        for data_id in context.ids("alert_summary"):
            by_instrument.setdefault(data_id.instrument, []).append(data_id)
        for instrument, ids in sorted(by_instrument.items()):
            target = DataId(instrument, band="all")
            yield self.unit(
                target,
                [DatasetKey("alert_summary", d) for d in ids],
                [DatasetKey("dia_catalog", target)],
            )

    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        from skydm.pipeline.catalogs import load_apdb_tables

        assert isinstance(self.config, DiaCatalogConfig)
        url = self.config.apdb or io.repo.root / "apdb.sqlite3"
        rows = load_apdb_tables(url, io.repo.root / "catalog")
        io.put_json(unit.outputs[0], {"tables": rows})
