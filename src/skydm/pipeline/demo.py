"""The end-to-end demo: one small simulated survey through every stage.

simulate -> ingest (lossless) -> calibrate -> template coadd (CompareWarp)
-> difference imaging -> DIA sources -> association and alerts -> catalog.
Every product lands in one repository, so that ``skydm verify``,
``skydm serve`` and ``skydm query`` work on it afterwards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from skydm.image import Exposure
from skydm.pipeline.calibrate import calibrate_raw
from skydm.progress import Progress
from skydm.repo import DataId, Repository


@dataclass
class DemoReport:
    """What :func:`run_demo` made, for printing."""

    repo: Path
    visits: int = 0
    template_visits: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    skycell: str = ""
    diff_visits: int = 0
    dia_sources: int = 0
    transients_injected: int = 0
    transients_found: int = 0
    alerts: int = 0
    alert_archives: list[Path] = field(default_factory=list)
    streamed: int | None = None
    stream_pending: int = 0
    catalog_tables: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Lossless compression ratio of the archived raws."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else math.nan


def _step(report: DemoReport, name: str, start: float) -> float:
    now = time.perf_counter()
    report.timings[name] = round(now - start, 2)
    return now


def run_demo(
    repo_dir: str | Path,
    *,
    seed: int = 42,
    n_visits: int = 10,
    n_template: int = 5,
    size: int = 512,
    bootstrap: str | None = None,
    quiet: bool = False,
) -> DemoReport:
    """Simulate a small survey and run it through every stage into ``repo_dir``.

    Parameters
    ----------
    repo_dir : path
        The repository (created if needed; an existing demo is replaced).
    seed : int
        Seed of the simulated survey.
    n_visits : int
        Visits in all; the first ``n_template`` build the template, the rest
        are differenced against it.
    n_template : int
        Visits coadded into the template.
    size : int
        Side of each simulated image in pixels.
    bootstrap : str, optional
        Kafka bootstrap servers; when given, alerts are streamed there.
    quiet : bool
        No progress output.
    """
    from skydm.archive import ingest_files
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    if not 2 <= n_template < n_visits:
        from skydm.errors import BadValueError

        raise BadValueError(
            "n_template", n_template, f"at least 2 and fewer than n_visits={n_visits}"
        )
    root = Path(repo_dir)
    _prepare_root(root)
    report = DemoReport(repo=root)
    t = time.perf_counter()

    # Transients peak in the second half of the survey, after the template epochs.
    cfg = SurveyConfig(
        seed=seed, shape=(size, size), n_visits=n_visits, n_transients=6, n_variables=2
    )
    survey = simulate_survey(cfg)
    raws = write_survey(
        survey, root / "sim", clean=False, progress=Progress("simulate", n_visits, quiet=quiet)
    )
    report.visits = len(raws)
    t = _step(report, "simulate", t)

    repo = Repository.open(root, create=True)
    ingest = ingest_files(repo, raws, progress=Progress("ingest", len(raws), quiet=quiet))
    for res in ingest.results:
        if res.ref is not None:
            report.raw_bytes += res.path.stat().st_size
            report.stored_bytes += res.ref.size
    t = _step(report, "ingest", t)

    calexps: list[tuple[DataId, Exposure]] = []
    bar = Progress("calibrate", len(ingest.results), quiet=quiet)
    for res in ingest.results:
        if res.data_id is None:
            continue
        calexp = calibrate_raw(_raw_exposure(repo, res.data_id))
        repo.put_exposure(calexp, "calexp", res.data_id, replace=True)
        calexps.append((res.data_id, calexp))
        bar.advance()
    calexps.sort(key=lambda item: item[1].info.mjd)
    t = _step(report, "calibrate", t)

    template, cell_id = _template(repo, calexps[:n_template], quiet=quiet)
    report.template_visits, report.skycell = n_template, cell_id
    t = _step(report, "coadd", t)

    sources = _difference_and_alert(repo, calexps[n_template:], template, report, bootstrap, quiet)
    t = _step(report, "diffim+alerts", t)

    truth = survey.truth
    transients = truth[truth["kind"] == "transient"]
    report.transients_injected = len(transients)
    if len(sources) and len(transients):
        found = 0
        for row in transients:
            d = _sep_arcsec(sources["ra"], sources["dec"], row["ra"], row["dec"])
            found += bool(np.any(d < 1.0))
        report.transients_found = found

    _load_catalog(root, report)
    _step(report, "catalog", t)
    repo.close()
    return report


DEMO_MARKER = ".skydm-demo"


def _prepare_root(root: Path) -> None:
    """Claim ``root`` for the demo, clearing a previous demo's derived products.

    A directory that holds something other than an earlier demo is refused, so
    that the demo never touches a real repository.  Archived raws are kept: a
    second run finds them already present, as ingest promises.
    """
    import shutil

    from skydm.errors import ConflictError

    marker = root / DEMO_MARKER
    if root.exists() and any(root.iterdir()) and not marker.exists():
        raise ConflictError(
            f"{root}: exists and is not a skydm demo repository; "
            "give the demo a new directory with --repo"
        )
    root.mkdir(parents=True, exist_ok=True)
    marker.touch()
    for name in ("apdb.sqlite3", "alerts", "catalog"):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _raw_exposure(repo: Repository, data_id: DataId) -> Exposure:
    from skydm.archive import restore
    from skydm.image import exposure_from_hdulist

    with restore(repo, data_id) as hdul:
        return exposure_from_hdulist(hdul, source=f"raw {data_id}")


def _template(
    repo: Repository, calexps: list[tuple[DataId, Exposure]], *, quiet: bool
) -> tuple[Exposure, str]:
    """CompareWarp template of the template epochs on a sky cell centred on the field."""
    from skydm.coadd import SkyCell
    from skydm.coadd.template import build_template

    first = calexps[0][1]
    wcs = first.require_wcs("the template coadd")
    ny, nx = first.shape
    ra, dec = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    cell = SkyCell.centred(float(ra), float(dec), (ny, nx), scale, id="demo")
    coadd, _ = build_template(
        repo,
        cell,
        first.info.band,
        visits=[data_id.visit for data_id, _ in calexps],
        progress=Progress("template", len(calexps), quiet=quiet),
    )
    return coadd, cell.id


def _difference_and_alert(
    repo: Repository,
    calexps: list[tuple[DataId, Exposure]],
    template: Exposure,
    report: DemoReport,
    bootstrap: str | None,
    quiet: bool,
) -> Table:
    from skydm.alerts.produce import produce_visit_alerts
    from skydm.ap.apdb import Apdb
    from skydm.diffim import detect_dia_sources, subtract
    from skydm.diffim.measure import measure_dia_sources

    apdb = Apdb(repo.root / "apdb.sqlite3")
    tables = []
    bar = Progress("diffim+alerts", len(calexps), quiet=quiet)
    try:
        for data_id, science in calexps:
            result = subtract(science, template, method="al")
            sources = detect_dia_sources(result, threshold=5.0)
            sources = measure_dia_sources(
                sources,
                result.difference,
                science=science,
                template=result.template,
                science_psf=result.science_psf,
                template_psf=result.template_psf,
            )
            repo.put_exposure(result.difference, "diff", data_id, replace=True)
            visit = produce_visit_alerts(
                sources,
                result.difference,
                apdb=apdb,
                archive_dir=repo.root / "alerts",
                science=science,
                template=result.template,
                bootstrap=bootstrap,
            )
            report.diff_visits += 1
            report.dia_sources += len(sources)
            report.alerts += visit.n_alerts
            if visit.archive is not None:
                report.alert_archives.append(visit.archive)
            if visit.stream is not None:
                report.streamed = (report.streamed or 0) + visit.stream.delivered
                report.stream_pending += visit.stream.pending
            if len(sources):
                tables.append(sources[~sources["flagged"]])
            bar.advance(note=f"visit {data_id.visit}: {len(sources)} DIA sources")
    finally:
        apdb.close()
    return vstack(tables, metadata_conflicts="silent") if tables else Table()


def _load_catalog(root: Path, report: DemoReport) -> None:
    from skydm.ap.apdb import Apdb
    from skydm.ap.publish import catalog_tables
    from skydm.catalog import load_table

    apdb = Apdb(root / "apdb.sqlite3")
    try:
        for name, table in catalog_tables(apdb).items():
            info = load_table(root / "catalog", name, table, mode="replace")
            report.catalog_tables[name] = int(info.rows)
    finally:
        apdb.close()


def _sep_arcsec(ra: Any, dec: Any, ra0: float, dec0: float) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    r0, d0 = math.radians(ra0), math.radians(dec0)
    cos = np.sin(dec) * math.sin(d0) + np.cos(dec) * math.cos(d0) * np.cos(ra - r0)
    return np.degrees(np.arccos(np.clip(cos, -1, 1))) * 3600.0
