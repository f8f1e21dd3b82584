"""Running a graph on Dask ``distributed``: the whole graph submitted at once.

The local executor (:func:`skydm.pipeline.execute.execute`) submits a unit
when its inputs are done, which suits a process pool.  On Dask that costs a
round trip through the client per unit, so here every unit is submitted up
front as a future whose arguments include the futures of the units it reads
from (and, for a serial task, of its predecessor): the scheduler starts each
as soon as those end, with no client in the loop.  The task objects travel
once (scattered to every worker), units and results are small, and each
worker process opens the repository once (as the local pool's workers do).

A failed unit's dependents are not run: they see its result among their
arguments and end ``blocked`` (its reason named), as in the local executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from skydm.pipeline.execute import RunReport, UnitResult, run_unit, write_record
from skydm.pipeline.executors import DaskBackend
from skydm.pipeline.graph import Graph
from skydm.pipeline.task import Task, WorkUnit
from skydm.progress import Progress
from skydm.repo import Repository


def run_after(
    root: str,
    tasks: dict[str, Task],
    unit: WorkUnit,
    run_id: str,
    retries: int,
    previous: UnitResult | None,
    *parents: UnitResult,
) -> UnitResult:
    """Run ``unit`` on a worker once its parents have ended (Dask passes their results).

    ``previous`` is the result of the unit a serial task's unit follows:
    only its end matters, not its status.
    """
    del previous
    for parent in parents:
        if parent.status != "ok":
            return UnitResult(unit.id, unit.task, "blocked", f"input from {parent.unit} failed")
    return run_unit(root, tasks[unit.task], unit, run_id, retries)


def execute_dask(
    graph: Graph,
    units: list[WorkUnit],
    repo: Repository,
    backend: DaskBackend,
    *,
    run_id: str,
    retries: int = 0,
    skipped_done: int = 0,
    progress: Progress | None = None,
    on_result: Callable[[UnitResult], None] | None = None,
) -> RunReport:
    """Run ``units`` on Dask, all submitted at once with their dependencies.

    Same contract as :func:`skydm.pipeline.execute.execute`.
    """
    import distributed

    start = time.perf_counter()
    client = backend.client
    wanted = {u.id: u for u in units}
    rank = {u.id: i for i, u in enumerate(units)}
    report = RunReport(run_id, graph.pipeline.name, skipped_done=skipped_done)
    tasks = {t.name: t for t in graph.pipeline.tasks}
    # The task objects (configs) travel once, not with every unit.
    [tasks_future] = client.scatter([tasks], broadcast=True, hash=False)
    root = str(repo.root)
    futures: dict[str, Any] = {}
    parents_of: dict[str, list[str]] = {}
    for unit in units:  # graph order: every parent is submitted before its children
        parents = sorted(graph.deps[unit.id] & wanted.keys(), key=rank.__getitem__)
        previous = graph.after.get(unit.id)
        parents_of[unit.id] = parents
        futures[unit.id] = client.submit(
            run_after,
            root,
            tasks_future,
            unit,
            run_id,
            retries,
            futures.get(previous) if previous in wanted else None,
            *(futures[p] for p in parents),
            key=f"{unit.task}-{rank[unit.id]}-{run_id}",
            pure=False,
            # Graph order first, as the local executor's ready queue.
            priority=-rank[unit.id],
        )
    ended: dict[str, UnitResult] = {}
    waited = 0.0
    by_key = {f.key: uid for uid, f in futures.items()}
    # Results come back in batches as units end (errors as values, not raised).
    pending = distributed.as_completed(
        list(futures.values()), with_results=True, raise_errors=False
    )
    while True:
        paused = time.perf_counter()
        try:
            fut, value = next(pending)
        except StopIteration:
            break
        waited += time.perf_counter() - paused
        uid = by_key[fut.key]
        unit = wanted[uid]
        if isinstance(value, UnitResult):
            result = value
        else:
            # The scheduler itself failed the unit (its worker died too
            # often...): named on the unit whose parents were fine, the
            # others are blocked behind it.
            bad = next((p for p in parents_of[uid] if not _ok(futures[p], ended.get(p))), None)
            if bad is not None:
                result = UnitResult(uid, unit.task, "blocked", f"input from {bad} failed")
            else:
                result = UnitResult(uid, unit.task, "failed", f"{type(value).__name__}: {value}")
        ended[uid] = result
        report.results.append(result)
        if on_result is not None:
            on_result(result)
        if progress is not None:
            progress.advance(note=f"{result.unit} {result.status}")
    futures.clear()  # releases the results held on the workers
    report.wall_s = time.perf_counter() - start
    report.scheduler_s = report.wall_s - waited
    report.results.sort(key=lambda r: rank[r.unit])
    report.record = write_record(repo, report)
    return report


def _ok(future: Any, result: UnitResult | None) -> bool:
    """Whether a parent unit ended well (its future finished and its result says ok)."""
    if future.status != "finished":
        return False
    return result is None or result.status == "ok"
