"""Where detector jobs run: worker processes of the service's own, or a Dask cluster.

A job is a :class:`Work` item: the ``preload`` of a detector-visit (on its
event), its ``process`` (once its raw landed) or, when its export was
deferred, its ``export`` (to the worker holding its outputs).  Both pools
hand back, for each, its :class:`DetectorOutcome`, or ``None`` when the
process running it died (``kill -9``, out of memory): the service then tries
the job again on another worker.  The local pool says which worker ran each
item, so that the service can send a detector's processing to the worker
that preloaded it and its export to the worker that holds its outputs, and
which workers it started again (:meth:`LocalPool.replaced`: what they held
is lost).

The local pool gives each worker process one job at a time through its own
queue, so the service always knows which job a dead worker held (a shared
queue would lose the job a worker took just before dying).  Workers are
started with ``spawn``: the service holds Kafka client threads that a fork
must not copy.  A worker whose service died (``kill -9``) exits by itself, so
that a restarted service's retries are the only ones running.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from skydm.errors import BadValueError, require_extra
from skydm.prompt.worker import (
    DetectorJob,
    DetectorOutcome,
    close_transports,
    export_detector,
    export_held,
    preload_detector,
    process_detector,
    warm_up,
)


@dataclass(frozen=True)
class Work:
    """One item for a worker: preload a detector-visit, process it, or export it.

    ``defer_export`` (``process`` only): hold the outputs in the worker for
    a later ``export`` item there (:func:`~skydm.prompt.worker.process_detector`).
    """

    kind: Literal["preload", "process", "export"]
    job: DetectorJob
    defer_export: bool = False


@dataclass(frozen=True)
class Finished:
    """An item that ended: its outcome (``None``: its worker died) and the worker that ran it."""

    work: Work
    outcome: DetectorOutcome | None
    worker: int | None


def run_work(work: Work) -> DetectorOutcome:
    """Run one item in this process."""
    if work.kind == "process":
        return process_detector(work.job, defer_export=work.defer_export)
    fn: Callable[[DetectorJob], DetectorOutcome] = (
        preload_detector if work.kind == "preload" else export_detector
    )
    return fn(work.job)


class JobPool(Protocol):
    """What the service needs of a pool."""

    #: Whether an item can be sent to a given worker that keeps what an
    #: earlier item left in its memory (the local pool; not Dask).
    addressable: bool

    def workers(self) -> list[int]:
        """Ids of the workers (empty when not :attr:`addressable`)."""

    def replaced(self) -> list[int]:
        """Workers started again since the last call (what they held is lost)."""

    def free(self) -> int:
        """How many more jobs may start now."""

    def is_free(self, worker: int | None) -> bool:
        """Whether ``worker`` (an id from :class:`Finished`) could start an item now."""

    def submit(self, work: Work, prefer: int | None = None) -> None:
        """Start an item (only when :meth:`free` is positive), on ``prefer`` if it is free."""

    def finished(self, timeout: float) -> list[Finished]:
        """Items that ended since the last call."""

    def pids(self) -> dict[int, Work | None]:
        """Worker process ids and the item each holds (empty for Dask)."""

    def close(self) -> None:
        """Stop the workers."""


def _exit_with_parent() -> None:
    """Exit this worker when the service that started it dies (checked every 0.5 s).

    An orphan would carry on with its detector while the restarted service
    retries it; ``os._exit`` ends it as a ``kill -9`` would, which the
    retry semantics cover.
    """
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        while parent.is_alive():
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="skydm-parent-watch", daemon=True).start()


def _worker_main(inbox: Any, results: Any, index: int, threads: int) -> None:
    _exit_with_parent()
    warm_up(threads)
    try:
        while True:
            work = inbox.get()
            if work is None:
                # Told to stop: the outputs still held are written first, so
                # that a service stopped gracefully leaves no detector to redo.
                export_held()
                return
            results.put((index, run_work(work)))
    finally:
        close_transports()


@dataclass
class _Slot:
    process: Any
    inbox: Any
    work: Work | None = None


class LocalPool:
    """``n`` worker processes on this machine.

    Parameters
    ----------
    n : int
        Worker processes.
    threads : int
        BLAS and OpenMP threads of each (:attr:`PromptConfig.worker_threads`).
    """

    addressable = True
    #: Seconds a stopping worker may take to export what it holds before it is terminated.
    STOP_S = 30.0

    def __init__(self, n: int, threads: int = 1) -> None:
        if n < 1:
            raise BadValueError("workers", n, "at least 1")
        self._threads = threads
        self._ctx = mp.get_context("spawn")
        self._results = self._ctx.Queue()
        self._slots = [self._start(i) for i in range(n)]
        self._replaced: list[int] = []

    def workers(self) -> list[int]:
        return list(range(len(self._slots)))

    def replaced(self) -> list[int]:
        out, self._replaced = self._replaced, []
        return out

    def _start(self, index: int) -> _Slot:
        inbox = self._ctx.Queue()
        proc = self._ctx.Process(
            target=_worker_main, args=(inbox, self._results, index, self._threads), daemon=True,
            name=f"skydm-prompt-worker-{index}",
        )  # fmt: skip
        proc.start()
        return _Slot(proc, inbox)

    def free(self) -> int:
        return sum(1 for s in self._slots if s.work is None)

    def is_free(self, worker: int | None) -> bool:
        return (
            worker is not None
            and 0 <= worker < len(self._slots)
            and (self._slots[worker].work is None)
        )

    def submit(self, work: Work, prefer: int | None = None) -> None:
        if prefer is not None and self.is_free(prefer):
            slot = self._slots[prefer]
        else:
            slot = next(s for s in self._slots if s.work is None)
        slot.work = work
        slot.inbox.put(work)

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
                lost = slot.work
                slot.process.join(0)
                self._slots[i] = self._start(i)
                self._replaced.append(i)
                if lost is not None:
                    out.append(Finished(lost, None, i))
        return out

    def _took(self, index: int, outcome: DetectorOutcome) -> Finished:
        slot = self._slots[index]
        work = slot.work
        slot.work = None
        assert work is not None and work.job.key == outcome.key
        return Finished(work, outcome, index)

    def pids(self) -> dict[int, Work | None]:
        return {int(s.process.pid): s.work for s in self._slots}

    def close(self) -> None:
        for slot in self._slots:
            if slot.process.is_alive():
                slot.inbox.put(None)
        deadline = time.monotonic() + self.STOP_S
        for slot in self._slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
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

    addressable = False

    def __init__(self, client: Any, n: int) -> None:
        self._client = client
        self._n = n
        self._futures: dict[Any, Work] = {}

    def workers(self) -> list[int]:
        return []

    def replaced(self) -> list[int]:
        return []  # Dask reruns a dead worker's tasks itself

    def free(self) -> int:
        return self._n - len(self._futures)

    def is_free(self, worker: int | None) -> bool:
        return False  # Dask places tasks itself: no worker to prefer

    def submit(self, work: Work, prefer: int | None = None) -> None:
        fut = self._client.submit(run_work, work, pure=False, key=_dask_key(work))
        self._futures[fut] = work

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
            work = self._futures.pop(fut)
            try:
                out.append(Finished(work, fut.result(), None))
            except Exception:  # KilledWorker: Dask gave up on it after its retries
                out.append(Finished(work, None, None))
        return out

    def pids(self) -> dict[int, Work | None]:
        return {}

    def close(self) -> None:
        for fut in self._futures:
            fut.cancel()


def _dask_key(work: Work) -> str:
    import uuid

    return f"prompt-{work.kind}-{work.job.visit}-{work.job.detector}-{uuid.uuid4().hex[:8]}"


@contextmanager
def open_pool(workers: int, dask: str | None = None, *, threads: int = 1) -> Iterator[JobPool]:
    """A pool of ``workers`` local processes, or Dask (``local:N`` or a scheduler address).

    Each worker's BLAS and OpenMP pools are limited to ``threads`` threads.
    """
    if dask is None:
        pool = LocalPool(workers, threads)
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
        backend.client.run(warm_up, threads)  # as the local pool's workers do on starting
        dpool = DaskPool(backend.client, workers)
        try:
            yield dpool
        finally:
            dpool.close()
