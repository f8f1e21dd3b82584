"""One detector of one visit, in a worker process: preload on the event, process on the raw.

The service runs two jobs per detector-visit (in a worker process of its
own pool, or as Dask tasks), so that no worker sits idle waiting for a raw:

1. :func:`preload_detector`, on the next-visit event: the templates of the
   sky cells around the detector's expected centre are read into this
   process's template cache, and the DIA objects there with their history
   are read from the APDB (warming its pages; association reads them again
   under its lock, since a neighbouring detector may have changed them
   meanwhile).  The worker is then free for other detectors.
2. :func:`process_detector`, once the raw has landed: ``calibrate``; the
   template that covers the calexp best (:mod:`skydm.prompt.templates`,
   from the cache when this process preloaded it, read otherwise);
   ``diffim``; ``ap`` (association, forced photometry, packets, archive,
   outbox) under the association locks of the detector's sky cells; the
   outbox drained to Kafka under the outbox lock, so that two workers never
   send the same message; ``alerts`` is stamped once every message of the
   detector is acknowledged.

Every dataset goes from task to task in memory (:mod:`skydm.prompt.handoff`)
and is written to the repository, with provenance as ``skydm run ap``
writes it, only after the alerts are acknowledged (stamp ``export``): at
once, or, when the service defers it (``defer_export``), held in this
process (state ``alerted`` reported) until the service sends the
detector's :func:`export_detector`, so that the worker first processes the
detectors queued behind it.
Everything is idempotent: a detector-visit retried after its worker died
redoes what was not committed (outputs are replaced; the APDB keeps a visit
only once; the outbox keeps one row per diaSourceId and topic).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skydm.errors import UserError, require_extra
from skydm.pipeline.task import DatasetKey, Task
from skydm.prompt.config import PromptConfig
from skydm.prompt.handoff import Handoff, HandoffIO
from skydm.prompt.locks import file_lock, region_cells, region_lock
from skydm.prompt.timing import TimingStore, now
from skydm.repo import DataId, Repository

if TYPE_CHECKING:
    from skydm.alerts.transport import KafkaTransport
    from skydm.image import Exposure

OUTBOX_LOCK = "prompt/locks/outbox.lock"


@dataclass(frozen=True)
class DetectorJob:
    """One detector-visit for a worker.

    Attributes
    ----------
    root : str
        Repository root.
    instrument, visit, detector, band : str, int, int, str
        The detector-visit.
    ra, dec : float
        Expected centre of the detector's footprint (from the event).
    deadline : float
        Unix time after which a raw that has not arrived is given up.
    bootstrap : str
        Kafka bootstrap servers for the alerts; empty for archives only.
    config : PromptConfig
        The service's config.
    """

    root: str
    instrument: str
    visit: int
    detector: int
    band: str
    ra: float
    dec: float
    deadline: float
    bootstrap: str
    config: PromptConfig

    @property
    def key(self) -> tuple[str, int, int]:
        """(instrument, visit, detector)."""
        return (self.instrument, self.visit, self.detector)

    @property
    def data_id(self) -> DataId:
        """The detector-visit's data ID."""
        return DataId(self.instrument, detector=self.detector, visit=self.visit, band=self.band)


@dataclass(frozen=True)
class DetectorOutcome:
    """How a detector-visit ended in a worker."""

    key: tuple[str, int, int]
    state: str
    attempt: int
    n_sources: int | None = None
    n_alerts: int | None = None
    error: str | None = None
    #: Whether trying again may help (a fault), or not (bad data: a user error).
    retry: bool = True


@dataclass(frozen=True)
class Preloaded:
    """What a preload read: the templates now in this process's cache, the DIA objects seen."""

    template_keys: tuple[DatasetKey, ...]
    n_objects: int


#: What a detector-visit imports; a worker imports it on starting, before any
#: event, so that no detector's latency pays for it (seconds of a cold start).
WARM_MODULES = (
    "skydm.pipeline.pipelines", "skydm.pipeline.tasks.ap", "skydm.pipeline.tasks.visit",
    "skydm.pipeline.calibrate", "skydm.diffim.subtract", "skydm.diffim.measure",
    "skydm.alerts.produce", "skydm.alerts.transport", "skydm.ap.apdb", "skydm.ap.forced",
    "skydm.reliability.model", "astroscrappy", "confluent_kafka", "confluent_kafka.admin",
)  # fmt: skip


def warm_up(threads: int | None = None) -> None:
    """Import what processing a detector needs and compile its kernels (at a worker's start).

    Parameters
    ----------
    threads : int, optional
        Limit this process's BLAS and OpenMP thread pools to so many
        threads (:attr:`PromptConfig.worker_threads`); ``None`` leaves them
        as they are.
    """
    import importlib
    import importlib.util

    for name in WARM_MODULES:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            try:
                importlib.import_module(name)
            except ImportError:  # an optional extra: the detector reports it if needed
                continue
    if threads is not None:
        limit_threads(threads)
    from skydm.errors import SkydmError

    with suppress(SkydmError, ImportError):  # parsed once per process, then cached
        from skydm.alerts.schema import load_schema

        load_schema()
    # The compiled kernels, so that the first detector's latency holds no
    # JIT compilation or cache loading (skydm.prompt.kernels).
    with suppress(ImportError):  # an optional extra: the detector reports it if needed
        from skydm.prompt.kernels import warm_kernels

        warm_kernels()


def limit_threads(threads: int) -> None:
    """Limit the BLAS and OpenMP pools this process has loaded to ``threads`` threads.

    For the life of the process (a worker's): OpenBLAS and OpenMP start a
    thread per core by default, so two workers on two cores would run four
    threads of pixel work (spinning while they wait for each other).  The
    libraries are loaded by :data:`WARM_MODULES` first: a pool is limited
    only once loaded.
    """
    threadpoolctl = require_extra("threadpoolctl", "calibrate")
    threadpoolctl.threadpool_limits(limits=int(threads))


def apdb_location(config: PromptConfig, root: str | Path) -> str | Path:
    """The APDB of the service: the configured URL or ``apdb.sqlite3`` in the repository."""
    return config.apdb or Path(root) / "apdb.sqlite3"


@functools.lru_cache(maxsize=8)
def _tasks(config: PromptConfig) -> dict[str, Task]:
    """The detector's three tasks, made once per process and config (tasks keep
    no state between units; parsing the pipeline and its configs is per-detector
    overhead otherwise)."""
    from skydm.pipeline.pipelines import load_pipeline
    from skydm.pipeline.tasks.ap import ApConfig, ApTask

    pipe = load_pipeline(("calibrate", "diffim"), config.pipeline)
    # Alerts go to Kafka from the outbox, under its lock (step 5), not from
    # inside the task: two workers then never send the same message.
    ap = ApTask(ApConfig(apdb=str(config.apdb), radius_arcsec=config.radius_arcsec, bootstrap=""))
    return {"calibrate": pipe.task("calibrate"), "diffim": pipe.task("diffim"), "ap": ap}


#: This process's templates, most recently used last (``config.template_cache`` kept).
_TEMPLATES: collections.OrderedDict[DatasetKey, Exposure] = collections.OrderedDict()
#: Detector-visits this process preloaded (what it read), most recent last.
_PRELOADED: collections.OrderedDict[tuple[str, int, int], Preloaded] = collections.OrderedDict()
_PRELOADED_KEEP = 256


def cached_template(repo: Repository, key: DatasetKey, keep: int) -> Exposure | None:
    """The template of ``key`` from this process's cache, or read and cached (``None``: absent)."""
    found = _TEMPLATES.get(key)
    if found is not None:
        _TEMPLATES.move_to_end(key)
        return found
    if repo.find(key.dataset_type, key.data_id) is None:
        return None
    found = _TEMPLATES[key] = repo.get_exposure(key.dataset_type, key.data_id)
    # Shared by every detector this process runs: a task writing into it
    # would corrupt the next detector's template, so such a write raises.
    for arr in (found.image, found.variance, found.mask):
        if arr is not None:
            arr.setflags(write=False)
    while len(_TEMPLATES) > keep:
        _TEMPLATES.popitem(last=False)
    return found


def _template_key(job: DetectorJob, diffim: Task, cell_id: str) -> DatasetKey:
    template_type = diffim.config.template_type  # type: ignore[attr-defined]
    return DatasetKey(template_type, DataId(job.instrument, band=job.band, skycell=cell_id))


def preload(repo: Repository, job: DetectorJob, diffim: Task) -> Preloaded:
    """Read the templates around the detector's expected centre and its DIA objects."""
    from skydm.ap.apdb import Apdb
    from skydm.ap.sources import now_mjd
    from skydm.prompt.templates import preload_cells

    grid = diffim.config.grid()  # type: ignore[attr-defined]
    radius = job.config.preload_radius_deg
    keys = []
    for cell in preload_cells(grid, job.ra, job.dec, radius):
        key = _template_key(job, diffim, cell.id)
        if cached_template(repo, key, job.config.template_cache) is not None:
            keys.append(key)
    half_ra = radius / max(0.01, abs(_cos_deg(job.dec)))
    apdb = Apdb(apdb_location(job.config, job.root))
    try:
        objects = apdb.objects_in_region(
            [(max(0.0, job.ra - half_ra), min(360.0, job.ra + half_ra))],
            (job.dec - radius, job.dec + radius),
        )
        ids = [int(o["diaObjectId"]) for o in objects]
        if ids:
            apdb.read_history(ids, since=now_mjd() - 365.0)
    finally:
        apdb.close()
    return Preloaded(tuple(keys), len(objects))


def _cos_deg(x: float) -> float:
    import math

    return math.cos(math.radians(x))


def wait_for_raw(repo: Repository, data_id: DataId, deadline: float, poll: float) -> bool:
    """Whether the raw is registered by ``deadline`` (polling the registry)."""
    while True:
        if repo.find("raw", data_id) is not None:
            return True
        if time.time() >= deadline:
            return False
        time.sleep(min(poll, max(0.0, deadline - time.time())) or poll)


def preload_detector(job: DetectorJob) -> DetectorOutcome:
    """Preload one detector-visit into this process (on its next-visit event); stamps ``preload``.

    A preload that fails is reported (state ``failed``, not retried) but
    leaves the detector-visit waiting: its processing reads what it needs.
    """
    store = TimingStore(job.root)
    try:
        with Repository.open(job.root, create=False) as repo:
            pre = preload(repo, job, _tasks(job.config)["diffim"])
        _PRELOADED[job.key] = pre
        while len(_PRELOADED) > _PRELOADED_KEEP:
            _PRELOADED.popitem(last=False)
        store.stamp(*job.key, "preload", now())
        return DetectorOutcome(job.key, "preloaded", 0, n_sources=pre.n_objects)
    except Exception as exc:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return DetectorOutcome(job.key, "failed", 0, error=f"preload: {text}", retry=False)
    finally:
        store.close()


@dataclass
class _Held:
    """A detector whose alerts are out and whose outputs wait in this process for export."""

    job: DetectorJob
    handoff: Handoff
    attempt: int
    n_sources: int
    n_alerts: int


#: Detectors this process holds un-exported (``defer_export``), oldest first.
#: Lost if the process dies: the service then computes them again.
_HELD: collections.OrderedDict[tuple[str, int, int], _Held] = collections.OrderedDict()


def process_detector(job: DetectorJob, *, defer_export: bool = False) -> DetectorOutcome:
    """Calibrate, difference, associate and alert one detector whose raw has landed.

    Preloads first when this process has not (a retry elsewhere, a
    restarted service).  Errors are recorded in the timing table and
    returned, never raised (a worker that dies is noticed by the service).

    Parameters
    ----------
    job : DetectorJob
        The detector-visit.
    defer_export : bool
        Hold the outputs in this process once the alerts are acknowledged
        and return the state ``alerted`` (the row stays ``running``), for a
        later :func:`export_detector` in this process; write them at once
        (state ``done``) otherwise.
    """
    store = TimingStore(job.root)
    inst, visit, det = job.key
    attempt = store.start_attempt(inst, visit, det, os.getpid())
    try:
        outcome = _process(job, store, attempt, defer_export=defer_export)
    except Exception as exc:  # the service decides whether to try again
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        store.finish(inst, visit, det, "failed", error=text)
        # Bad data fails the same way every time; anything else may be transient.
        retry = not isinstance(exc, UserError)
        outcome = DetectorOutcome(job.key, "failed", attempt, error=text, retry=retry)
    finally:
        store.close()
    return outcome


def association_cells(exposure: Exposure, config: PromptConfig) -> list[str]:
    """The lock cells of a detector's association: its footprint plus the margin
    within which :func:`skydm.alerts.produce.produce_visit_alerts` reads DIA objects."""
    from skydm.ap.forced import visit_region

    margin = max(5.0, 2.0 * config.radius_arcsec)
    ra_ranges, dec_range = visit_region(exposure, margin_arcsec=margin)
    return region_cells(ra_ranges, dec_range, config.lock_cell_deg)


def _choose_template(
    repo: Repository, job: DetectorJob, diffim: Task, calexp: Exposure
) -> tuple[DatasetKey, Exposure]:
    """The template covering the calexp best (:func:`skydm.prompt.templates.choose_template`)."""
    from skydm.prompt.templates import choose_template

    if calexp.wcs is None:
        raise UserError(f"calexp of {job.data_id} has no WCS: the raw could not be placed")
    grid = diffim.config.grid()  # type: ignore[attr-defined]
    cells = grid.cells_overlapping(calexp.wcs, calexp.image.shape)
    keep = max(job.config.template_cache, len(cells))

    def load(cell_id: str) -> Exposure | None:
        return cached_template(repo, _template_key(job, diffim, cell_id), keep)

    choice = choose_template(
        calexp, cells, load,
        min_coverage=job.config.template_min_coverage,
        what=f"visit {job.visit} detector {job.detector} band {job.band}",
        template_type=diffim.config.template_type,  # type: ignore[attr-defined]
    )  # fmt: skip
    key = _template_key(job, diffim, choice.cell_id)
    template = load(choice.cell_id)
    assert template is not None  # chosen among those that load
    return key, template


def _process(
    job: DetectorJob, store: TimingStore, attempt: int, *, defer_export: bool
) -> DetectorOutcome:
    inst, visit, det = job.key
    tasks = _tasks(job.config)
    data_id = job.data_id
    with Repository.open(job.root, create=False) as repo:
        # The service sends the job once the raw is registered; the wait only
        # covers a notification read before the registry shows the raw.
        if not wait_for_raw(repo, data_id, job.deadline, job.config.poll_s):
            waited = job.deadline - store_event_time(store, job)
            error = f"no raw arrived within {waited:.0f} s of the event (timed out)"
            store.finish(inst, visit, det, "timed_out", error=error)
            return DetectorOutcome(job.key, "timed_out", attempt, error=error)
        store.stamp(inst, visit, det, "start", now())
        if _PRELOADED.pop(job.key, None) is None:
            # Not preloaded here (another worker did, or none): read it now.
            preload(repo, job, tasks["diffim"])
            store.stamp(inst, visit, det, "preload", now(), keep=True)
        run_id = f"prompt-v{visit}"
        # Every dataset goes from task to task in memory and is written only
        # after the alerts (skydm.prompt.handoff), as Rubin's Prompt
        # Processing exports its local butler's outputs afterwards.
        skip = frozenset() if job.config.keep_diff_template else frozenset({"diff_template"})
        handoff = Handoff(skip=skip)

        calexp_key = DatasetKey("calexp", data_id)
        _run(tasks["calibrate"], repo, run_id, handoff, [DatasetKey("raw", data_id)], [calexp_key])
        store.stamp(inst, visit, det, "calibrate", now())

        calexp = handoff.objects[calexp_key]
        template_key, handoff.objects[template_key] = _choose_template(
            repo, job, tasks["diffim"], calexp
        )
        diff_outputs = [DatasetKey(t, data_id) for t in ("diff", "dia_src", "diff_template")]
        _run(tasks["diffim"], repo, run_id, handoff, [calexp_key, template_key], diff_outputs)
        store.stamp(inst, visit, det, "diffim", now())

        apdb_url = apdb_location(job.config, job.root)
        cells = association_cells(calexp, job.config)
        summary_key = DatasetKey("alert_summary", data_id)
        with region_lock(apdb_url, cells):
            _run(tasks["ap"], repo, run_id, handoff, [calexp_key, *diff_outputs], [summary_key])
        store.stamp(inst, visit, det, "association", now())
        summary = json.loads(handoff.bytes_of(summary_key))

        if job.bootstrap:
            _stream(job)
        store.stamp(inst, visit, det, "alerts", now())
        n_sources = int(summary.get("n_sources") or 0)
        n_alerts = summary.get("n_alerts")
        n_alerts = n_sources if n_alerts is None else int(n_alerts)
        if defer_export:
            # The row stays running until export_detector: a worker that dies
            # meanwhile has the detector computed again, as below.
            handoff.release()
            _HELD[job.key] = _Held(job, handoff, attempt, n_sources, n_alerts)
            return DetectorOutcome(
                job.key, "alerted", attempt, n_sources=n_sources, n_alerts=n_alerts
            )
        # A worker killed before (or during) this computes the detector again
        # on its retry: the APDB keeps the association single, the outbox the
        # alerts, and each file is registered only once written.
        handoff.export(repo)
        store.stamp(inst, visit, det, "export", now())
    store.finish(inst, visit, det, "done", n_sources=n_sources, n_alerts=n_alerts)
    return DetectorOutcome(job.key, "done", attempt, n_sources=n_sources, n_alerts=n_alerts)


def export_detector(job: DetectorJob) -> DetectorOutcome:
    """Write the outputs this process holds for ``job`` (a deferred export); stamps ``export``.

    Errors are recorded and returned as :func:`process_detector`'s are; a
    detector this process does not hold (it was started again) fails with
    ``retry``: the service computes it again.
    """
    held = _HELD.pop(job.key, None)
    inst, visit, det = job.key
    if held is None:
        return DetectorOutcome(
            job.key, "failed", 0, retry=True,
            error=f"the outputs of visit {visit} detector {det} are not held by worker "
            f"process {os.getpid()} (it was started again); computing the detector again",
        )  # fmt: skip
    store = TimingStore(job.root)
    try:
        with Repository.open(job.root, create=False) as repo:
            held.handoff.export(repo)
        store.stamp(inst, visit, det, "export", now())
        store.finish(inst, visit, det, "done", n_sources=held.n_sources, n_alerts=held.n_alerts)
        return DetectorOutcome(
            job.key, "done", held.attempt, n_sources=held.n_sources, n_alerts=held.n_alerts
        )
    except Exception as exc:  # the service computes it again (a fault, not bad data)
        text = " ".join(f"export: {type(exc).__name__}: {exc}".split())
        store.finish(inst, visit, det, "failed", error=text)
        return DetectorOutcome(job.key, "failed", held.attempt, error=text, retry=True)
    finally:
        store.close()


def export_held() -> None:
    """Export every detector this process holds (a worker told to stop), oldest first."""
    while _HELD:
        export_detector(next(iter(_HELD.values())).job)


def store_event_time(store: TimingStore, job: DetectorJob) -> float:
    """When the detector-visit's event was received (the deadline's origin)."""
    row = store.row(*job.key)
    return row.stamps.get("event", job.deadline) if row is not None else job.deadline


def _run(
    task: Task,
    repo: Repository,
    run_id: str,
    handoff: Handoff,
    inputs: list[DatasetKey],
    outputs: list[DatasetKey],
) -> None:
    unit = task.unit(outputs[0].data_id, inputs, outputs)
    task.run(unit, HandoffIO(repo, unit, task.config, run_id, handoff))


#: One Kafka producer per worker process and bootstrap, reused by every
#: detector the process runs: a new idempotent producer costs about 0.5 s
#: (connections, producer id) before its first message is acknowledged, and
#: a detector pays it under the outbox lock, so the workers queue behind it.
_TRANSPORTS: dict[str, KafkaTransport] = {}
_TRANSPORTS_LOCK = threading.Lock()


def _transport(bootstrap: str) -> KafkaTransport:
    """This process's producer for ``bootstrap`` (made on first use)."""
    from skydm.alerts.transport import KafkaTransport

    with _TRANSPORTS_LOCK:
        found = _TRANSPORTS.get(bootstrap)
        if found is None:
            found = _TRANSPORTS[bootstrap] = KafkaTransport(bootstrap)
        return found


def _drop_transport(bootstrap: str) -> None:
    """Forget (and close) this process's producer, so that the next detector makes a new one."""
    with _TRANSPORTS_LOCK:
        found = _TRANSPORTS.pop(bootstrap, None)
    if found is not None:
        with suppress(Exception):  # it failed already; a new one replaces it
            found.close()


def close_transports() -> None:
    """Flush and close this process's producers (a worker calls this when it stops)."""
    with _TRANSPORTS_LOCK:
        found = list(_TRANSPORTS.values())
        _TRANSPORTS.clear()
    for transport in found:
        with suppress(Exception):
            transport.close()


def _stream(job: DetectorJob) -> dict[str, Any]:
    """Send every pending outbox message (this detector's among them) under the outbox lock."""
    from skydm.alerts.outbox import Outbox
    from skydm.alerts.transport import stream_outbox

    root = Path(job.root)
    with file_lock(root / OUTBOX_LOCK):
        box = Outbox(root / "alerts" / "outbox.sqlite3")
        transport = _transport(job.bootstrap)
        ok = False
        try:
            result = stream_outbox(box, transport, retry_for=30.0)
            ok = not result.pending and not result.errors
        finally:
            box.close()
            if not ok:
                # A producer that met an error may be in a state of its own
                # (an idempotent producer's fatal error): the next detector
                # starts from a new one, as a fresh worker would.
                _drop_transport(job.bootstrap)
    if result.pending:
        raise RuntimeError(
            f"{result.pending} alerts not acknowledged by Kafka at {job.bootstrap} "
            f"({'; '.join(result.errors[:1])}); they stay in the outbox"
        )
    return {"delivered": result.delivered}
