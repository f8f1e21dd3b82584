"""``run_pipeline``: load a pipeline, build and plan its graph, execute it (for ``skydm run``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from skydm.pipeline.dask_run import execute_dask
from skydm.pipeline.execute import RunReport, UnitResult, execute, new_run_id
from skydm.pipeline.executors import DaskBackend, open_executor
from skydm.pipeline.graph import Graph, build_graph, plan
from skydm.pipeline.pipelines import Pipeline, load_pipeline
from skydm.progress import Progress
from skydm.repo import Repository


@dataclass
class RunOutcome:
    """A pipeline run: the graph, what was planned, and what happened.

    Attributes
    ----------
    graph : Graph
        Every unit of the pipeline over the selection.
    todo : list of str
        Ids of the units that had to run (the others were already done).
    report : RunReport or None
        ``None`` for a dry run.
    graph_s : float
        Seconds to build the graph and plan it.
    timings : dict
        ``start_s``: starting and readying the workers; ``execute_s``:
        running the units on them (both absent for a dry run).
    """

    graph: Graph
    todo: list[str]
    report: RunReport | None = None
    graph_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def run_pipeline(
    pipeline: str | Path | tuple[str, ...] | Pipeline,
    repo_dir: str | Path,
    *,
    where: str | None = None,
    config: Sequence[str] = (),
    dry_run: bool = False,
    retries: int = 0,
    dask: str | None = None,
    jobs: int | None = None,
    quiet: bool = False,
    on_graph: Callable[[Graph, list[str]], None] | None = None,
    on_result: Callable[[UnitResult], None] | None = None,
) -> RunOutcome:
    """Run a pipeline over a repository.

    Parameters
    ----------
    pipeline : str, Path, tuple of str or Pipeline
        ``drp``, ``ap``, a pipeline YAML file, task names, or a loaded pipeline.
    repo_dir : path
        The repository (it must exist).
    where : str, optional
        Data-ID expression selecting the units (see :mod:`skydm.repo.where`).
    config : sequence of str
        ``KEY=VALUE`` / ``TASK.KEY=VALUE`` config overrides.
    dry_run : bool
        Build and plan the graph only.
    retries : int
        Extra tries of a failing unit.
    dask : str, optional
        ``local:N`` or a scheduler address; a local process pool otherwise.
    jobs : int, optional
        Processes of the local pool.
    quiet : bool
        No progress output.
    on_graph, on_result : callable, optional
        Called with the graph and planned ids before running, and with each
        unit's result as it ends (the CLI prints from them).
    """
    pipe = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline, config)
    t0 = time.perf_counter()
    with Repository.open(repo_dir, create=False) as repo:
        graph = build_graph(pipe, repo, where)
        todo = plan(graph, repo)
        outcome = RunOutcome(graph, [u.id for u in todo], graph_s=time.perf_counter() - t0)
        if on_graph is not None:
            on_graph(graph, outcome.todo)
        if dry_run or not todo:
            return outcome
        run_id = new_run_id(pipe.name)
        bar = Progress(f"run {pipe.name}", len(todo), quiet=quiet)
        with open_executor(dask, jobs, root=repo.root) as workers:
            outcome.timings["start_s"] = workers.start_s
            t1 = time.perf_counter()
            executor = workers.executor
            run = partial(
                execute_dask if isinstance(executor, DaskBackend) else execute,
                run_id=run_id,
                retries=retries,
                skipped_done=len(graph.units) - len(todo),
                progress=bar,
                on_result=on_result,
            )
            outcome.report = run(graph, todo, repo, executor)
            outcome.timings["execute_s"] = time.perf_counter() - t1
    return outcome
