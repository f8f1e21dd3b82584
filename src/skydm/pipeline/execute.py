"""Running a graph on a local process pool, with retries, isolation and a record.

The scheduler loop submits a unit when every unit it reads from has
succeeded (a :class:`~concurrent.futures.ProcessPoolExecutor` from
:func:`skydm.pipeline.executors.open_executor`, or any
:class:`~concurrent.futures.Executor`); Dask runs the whole graph at once
instead (:mod:`skydm.pipeline.dask_run`), with the same :func:`run_unit` on
its workers.  Workers open the repository themselves and read and write it
directly; only unit descriptions and small results travel.  A failed unit is
recorded with its reason and blocks only what depends on it; the run ends
with every unit accounted for, and a JSON record of it under
``<repo>/pipeline/runs/``.
"""

from __future__ import annotations

import heapq
import json
import secrets
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from skydm.errors import BadValueError, SkydmError
from skydm.pipeline.graph import Graph
from skydm.pipeline.task import Task, WorkUnit
from skydm.progress import Progress
from skydm.repo import Repository
from skydm.repo.atomic import atomic_write_bytes

Status = Literal["ok", "failed", "blocked"]


@dataclass
class UnitResult:
    """How one unit ended.

    Attributes
    ----------
    unit : str
        The unit's id.
    task : str
        Its task.
    status : str
        ``ok``, ``failed`` (its reason in ``reason``) or ``blocked`` (an
        input's unit failed).
    reason : str
        Why it failed or was blocked.
    attempts : int
        Tries made (1 + retries used).
    task_s : float
        Seconds inside the task body (reading, computing, writing).
    unit_s : float
        Seconds in the worker for the whole unit (opening, provenance...).
    task_cpu_s, unit_cpu_s : float
        The same in CPU seconds of the worker process (its threads too):
        what a loaded machine does not inflate as it does wall-clock time.
    """

    unit: str
    task: str
    status: Status
    reason: str = ""
    attempts: int = 0
    task_s: float = 0.0
    unit_s: float = 0.0
    task_cpu_s: float = 0.0
    unit_cpu_s: float = 0.0


@dataclass
class RunReport:
    """What a run did."""

    run_id: str
    pipeline: str
    results: list[UnitResult] = field(default_factory=list)
    skipped_done: int = 0
    wall_s: float = 0.0
    #: Seconds the scheduler loop spent outside waiting for workers.
    scheduler_s: float = 0.0
    record: Path | None = None

    @property
    def failures(self) -> list[UnitResult]:
        """Units that failed or were blocked."""
        return [r for r in self.results if r.status != "ok"]

    @property
    def ok(self) -> bool:
        """Whether every unit succeeded."""
        return not self.failures


def new_run_id(pipeline: str) -> str:
    """A unique run id: pipeline, UTC time and a random suffix."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{pipeline}-{stamp}-{secrets.token_hex(3)}"


# -- the worker side -------------------------------------------------------
_REPOS: dict[str, Repository] = {}


def open_repo(root: str) -> Repository:
    """The repository at ``root``, opened once per worker process and kept."""
    repo = _REPOS.get(root)
    if repo is None:
        repo = _REPOS[root] = Repository.open(root, create=False)
    return repo


def run_unit(root: str, task: Task, unit: WorkUnit, run_id: str, retries: int) -> UnitResult:
    """Run one unit in a worker: open the repository (once per process), run, record.

    Never raises for a failure of the unit itself: it is returned with its
    reason, so that one bad unit cannot stop the others.
    """
    from skydm.pipeline.io import UnitIO

    start, cpu_start = time.perf_counter(), time.process_time()
    result = UnitResult(unit.id, unit.task, "failed")
    for attempt in range(1, retries + 2):
        result.attempts = attempt
        try:
            io = UnitIO(open_repo(root), unit, task.config, run_id)
            t0, c0 = time.perf_counter(), time.process_time()
            task.run(unit, io)
            result.task_s = time.perf_counter() - t0
            result.task_cpu_s = time.process_time() - c0
            missing = set(unit.outputs) - {_key(r) for r in io.written}
            if missing:
                raise RuntimeError(f"the task wrote no {', '.join(sorted(map(str, missing)))}")
            result.status, result.reason = "ok", ""
            break
        except SkydmError as exc:
            result.reason = str(exc)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result.reason = (
                f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
            )
    result.unit_s = time.perf_counter() - start
    result.unit_cpu_s = time.process_time() - cpu_start
    return result


def _key(ref: object) -> object:
    from skydm.pipeline.task import DatasetKey

    return DatasetKey(ref.dataset_type, ref.data_id)  # type: ignore[attr-defined]


# -- the scheduler loop ------------------------------------------------------
def execute(
    graph: Graph,
    units: list[WorkUnit],
    repo: Repository,
    executor: Executor,
    *,
    run_id: str,
    retries: int = 0,
    skipped_done: int = 0,
    progress: Progress | None = None,
    on_result: Callable[[UnitResult], None] | None = None,
) -> RunReport:
    """Run ``units`` (from :func:`skydm.pipeline.graph.plan`) on ``executor``.

    A unit is submitted once every unit it reads from has succeeded (and,
    for serial tasks, its predecessor has ended); a failure blocks its
    dependents only.

    Returns
    -------
    RunReport
        Every unit's result; also written to ``<repo>/pipeline/runs/<run_id>.json``.
    """
    if retries < 0:
        raise BadValueError("--retries", retries, "0 or more")
    start = time.perf_counter()
    tasks = {t.name: t for t in graph.pipeline.tasks}
    wanted = {u.id: u for u in units}
    deps = {uid: graph.deps[uid] & wanted.keys() for uid in wanted}
    after = {uid: graph.after[uid] for uid in wanted if graph.after.get(uid) in wanted}
    report = RunReport(run_id, graph.pipeline.name, skipped_done=skipped_done)
    ended: dict[str, Status] = {}
    running: dict[Future[UnitResult], str] = {}
    root = str(repo.root)
    order = [u.id for u in units]
    rank = {uid: i for i, uid in enumerate(order)}
    # Counts of what each unit still waits for, and who waits for whom, so
    # that each completion costs only its own children (graphs of 100k units).
    hard_left = {uid: len(deps[uid]) for uid in order}
    soft_left = {uid: int(uid in after) for uid in order}
    hard_children: dict[str, list[str]] = defaultdict(list)
    soft_children: dict[str, list[str]] = defaultdict(list)
    for uid in order:
        for parent in deps[uid]:
            hard_children[parent].append(uid)
        if uid in after:
            soft_children[after[uid]].append(uid)
    ready = [rank[uid] for uid in order if not hard_left[uid] and not soft_left[uid]]
    heapq.heapify(ready)  # submitted in graph order: serial tasks stay in data-ID order

    def finish(result: UnitResult) -> None:
        ended[result.unit] = result.status
        report.results.append(result)
        if on_result is not None:
            on_result(result)
        if progress is not None:
            progress.advance(note=f"{result.unit} {result.status}")
        for child in soft_children[result.unit]:
            soft_left[child] -= 1
            if not soft_left[child] and not hard_left[child] and child not in ended:
                heapq.heappush(ready, rank[child])
        for child in hard_children[result.unit]:
            if child in ended:
                continue
            if result.status != "ok":
                reason = f"input from {result.unit} failed"
                finish(UnitResult(child, wanted[child].task, "blocked", reason))
                continue
            hard_left[child] -= 1
            if not hard_left[child] and not soft_left[child]:
                heapq.heappush(ready, rank[child])

    waited = 0.0
    while ready or running:
        while ready:
            uid = order[heapq.heappop(ready)]
            if uid in ended:
                continue
            unit = wanted[uid]
            try:
                fut = executor.submit(run_unit, root, tasks[unit.task], unit, run_id, retries)
            except BrokenProcessPool:
                finish(UnitResult(uid, unit.task, "failed", "the worker pool died"))
                continue
            running[fut] = uid
        if not running:
            continue
        paused = time.perf_counter()
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        waited += time.perf_counter() - paused
        for fut in done:
            uid = running.pop(fut)
            try:
                result = fut.result()
            except BrokenProcessPool:
                result = UnitResult(uid, wanted[uid].task, "failed", "its worker process died")
            except Exception as exc:  # the executor itself failed (a lost Dask worker...)
                result = UnitResult(uid, wanted[uid].task, "failed", f"{type(exc).__name__}: {exc}")
            finish(result)
    never = [uid for uid in order if uid not in ended]
    if never:  # cannot happen in an acyclic graph
        raise RuntimeError(f"{len(never)} units could never start, e.g. {never[0]}")
    report.wall_s = time.perf_counter() - start
    report.scheduler_s = report.wall_s - waited
    report.results.sort(key=lambda r: rank[r.unit])
    report.record = write_record(repo, report)
    return report


def write_record(repo: Repository, report: RunReport) -> Path:
    """Write the run's JSON record under ``<repo>/pipeline/runs/`` (atomically)."""
    path = repo.root / "pipeline" / "runs" / f"{report.run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "run": report.run_id,
        "pipeline": report.pipeline,
        "wall_s": round(report.wall_s, 3),
        "scheduler_s": round(report.scheduler_s, 3),
        "skipped_done": report.skipped_done,
        "results": [asdict(r) for r in report.results],
    }
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    return path
