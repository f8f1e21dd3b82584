"""Where detector jobs run: worker processes of the service's own, or a Dask cluster.

Both hand back, for each job, its :class:`DetectorOutcome`, or ``None``
when the process running it died (``kill -9``, out of memory): the service
then tries the job again on another worker.

The local pool gives each worker process one job at a time through its own
queue, so the service always knows which job a dead worker held (a shared
queue would lose the job a worker took just before dying).  Workers are
started with ``spawn``: the service holds Kafka client threads that a fork
must not copy.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from skydm.errors import BadValueError, require_extra
from skydm.prompt.worker import (
    DetectorJob,
    DetectorOutcome,
    close_transports,
    process_detector,
    warm_up,
)

Finished = tuple[DetectorJob, DetectorOutcome | None]


class JobPool(Protocol):
    """What the service needs of a pool."""

    def free(self) -> int:
        """How many more jobs may start now."""

    def submit(self, job: DetectorJob) -> None:
        """Start a job (only when :meth:`free` is positive)."""

    def finished(self, timeout: float) -> list[Finished]:
        """Jobs that ended since the last call (``None``: its worker died)."""

    def pids(self) -> dict[int, DetectorJob | None]:
        """Worker process ids and the job each holds (empty for Dask)."""

    def close(self) -> None:
        """Stop the workers."""


def _worker_main(inbox: Any, results: Any, index: int) -> None:
    warm_up()
    try:
        while True:
            job = inbox.get()
            if job is None:
                return
            results.put((index, process_detector(job)))
    finally:
        close_transports()


@dataclass
class _Slot:
    process: Any
    inbox: Any
    job: DetectorJob | None = None


class LocalPool:
    """``n`` worker processes on this machine.

    Parameters
    ----------
    n : int
        Worker processes.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise BadValueError("workers", n, "at least 1")
        self._ctx = mp.get_context("spawn")
        self._results = self._ctx.Queue()
        self._slots = [self._start(i) for i in range(n)]

    def _start(self, index: int) -> _Slot:
        inbox = self._ctx.Queue()
        proc = self._ctx.Process(
            target=_worker_main, args=(inbox, self._results, index), daemon=True,
            name=f"skydm-prompt-worker-{index}",
        )  # fmt: skip
        proc.start()
        return _Slot(proc, inbox)

    def free(self) -> int:
        return sum(1 for s in self._slots if s.job is None)

    def submit(self, job: DetectorJob) -> None:
        slot = next(s for s in self._slots if s.job is None)
        slot.job = job
        slot.inbox.put(job)

    def finished(self, timeout: float) -> list[Finished]:
        out: list[Finished] = []
        try:
            first = self._results.get(timeout=timeout) if timeout > 0 else None
            if first is not None:
                out.append(self._took(*first))
            while True:
                out.append(self._took(*self._results.get_nowait()))
        except queue.Empty:
            pass
        for i, slot in enumerate(self._slots):
            if not slot.process.is_alive():
                lost = slot.job
                slot.process.join(0)
                self._slots[i] = self._start(i)
                if lost is not None:
                    out.append((lost, None))
        return out

    def _took(self, index: int, outcome: DetectorOutcome) -> Finished:
        slot = self._slots[index]
        job = slot.job
        slot.job = None
        assert job is not None and job.key == outcome.key
        return job, outcome

    def pids(self) -> dict[int, DetectorJob | None]:
        return {int(s.process.pid): s.job for s in self._slots}

    def close(self) -> None:
        for slot in self._slots:
            if slot.process.is_alive():
                slot.inbox.put(None)
        for slot in self._slots:
            slot.process.join(5.0)
            if slot.process.is_alive():
                slot.process.terminate()
                slot.process.join(5.0)


class DaskPool:
    """Jobs as Dask tasks; a worker that dies has its task rerun elsewhere by Dask.

    Parameters
    ----------
    client : distributed.Client
        Connected client.
    n : int
        Jobs in flight at once.
    """

    def __init__(self, client: Any, n: int) -> None:
        self._client = client
        self._n = n
        self._futures: dict[Any, DetectorJob] = {}

    def free(self) -> int:
        return self._n - len(self._futures)

    def submit(self, job: DetectorJob) -> None:
        fut = self._client.submit(process_detector, job, pure=False, key=_dask_key(job))
        self._futures[fut] = job

    def finished(self, timeout: float) -> list[Finished]:
        distributed = require_extra("distributed", "pipeline")
        if not self._futures:
            return []
        try:
            distributed.wait(list(self._futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except distributed.TimeoutError:
            return []
        except TimeoutError:
            return []
        out: list[Finished] = []
        for fut in [f for f in self._futures if f.done()]:
            job = self._futures.pop(fut)
            try:
                out.append((job, fut.result()))
            except Exception:  # KilledWorker: Dask gave up on it after its retries
                out.append((job, None))
        return out

    def pids(self) -> dict[int, DetectorJob | None]:
        return {}

    def close(self) -> None:
        for fut in self._futures:
            fut.cancel()


def _dask_key(job: DetectorJob) -> str:
    import uuid

    return f"prompt-{job.visit}-{job.detector}-{uuid.uuid4().hex[:8]}"


@contextmanager
def open_pool(workers: int, dask: str | None = None) -> Iterator[JobPool]:
    """A pool of ``workers`` local processes, or Dask (``local:N`` or a scheduler address)."""
    if dask is None:
        pool = LocalPool(workers)
        try:
            yield pool
        finally:
            pool.close()
        return
    from skydm.pipeline.executors import DaskBackend, open_executor

    require_extra("distributed", "pipeline")
    with open_executor(dask, workers) as started:
        backend = started.executor
        if not isinstance(backend, DaskBackend):  # open_executor gives Dask when dask is set
            raise TypeError(f"expected a Dask backend for --dask {dask}")
        backend.client.run(warm_up)  # as the local pool's workers do on starting
        dpool = DaskPool(backend.client, workers)
        try:
            yield dpool
        finally:
            dpool.close()
