"""The graph of work units: from a pipeline, a repository and a ``--where`` expression.

Tasks are visited in data-flow order.  Each forms its units from the
datasets available (those in the registry and those that earlier tasks will
make), so that a whole pipeline's graph exists before anything runs.  A
``--where`` expression keeps the units of a task whose data IDs match when
the task's units carry every dimension the expression names (``visit >= 10``
selects detector-visits; it does not constrain a coadd, which takes every
warp of its cell and band).

:func:`plan` then decides which units must run: those with an output missing,
damaged (checksum), made with another config, or made from other inputs than
the ones now registered, and everything downstream of them.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from skydm.errors import UserError
from skydm.pipeline.pipelines import Pipeline
from skydm.pipeline.regions import RegionIndex
from skydm.pipeline.task import DatasetKey, GraphContext, WorkUnit
from skydm.repo import DataId, DatasetRef, Repository

if TYPE_CHECKING:
    from skydm.repo.where import WhereExpr


@dataclass
class Graph:
    """Work units with their dependencies.

    Attributes
    ----------
    pipeline : Pipeline
        What the units are of.
    units : list of WorkUnit
        In an order that respects every dependency.
    deps : dict
        Unit id -> ids of the units whose outputs it reads.
    after : dict
        Unit id -> id of the unit of a serial task it must follow (its
        failure does not block this one).
    skipped : dict
        Reason -> number of units that could not be formed.
    refs : dict
        Dataset type -> data ID -> registered dataset (relative paths), as
        the registry stood when the graph was built.
    """

    pipeline: Pipeline
    units: list[WorkUnit]
    deps: dict[str, set[str]]
    after: dict[str, str]
    skipped: dict[str, int] = field(default_factory=dict)
    refs: dict[str, dict[DataId, DatasetRef]] = field(default_factory=dict)

    def by_task(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        """Number of units per task (of ``ids`` only, when given), in pipeline order."""
        wanted = set(ids) if ids is not None else None
        counts = {t.name: 0 for t in self.pipeline.tasks}
        for unit in self.units:
            if wanted is None or unit.id in wanted:
                counts[unit.task] += 1
        return counts

    def dependents(self, unit_id: str) -> set[str]:
        """Every unit downstream of ``unit_id`` (through data, not ``after``)."""
        children: dict[str, set[str]] = defaultdict(set)
        for uid, parents in self.deps.items():
            for parent in parents:
                children[parent].add(uid)
        out: set[str] = set()
        stack = [unit_id]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        return out


def registry_refs(repo: Repository) -> dict[str, dict[DataId, DatasetRef]]:
    """Every registered dataset by type and data ID (one registry query)."""
    refs: dict[str, dict[DataId, DatasetRef]] = defaultdict(dict)
    for ref in repo.registry.query():
        refs[ref.dataset_type][ref.data_id] = ref
    return dict(refs)


def build_graph(
    pipeline: Pipeline,
    repo: Repository,
    where: str | WhereExpr | None = None,
    *,
    refs: dict[str, dict[DataId, DatasetRef]] | None = None,
) -> Graph:
    """The graph of ``pipeline`` over ``repo``'s datasets selected by ``where``.

    Parameters
    ----------
    pipeline : Pipeline
        Tasks and configs.
    repo : Repository
        Where the inputs are (and the outputs will be).
    where : str or WhereExpr, optional
        Data-ID expression (:mod:`skydm.repo.where`); everything by default.
    refs : dict, optional
        The registry's datasets as :func:`registry_refs` gives them (read
        when not given).

    Raises
    ------
    WhereError
        For a bad expression (naming the token).
    UserError
        When nothing in the repository feeds the pipeline.
    """
    with paused_gc():
        return _build_graph(pipeline, repo, _parse_where(where), refs)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a graph is built or planned.

    A graph of 100,000 units makes a few hundred thousand small, long-lived
    objects and no reference cycles; the collector, triggered by the
    allocations, would scan them over and over (a third of the build time,
    measured).  It is turned back on (if it was on) when the block ends.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _build_graph(
    pipeline: Pipeline,
    repo: Repository,
    expr: WhereExpr | None,
    refs: dict[str, dict[DataId, DatasetRef]] | None,
) -> Graph:
    refs = registry_refs(repo) if refs is None else refs
    regions = RegionIndex(repo.root)
    context = GraphContext(
        available={t: set(by_id) for t, by_id in refs.items()}, refs=refs, regions=regions
    )
    units: list[WorkUnit] = []
    producer: dict[DatasetKey, str] = {}
    for task in pipeline.tasks:
        formed = list(task.units(context))
        if expr is not None and expr.dimensions <= set(task.dimensions):
            # One vectorised evaluation for the task's units, not one per unit.
            keep = expr.select([u.data_id for u in formed])
            formed = [u for u, k in zip(formed, keep, strict=True) if k]
        units += formed
        for unit in formed:
            uid = unit.id
            for key in unit.outputs:
                producer[key] = uid
                context.available.setdefault(key.dataset_type, set()).add(key.data_id)
    regions.save()
    if not units and not refs.get("raw"):
        raise UserError(
            f"{repo.root}: holds no raws for pipeline {pipeline.name}; "
            "ingest some first with `skydm ingest --repo DIR FILE...`"
        )
    get = producer.get
    deps = {u.id: {p for p in map(get, u.inputs) if p is not None} for u in units}
    after: dict[str, str] = {}
    for task in pipeline.tasks:
        if task.serial:
            chain = [u.id for u in units if u.task == task.name]
            after.update(zip(chain[1:], chain[:-1], strict=True))
    return Graph(pipeline, units, deps, after, context.skipped, refs)


def _parse_where(where: str | WhereExpr | None) -> WhereExpr | None:
    if where is None or (isinstance(where, str) and not where.strip()):
        return None
    from skydm.repo.where import parse_where

    return parse_where(where) if isinstance(where, str) else where


def plan(graph: Graph, repo: Repository) -> list[WorkUnit]:
    """The units that must run: outputs missing, damaged or stale, and their dependents."""
    with paused_gc():
        return _plan(graph, repo)


def _plan(graph: Graph, repo: Repository) -> list[WorkUnit]:
    configs = {t.name: t.config.sha256() for t in graph.pipeline.tasks}
    todo: set[str] = set()
    out = []
    for unit in graph.units:
        if graph.deps[unit.id] & todo or not is_done(unit, graph.refs, repo, configs[unit.task]):
            todo.add(unit.id)
            out.append(unit)
    return out


def is_done(
    unit: WorkUnit, refs: dict[str, dict[DataId, DatasetRef]], repo: Repository, config_sha: str
) -> bool:
    """Whether every output of ``unit`` is registered, intact and made from its current inputs."""
    outputs = [refs.get(key.dataset_type, {}).get(key.data_id) for key in unit.outputs]
    if any(ref is None for ref in outputs):
        return False  # the common case of a new graph, decided without formatting inputs
    inputs: dict[tuple[str, str], str] = {}
    for key in unit.inputs:
        ref = refs.get(key.dataset_type, {}).get(key.data_id)
        if ref is None:
            return False
        inputs[(key.dataset_type, _id_text(key.data_id.as_dict()))] = ref.checksum
    for key in unit.outputs:
        ref = refs.get(key.dataset_type, {}).get(key.data_id)
        if ref is None:
            return False
        prov: Any = ref.meta.get("provenance")
        if not isinstance(prov, dict) or prov.get("task") != unit.task:
            return False
        if prov.get("config_sha256") != config_sha:
            return False
        recorded = {
            (i["type"], _id_text(i["data_id"])): i["checksum"] for i in prov.get("inputs", [])
        }
        if recorded != inputs:
            return False
        if repo.datastore.check(ref.path, ref.checksum, ref.size) is not None:
            return False
    return True


def _id_text(d: dict[str, Any]) -> str:
    return f"{d['instrument']}|{d['detector']}|{d['visit']}|{d['band']}|{d.get('skycell') or ''}"
