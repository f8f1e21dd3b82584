"""Where units run: a local process pool, or a Dask ``distributed`` cluster.

:func:`open_executor` starts (or connects to) the workers and readies them
(each imports the pipeline's tasks once) before any unit is submitted, so
that a run's time is the work's and the start-up is measured apart
(:attr:`Workers.start_s`).  A local pool runs units through
:func:`skydm.pipeline.execute.execute`; a Dask cluster through
:func:`skydm.pipeline.dask_run.execute_dask`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skydm.errors import BadValueError

if TYPE_CHECKING:
    import distributed


@dataclass
class DaskBackend:
    """A connected Dask client.

    Attributes
    ----------
    client : distributed.Client
        The client of the scheduler the units run on.
    workers : int
        Worker processes when the executor was opened.
    """

    client: distributed.Client
    workers: int


@dataclass
class Workers:
    """Started workers: a local pool or a Dask backend, and how long starting took.

    Attributes
    ----------
    executor : Executor or DaskBackend
        What units are submitted to.
    start_s : float
        Seconds to start the workers and ready them (imports).
    """

    executor: Executor | DaskBackend
    start_s: float


def warm_up(root: str | None = None) -> int:
    """Ready a worker: import what a unit needs and open the repository at ``root``.

    So that the first unit a worker runs does not pay either (they are the
    workers' start-up, measured apart from the run).
    """
    import importlib
    import importlib.util

    # The tasks import their stages lazily (a dry run needs none of them).
    for name in ("skydm.pipeline.tasks", "skydm.pipeline.calibrate", "skydm.coadd", "skydm.drp"):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    if root is not None:
        from skydm.errors import SkydmError
        from skydm.pipeline.execute import open_repo

        # A worker that cannot open it (a cluster without the shared
        # filesystem) fails each of its units with the reason instead.
        with contextlib.suppress(SkydmError, OSError):
            open_repo(root)
    return os.getpid()


@contextmanager
def open_executor(
    dask: str | None = None, jobs: int | None = None, *, root: str | Path | None = None
) -> Iterator[Workers]:
    """Start the workers for ``--dask`` / ``-j``, ready them, and close them after.

    Parameters
    ----------
    dask : str, optional
        ``local:N`` for a Dask ``LocalCluster`` of N worker processes (one
        thread each, as the local pool's processes), or the address of a
        running scheduler (``tcp://host:8786``).  ``None`` for a local
        process pool.
    jobs : int, optional
        Worker processes of the local pool (default: the CPU count).
    root : path, optional
        The repository the units will use: each worker opens it while
        starting.
    """
    t0 = time.perf_counter()
    where = str(root) if root is not None else None
    if dask is None:
        n = jobs if jobs is not None else (os.cpu_count() or 1)
        if n < 1:
            raise BadValueError("-j", n, "at least 1 worker process")
        # Workers are started fresh (not forked) so that no registry
        # connection or thread of this process is inherited.
        pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("forkserver"))
        try:
            _ready_pool(pool, n, where)
            yield Workers(pool, time.perf_counter() - t0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    from skydm.errors import require_extra

    dist = require_extra("distributed", "pipeline")
    cluster = None
    if dask.startswith("local:"):
        try:
            n = int(dask.removeprefix("local:"))
        except ValueError:
            n = 0
        if n < 1:
            raise BadValueError(
                "--dask", dask, "local:N with N >= 1 workers, or a scheduler address"
            )
        cluster = dist.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = dist.Client(cluster)
    else:
        try:
            client = dist.Client(dask, timeout="20s")
        except OSError as exc:
            raise BadValueError(
                "--dask", dask, f"the address of a running Dask scheduler ({exc})"
            ) from exc
    try:
        pids: dict[str, Any] = client.run(warm_up, where)
        yield Workers(DaskBackend(client, len(pids)), time.perf_counter() - t0)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _ready_pool(pool: ProcessPoolExecutor, n: int, root: str | None) -> None:
    """Start the pool's ``n`` processes and have each import the tasks.

    The pool starts a process per submission while none is idle; rounds of
    ``n`` warm-ups continue until ``n`` distinct processes have answered
    (one round, unless a fast process took two).
    """
    seen: set[int] = set()
    for _ in range(5):
        seen |= {f.result() for f in [pool.submit(warm_up, root) for _ in range(n)]}
        if len(seen) >= n:
            return
