"""``skydm run``: run a pipeline over a repository (locally or on Dask)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_run_options(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    repo: bool = True,
    repo_required: bool = True,
    quiet: bool = True,
    config_flag: str = "--config",
) -> None:
    """Options shared by ``skydm run`` and the per-task wrappers (``--repo`` mode).

    ``repo`` and ``quiet`` leave out options a command already has;
    ``config_flag`` renames ``-c/--config`` where a command has its own.
    """
    if repo:
        p.add_argument("--repo", type=Path, required=repo_required, help="the repository")
    p.add_argument(
        "--where",
        default=None,
        help="data-ID expression selecting units, e.g. \"band = 'r' AND visit >= 10\"",
    )
    flags = ("-c", "--config") if config_flag == "--config" else (config_flag,)
    p.add_argument(
        *flags,
        action="append",
        default=[],
        dest=config_flag.lstrip("-").replace("-", "_"),
        metavar="KEY=VALUE",
        help="config override for every task with KEY, or TASK.KEY=VALUE (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the units and run nothing")
    p.add_argument("--retries", type=int, default=0, help="extra tries of a failing unit (0)")
    p.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS|local:N",
        help="run on a Dask scheduler at ADDRESS, or on a LocalCluster of N worker processes",
    )
    p.add_argument("-j", "--jobs", type=int, default=None, help="local worker processes (CPUs)")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress output")


def register(subparsers: Any) -> None:
    """Add the ``run`` command."""
    p = subparsers.add_parser(
        "run",
        help="run a pipeline (drp, ap or a YAML file) over a repository",
        description=(
            "Build the graph of work units of PIPELINE (drp: calibrate, warp, coadd, "
            "measure, object_catalog; ap: calibrate, diffim, ap, dia_catalog; or a pipeline "
            "YAML file) over the repository's datasets selected by --where, print the units "
            "per task, and run those not already done, on a local process pool or on Dask. "
            "A rerun skips units whose outputs exist and verify; a failing unit does not stop "
            "the others; the exit status is 1 when any unit failed."
        ),
    )
    p.add_argument("pipeline", help="drp, ap, or a pipeline YAML file")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm run``."""
    from skydm.cli._checks import existing_repository

    existing_repository(args.repo)  # the repository first, as every --repo command does
    return run_and_report(args.pipeline, args)


def run_and_report(pipeline: object, args: argparse.Namespace) -> int:
    """Run ``pipeline`` with the parsed run options; print the graph and a summary."""
    from skydm.pipeline.graph import Graph
    from skydm.pipeline.runner import run_pipeline

    def show_graph(graph: Graph, todo: list[str]) -> None:
        total, pending = graph.by_task(), graph.by_task(todo)
        print(f"pipeline {graph.pipeline.name}: {len(graph.units)} units, {len(todo)} to run")
        for name, n in total.items():
            print(f"  {name:<16} {n:>6} units  {pending[name]:>6} to run")
        for reason, n in sorted(graph.skipped.items()):
            print(f"  not formed: {n} x {reason}")
        sys.stdout.flush()

    outcome = run_pipeline(
        pipeline,  # type: ignore[arg-type]
        args.repo,
        where=args.where,
        config=args.config,
        dry_run=args.dry_run,
        retries=args.retries,
        dask=args.dask,
        jobs=args.jobs,
        quiet=args.quiet,
        on_graph=show_graph,
    )
    report = outcome.report
    if report is None:
        if not args.dry_run:
            print("nothing to do: every unit's outputs exist and verify")
        return 0
    ok = sum(r.status == "ok" for r in report.results)
    print(
        f"run {report.run_id}: {ok} units ok, {len(report.failures)} failed or blocked, "
        f"{report.skipped_done} already done ({report.wall_s:.1f} s); record {report.record}"
    )
    if report.failures:
        print("failures:")
        width = max(len(r.unit) for r in report.failures)
        for r in report.failures:
            print(f"  {r.unit:<{width}}  {r.status:<7}  {r.reason}")
        return 1
    return 0
