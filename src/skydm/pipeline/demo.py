"""The end-to-end demo: one small simulated survey through the pipeline framework.

simulate -> ingest (lossless) -> ``run drp`` on the template epochs (calibrate,
warp, CompareWarp coadd, Object table) -> ``run ap`` on the later epochs
(calibrate, difference imaging, DIA sources, association and alerts,
DiaObject/DiaSource tables).  Every product lands in one repository, so that
``skydm verify``, ``skydm provenance``, ``skydm serve`` and ``skydm query``
work on it afterwards.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from skydm.errors import SkydmError
from skydm.pipeline.graph import Graph
from skydm.pipeline.pipelines import BUILTIN
from skydm.pipeline.runner import RunOutcome, run_pipeline
from skydm.progress import Progress
from skydm.repo import Repository


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
    jobs: int | None = None,
) -> DemoReport:
    """Simulate a small survey and run the built-in pipelines on it in ``repo_dir``.

    The raws are ingested, then ``skydm run drp`` on the first ``n_template``
    visits makes calexps, warps, the coadd (the template) and the Object
    table, and ``skydm run ap`` on the later visits makes differences, DIA
    sources, alerts and the DiaObject/DiaSource tables.

    Parameters
    ----------
    repo_dir : path
        The repository (created if needed; an existing demo is reused: its
        raws are found archived and finished units are not redone).
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
    jobs : int, optional
        Worker processes (default: the CPU count).

    Raises
    ------
    SkydmError
        When a unit of either pipeline fails (the message names it).
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

    with Repository.open(root, create=True) as repo:
        ingest = ingest_files(repo, raws, progress=Progress("ingest", len(raws), quiet=quiet))
        for res in ingest.results:
            if res.ref is not None:
                report.raw_bytes += res.path.stat().st_size
                report.stored_bytes += res.ref.size
        visits = sorted(res.data_id.visit for res in ingest.results if res.data_id is not None)
    t = _step(report, "ingest", t)

    last_template = visits[n_template - 1]
    grid = _grid(survey.fields[0], cfg)
    # Every template epoch goes into the coadd, even when there are only 2.
    drp_config = [*grid, f"coadd.min_warps={min(n_template, 3)}"]
    drp = _checked(
        run_pipeline(
            _drp_tasks(), root, where=f"visit <= {last_template}", config=drp_config,
            quiet=quiet, jobs=jobs,
        )
    )  # fmt: skip
    report.template_visits, report.skycell = n_template, _only_cell(drp.graph)
    t = _step(report, "drp", t)

    ap_config = [*grid, *([f"ap.bootstrap={bootstrap}"] if bootstrap else [])]
    ap = _checked(
        run_pipeline(
            "ap", root, where=f"visit > {last_template}", config=ap_config, quiet=quiet, jobs=jobs
        )
    )
    if not ap.graph.by_task()["diffim"]:
        reasons = "; ".join(f"{n} x {why}" for why, n in sorted(ap.graph.skipped.items()))
        raise SkydmError(f"{root}: no visit could be differenced: {reasons or 'no calexps'}")
    t = _step(report, "ap", t)

    with Repository.open(root) as repo:
        sources = _summarise(repo, report, last_template)
        for name in ("dia_catalog", "object_catalog"):
            for ref in repo.query(dataset_type=name):
                doc = json.loads(repo.get_bytes(name, ref.data_id))
                report.catalog_tables.update(doc["tables"])
    truth = survey.truth
    transients = truth[truth["kind"] == "transient"]
    report.transients_injected = len(transients)
    if len(sources) and len(transients):
        found = 0
        for row in transients:
            d = _sep_arcsec(sources["ra"], sources["dec"], row["ra"], row["dec"])
            found += bool(np.any(d < 1.0))
        report.transients_found = found
    _step(report, "summary", t)
    return report


def _drp_tasks() -> tuple[str, ...]:
    """The drp tasks; Object measurement only where ``skydm.drp`` is installed."""
    import importlib.util

    tasks = BUILTIN["drp"][1]
    if importlib.util.find_spec("skydm.drp") is None:
        return tuple(t for t in tasks if t not in ("measure", "object_catalog"))
    return tasks


def _grid(centre: tuple[float, float], cfg: Any) -> list[str]:
    """A sky grid with one cell holding the whole (dithered) field."""
    side = (max(cfg.shape) + 2 * cfg.dither) * cfg.pixel_scale / 3600.0
    return [
        f"ra0={centre[0]}",
        f"dec0={centre[1]}",
        f"cell_size_deg={side:.6f}",
        f"pixel_scale={cfg.pixel_scale}",
        "margin=20",
    ]


def _checked(outcome: RunOutcome) -> RunOutcome:
    report = outcome.report
    if report is not None and report.failures:
        first = report.failures[0]
        raise SkydmError(
            f"{len(report.failures)} units of {report.pipeline} failed, first {first.unit}: "
            f"{first.reason} (record: {report.record})"
        )
    return outcome


def _only_cell(graph: Graph) -> str:
    cells = {u.data_id.skycell for u in graph.units if u.task == "coadd"}
    return ",".join(sorted(c for c in cells if c is not None))


def _summarise(repo: Repository, report: DemoReport, last_template: int) -> Table:
    """Fill the report from the ap outputs; returns the unflagged DIA sources."""
    tables = []
    for ref in repo.query(dataset_type="alert_summary"):
        if ref.data_id.visit <= last_template:
            continue
        doc = json.loads(repo.get_bytes("alert_summary", ref.data_id))
        report.diff_visits += 1
        report.dia_sources += int(doc.get("n_sources") or 0)
        report.alerts += int(doc.get("n_alerts") or 0)
        if doc.get("archive"):
            report.alert_archives.append(repo.root / doc["archive"])
        if doc.get("streamed") is not None:
            report.streamed = (report.streamed or 0) + int(doc["streamed"])
            report.stream_pending += int(doc.get("pending") or 0)
        src = Table.read(io.BytesIO(repo.get_bytes("dia_src", ref.data_id)))
        if len(src):
            tables.append(src[~src["flagged"]])
    return vstack(tables, metadata_conflicts="silent") if tables else Table()


DEMO_MARKER = ".skydm-demo"


def _prepare_root(root: Path) -> None:
    """Claim ``root`` for the demo.

    A directory that holds something other than an earlier demo is refused, so
    that the demo never touches a real repository.  An earlier demo is kept
    whole: its raws are found archived, and the pipelines redo only units
    whose outputs are missing or stale (the APDB and catalogs go with them).
    """
    from skydm.errors import ConflictError

    marker = root / DEMO_MARKER
    if root.exists() and any(root.iterdir()) and not marker.exists():
        raise ConflictError(
            f"{root}: exists and is not a skydm demo repository; "
            "give the demo a new directory with --repo"
        )
    root.mkdir(parents=True, exist_ok=True)
    marker.touch()


def _sep_arcsec(ra: Any, dec: Any, ra0: float, dec0: float) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    r0, d0 = math.radians(ra0), math.radians(dec0)
    cos = np.sin(dec) * math.sin(d0) + np.cos(dec) * math.cos(d0) * np.cos(ra - r0)
    return np.degrees(np.arccos(np.clip(cos, -1, 1))) * 3600.0
