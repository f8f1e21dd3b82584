"""A simulated night driving the service: next-visit events, then raws at their times.

The field is simulated with :mod:`skydm.sim` (a focal plane of
``detectors`` detectors sharing each visit's pointing).  The first
``templates`` visits make the templates (ingested, calibrated, warped and
coadded with the pipeline) unless the repository has them already; the
next ``visits`` are the night.  For visit ``i`` of the night, at
``i * cadence`` seconds the next-visit event is sent, and ``exptime``
seconds later (the readout) each detector's raw is ingested and its
arrival notified on Kafka.  ``speedup`` divides every wait, so that a night
at a 30 s cadence can run in compressed wall time; the service's clocks
and timeouts then run in wall seconds.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from skydm.errors import BadValueError, SkydmError
from skydm.prompt.config import PromptConfig, load_config, save_config
from skydm.prompt.events import DetectorPointing, EventProducer, NextVisit, arrival_of

if TYPE_CHECKING:
    from skydm.pipeline.execute import UnitResult
    from skydm.repo import Repository
    from skydm.sim import SurveyConfig
    from skydm.sim.survey import SimVisit

#: Where the simulated raws are written before they are ingested, under the repository.
SIM_DIR = "prompt/simulated"


@dataclass(frozen=True)
class NightConfig:
    """A simulated night.

    Attributes
    ----------
    visits : int
        Visits of the night.
    cadence : float
        Seconds between visits (next-visit events).
    detectors : int
        Detectors of the focal plane.
    size : int
        Pixels on a detector's side.
    stars : int or None
        Stars per detector; by default 200 per 256x256 pixels.
    templates : int
        Visits coadded into the templates (before the night).
    exptime : float
        Exposure time; the raws land this long after their event.
    speedup : float
        Simulated seconds per wall-clock second.
    band : str
        The night's band.
    seed : int
        Random seed of the field.
    missing : tuple of (int, int)
        (night visit index from 1, detector) whose raws never arrive.
    first_visit : int
        Visit number of the first template visit.
    """

    visits: int = 20
    cadence: float = 30.0
    detectors: int = 4
    size: int = 256
    stars: int | None = None
    templates: int = 4
    exptime: float = 30.0
    speedup: float = 1.0
    band: str = "r"
    seed: int = 11
    missing: tuple[tuple[int, int], ...] = ()
    first_visit: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.visits <= 10_000:
            raise BadValueError("visits", self.visits, "1 to 10000")
        if not 0.1 <= self.cadence <= 3600:
            raise BadValueError("cadence", self.cadence, "0.1 to 3600 seconds")
        if not 1 <= self.detectors <= 64:
            raise BadValueError("detectors", self.detectors, "1 to 64")
        if not 64 <= self.size <= 8192:
            raise BadValueError("size", self.size, "64 to 8192 pixels")
        if not 1 <= self.templates <= 100:
            raise BadValueError("templates", self.templates, "1 to 100 visits")
        if not 0.1 <= self.exptime <= 3600:
            raise BadValueError("exptime", self.exptime, "0.1 to 3600 seconds")
        if not (math.isfinite(self.speedup) and 0.01 <= self.speedup <= 10_000):
            raise BadValueError("speedup", self.speedup, "0.01 to 10000")
        for v, d in self.missing:
            if not (1 <= v <= self.visits and 0 <= d < self.detectors):
                raise BadValueError(
                    "missing", f"{v}:{d}",
                    f"VISIT:DETECTOR with VISIT 1..{self.visits}, DETECTOR 0..{self.detectors - 1}",
                )  # fmt: skip

    @property
    def n_stars(self) -> int:
        """Stars per detector."""
        # Enough isolated bright stars on every detector for the PSF matching
        # kernel (fewer left some 256x256 detectors with 1-2 and no difference).
        return (
            self.stars if self.stars is not None else max(20, round(200 * (self.size / 256) ** 2))
        )


@dataclass
class NightReport:
    """What :func:`simulate_night` sent."""

    visits: list[int] = field(default_factory=list)
    detectors: list[int] = field(default_factory=list)
    raws: int = 0
    missing: list[tuple[int, int]] = field(default_factory=list)
    templates_made: bool = False
    seconds: float = 0.0
    grid: tuple[str, ...] = ()


def survey_config(
    night: NightConfig, ra: float = 150.0, dec: float = 2.0, *, first_visit: int | None = None
) -> SurveyConfig:
    """The :class:`skydm.sim.SurveyConfig` of the night's field (templates first)."""
    from skydm.sim import SurveyConfig

    return SurveyConfig(
        seed=night.seed,
        shape=(night.size, night.size),
        n_visits=night.templates + night.visits,
        bands=(night.band,),
        n_stars=night.n_stars,
        n_galaxies=max(5, night.n_stars // 3),
        dither=5.0,
        artefacts=("cosmic_rays",),
        n_transients=max(3, night.detectors * 2),
        n_variables=max(2, night.detectors),
        n_movers=0,
        exptime=night.exptime,
        ra=ra,
        dec=dec,
        n_detectors=night.detectors,
        first_visit=night.first_visit if first_visit is None else first_visit,
    )


def grid_overrides(cfg: SurveyConfig) -> tuple[str, ...]:
    """A sky grid whose one cell, centred on the field, holds the whole focal plane."""
    rows, cols = cfg.focal_plane_shape
    extent_px = max(rows, cols) + 2 * cfg.dither + 40
    size = math.ceil(extent_px * cfg.pixel_scale / 3600.0 * 1000.0) / 1000.0
    return (
        f"ra0={cfg.ra}", f"dec0={cfg.dec}",
        f"cell_size_deg={size}", f"pixel_scale={cfg.pixel_scale}", "margin=20",
    )  # fmt: skip


def preload_radius(cfg: SurveyConfig) -> float:
    """Half-size of the square a preload searches for templates: a detector's
    half-diagonal plus the dither, in degrees (rounded up to 0.001).

    Sized to the simulated detectors: the default (0.2 degrees, an LSST
    detector) would make a preload of a small simulated detector look up
    hundreds of the small grid's cells.
    """
    ny, nx = cfg.shape
    half = (math.hypot(ny, nx) / 2.0 + cfg.dither) * cfg.pixel_scale / 3600.0
    return math.ceil(half * 1000.0) / 1000.0


def _existing(root: Path, band: str) -> tuple[bool, int]:
    """Whether the repository has templates in ``band``, and its highest raw visit."""
    from skydm.repo import Repository
    from skydm.repo.location import CONFIG_NAME

    if not (root / CONFIG_NAME).exists():
        return False, 0
    with Repository.open(root, create=True) as repo:
        has = any(r.data_id.band == band for r in repo.query(dataset_type="coadd"))
        last = max((r.data_id.visit for r in repo.query(dataset_type="raw")), default=0)
    return has, last


def _write_raw(visit: SimVisit, staging: Path) -> Path:
    from skydm.sim.io import write_visit

    try:
        return write_visit(visit, staging, clean=False)
    finally:
        visit.release()  # rendered again, identically, if asked for


@functools.lru_cache(maxsize=2)
def _survey(cfg: SurveyConfig) -> dict[tuple[int, int], SimVisit]:
    from skydm.sim import simulate_survey

    return {(v.visit, v.detector): v for v in simulate_survey(cfg).visits}


def _write_raw_of(cfg: SurveyConfig, key: tuple[int, int], staging: Path) -> Path:
    return _write_raw(_survey(cfg)[key], staging)


def write_raws(visits: Sequence[SimVisit], staging: Path, *, jobs: int = 1) -> list[Path]:
    """Render and write each visit's raw into ``staging``, ``jobs`` at a time; returns the paths.

    A 4096x4096 detector with 10,000 stars takes about 25 s to render (its
    galaxies' convolutions mostly): the four-detector benchmark's templates
    and night render 32 of them, so they go to a process pool.  Each process
    simulates the survey again from its config (deterministic, and cheap
    next to rendering) and renders the visits it is given, so the files are
    those one process would write (a pickled visit would not do: its WCS
    loses its CD matrix on the way).  Each visit's pixels are released once
    written (20 of them at 4096 pixels would take gigabytes).
    """
    if jobs <= 1 or len(visits) <= 1:
        return [_write_raw(v, staging) for v in visits]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cfg = visits[0].config
    keys = [(v.visit, v.detector) for v in visits]
    if any(v.config != cfg for v in visits):  # not one survey's: render them here
        return [_write_raw(v, staging) for v in visits]
    # forkserver: the caller may hold threads (a service, a Kafka client).
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(min(jobs, len(visits)), mp_context=ctx) as pool:
        n = len(keys)
        return list(pool.map(_write_raw_of, [cfg] * n, keys, [staging] * n))


def make_templates(
    root: Path,
    visits: Sequence[SimVisit],
    grid: Sequence[str],
    *,
    jobs: int = 2,
    log: Callable[[str], None] | None = None,
) -> None:
    """Ingest the template visits' raws and coadd them (``calibrate``, ``warp``, ``coadd``).

    Raises
    ------
    SkydmError
        When ingest or a pipeline unit fails.
    """
    from skydm.archive import ingest_files
    from skydm.pipeline.runner import run_pipeline
    from skydm.repo import Repository

    say = log or (lambda _line: None)
    t0 = time.perf_counter()
    staging = root / SIM_DIR / "templates"
    staging.mkdir(parents=True, exist_ok=True)
    paths = write_raws(visits, staging, jobs=jobs)
    say(f"templates: {len(paths)} raws rendered in {time.perf_counter() - t0:.1f} s")
    with Repository.open(root, create=True) as repo:
        report = ingest_files(repo, paths)
    if not report.ok:
        raise SkydmError(f"template raws not ingested: {report.failed[0].line()}")
    # ``coadd`` skips a cell with fewer warps than its min_warps (3): a night
    # with fewer template visits would get no template at all.
    n_visits = len({v.visit for v in visits})
    config = (*grid, f"coadd.min_warps={max(1, min(3, n_visits))}")
    cpu: dict[str, float] = {}

    def ended(result: UnitResult) -> None:
        cpu[result.task] = cpu.get(result.task, 0.0) + result.unit_cpu_s

    t0 = time.perf_counter()
    outcome = run_pipeline(
        ("calibrate", "warp", "coadd"), root, config=config, jobs=jobs, quiet=True,
        on_result=ended,
    )  # fmt: skip
    say(
        f"templates: pipeline {time.perf_counter() - t0:.1f} s wall, CPU s per task: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
    )
    if outcome.report is not None and not outcome.report.ok:
        first = outcome.report.failures[0]
        raise SkydmError(f"templates not made: {first.unit} {first.status}: {first.reason}")
    with Repository.open(root, create=False) as repo:
        if not any(True for _ in repo.query(dataset_type="coadd")):
            raise SkydmError(
                f"templates not made: coadd made no template from {n_visits} visits "
                f"(their warps do not overlap a sky cell); use more template visits"
            )


@dataclass
class PreparedNight:
    """A night ready to send: the survey, templates in place, raws rendered.

    Attributes
    ----------
    survey_config : SurveyConfig
        The simulated field.
    visits : dict
        Night visit number -> ``(SimVisit, raw path or None when withheld)``
        per detector.
    prompt : PromptConfig
        Topics (and the grid saved with the templates).
    templates_made : bool
        Whether the templates were made now.
    grid : tuple of str
        The templates' sky grid (pipeline overrides).
    """

    survey_config: SurveyConfig
    visits: dict[int, list[tuple[SimVisit, Path | None]]]
    prompt: PromptConfig
    templates_made: bool
    grid: tuple[str, ...]


def prepare_night(
    root: str | Path,
    night: NightConfig,
    *,
    config: PromptConfig | None = None,
    jobs: int = 2,
    render: bool = True,
    log: Callable[[str], None] | None = None,
) -> PreparedNight:
    """Make the templates if the repository has none, and render the night's raws.

    A repository that has templates already gets the night under new visit
    numbers (after its last raw).  ``render=False`` only makes the templates.
    """
    from skydm.sim import simulate_survey

    say = log or (lambda _line: None)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    has_templates, last_visit = _existing(root, night.band)
    first = night.first_visit if not has_templates else last_visit + 1 - night.templates
    cfg = survey_config(night, first_visit=max(first, night.first_visit))
    survey = simulate_survey(cfg)
    by_visit: dict[int, list[SimVisit]] = {}
    for v in survey.visits:
        by_visit.setdefault(v.visit, []).append(v)
    numbers = sorted(by_visit)
    template_visits, night_visits = numbers[: night.templates], numbers[night.templates :]
    grid = grid_overrides(cfg)
    prompt = config or load_config(root)
    if not has_templates:
        say(f"making templates from {len(template_visits)} visits")
        make_templates(
            root, [v for n in template_visits for v in by_visit[n]], grid, jobs=jobs, log=say
        )
        prompt = prompt.updated(pipeline=grid, preload_radius_deg=preload_radius(cfg))
        save_config(root, prompt)
    # Raws are rendered and written before the clock starts: a camera has
    # them at readout; rendering them is not part of the night.
    staging = root / SIM_DIR / "night"
    staging.mkdir(parents=True, exist_ok=True)
    missing = set(night.missing)
    files: dict[int, list[tuple[SimVisit, Path | None]]] = {}
    todo: list[SimVisit] = []
    for i, n in enumerate(night_visits if render else [], start=1):
        for v in by_visit[n]:
            if (i, v.detector - cfg.detector) not in missing:
                todo.append(v)
    t0 = time.perf_counter()
    paths = write_raws(todo, staging, jobs=jobs)
    written = {(v.visit, v.detector): path for v, path in zip(todo, paths, strict=True)}
    if todo:
        say(f"night: {len(todo)} raws rendered in {time.perf_counter() - t0:.1f} s")
    for n in night_visits if render else []:
        files[n] = [(v, written.get((v.visit, v.detector))) for v in by_visit[n]]
    return PreparedNight(cfg, files, prompt, not has_templates, grid)


def simulate_night(
    root: str | Path,
    bootstrap: str,
    night: NightConfig,
    *,
    config: PromptConfig | None = None,
    jobs: int = 2,
    log: Callable[[str], None] | None = None,
    prepared: PreparedNight | None = None,
) -> NightReport:
    """Run a simulated night against a service listening on ``bootstrap``.

    Parameters
    ----------
    root : path
        Repository (created if needed; templates made if it has none, see
        :func:`prepare_night`).
    bootstrap : str
        Kafka bootstrap servers.
    night : NightConfig
        The night.
    config : PromptConfig, optional
        Topics; the repository's ``prompt/config.json`` by default.  The
        grid of templates made here is saved into that file.
    jobs : int
        Processes for making the templates.
    log : callable, optional
        Gets a line per visit.
    prepared : PreparedNight, optional
        The night :func:`prepare_night` made already (its raws rendered),
        so that rendering does not happen while a service waits.

    Raises
    ------
    SkydmError
        When a raw cannot be ingested or templates cannot be made.
    BrokerUnavailableError
        When Kafka does not acknowledge an event.
    """
    from skydm.repo import Repository

    say = log or (lambda _line: None)
    root = Path(root)
    producer = EventProducer(bootstrap)
    # Kafka first: an unreachable broker is found in seconds, before the
    # night's templates (minutes) are made.
    producer.ensure_topics([])
    if prepared is None:
        prepared = prepare_night(root, night, config=config, jobs=jobs, log=say)
    prompt = prepared.prompt
    report = NightReport(grid=prepared.grid, templates_made=prepared.templates_made)
    producer.ensure_topics([prompt.next_visit_topic, prompt.raw_topic])
    step = night.cadence / night.speedup
    readout = night.exptime / night.speedup
    t0 = time.time() + 0.5
    actions: list[tuple[float, int, int]] = []  # (when, 0 event / 1 raws, visit)
    for i, n in enumerate(sorted(prepared.visits)):
        actions += [(t0 + i * step, 0, n), (t0 + i * step + readout, 1, n)]
    actions.sort()
    with Repository.open(root, create=True) as repo:
        for when, kind, n in actions:
            time.sleep(max(0.0, when - time.time()))
            dets = prepared.visits[n]
            if kind == 0:
                send_next_visit(producer, prompt, n, dets, night, when)
                report.visits.append(n)
                say(f"next visit {n}: {len(dets)} detectors")
                continue
            for v, path in dets:
                if path is None:
                    report.missing.append((n, v.detector))
                    say(f"raw of visit {n} detector {v.detector} withheld (never arrives)")
            report.raws += land_raws(repo, producer, prompt, dets)
    producer.close()
    first = prepared.visits[min(prepared.visits)]
    report.detectors = [v.detector for v, _ in first]
    report.seconds = time.time() - t0
    return report


def send_next_visit(
    producer: EventProducer,
    prompt: PromptConfig,
    visit: int,
    dets: Sequence[tuple[SimVisit, Path | None]],
    night: NightConfig,
    when: float,
) -> NextVisit:
    """Send the next-visit event of ``visit`` (its detectors ``dets``, exposure at ``when``)."""
    event = _event(visit, dets, night, when)
    producer.send(prompt.next_visit_topic, [event])
    return event


def land_raws(
    repo: Repository,
    producer: EventProducer,
    prompt: PromptConfig,
    dets: Sequence[tuple[SimVisit, Path | None]],
) -> int:
    """Ingest each detector's raw and notify its arrival (withheld ones skipped); returns how many.

    Raises
    ------
    SkydmError
        When a raw cannot be ingested.
    """
    from skydm.archive import ingest_files

    landed = 0
    for _v, path in dets:
        if path is None:
            continue
        result = ingest_files(repo, [path])
        if not result.ok or result.results[0].data_id is None:
            raise SkydmError(f"night raw not ingested: {result.results[0].line()}")
        producer.send(prompt.raw_topic, [arrival_of(result.results[0].data_id, path=str(path))])
        landed += 1
    return landed


def _event(
    visit: int, dets: Sequence[tuple[SimVisit, Path | None]], night: NightConfig, when: float
) -> NextVisit:
    pointings = []
    for v, _path in dets:
        ny, nx = v.config.shape
        ra, dec = v.wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
        pointings.append(DetectorPointing(v.detector, float(ra) % 360.0, float(dec)))
    first = dets[0][0]
    ra0, dec0 = first.wcs.wcs.crval
    return NextVisit(
        first.config.instrument, visit, night.band, float(ra0) % 360.0, float(dec0),
        night.exptime, when, tuple(pointings),
    )  # fmt: skip
