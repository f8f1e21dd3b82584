"""Runs async jobs in worker processes, apart from the web process.

Each executing job has a process of its own, forked from a forkserver that
has the query stack already imported, so that aborting a job is a matter of
terminating its process: SIGTERM, then SIGKILL if it has not gone within
half a second (a query deep in the engine's C code does not look at
signals).  ``EXECUTIONDURATION`` is enforced the same way.  The queue is the
job store itself (jobs in phase QUEUED, oldest first), so queued jobs survive
a restart; jobs found EXECUTING at start-up whose runner has died become
ERROR, because their partial results are gone.

A monitor thread starts queued jobs when a slot is free, reaps finished
workers, enforces execution durations and sweeps jobs past their
destruction time.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import threading
import time
from multiprocessing.process import BaseProcess

from skydm.services.tap.config import TapConfig
from skydm.services.tap.uws.models import Phase
from skydm.services.tap.uws.store import JobStore
from skydm.services.tap.uws.worker import _alive, run_job

log = logging.getLogger(__name__)

ACTIVE = (Phase.PENDING, Phase.QUEUED, Phase.EXECUTING)


class JobRunner:
    """Start, watch, abort and clean up async jobs.

    Parameters
    ----------
    store : JobStore
        Where jobs are recorded.
    config : TapConfig
        Worker count, directories, engine URL and the sweep interval.
    """

    def __init__(self, store: JobStore, config: TapConfig) -> None:
        self.store = store
        self.config = config
        self._procs: dict[str, BaseProcess] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sweep = 0.0
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["skydm.services.tap.uws.worker"])

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover jobs left by a previous run and start the monitor thread."""
        self.config.results_dir.mkdir(parents=True, exist_ok=True)
        self.recover()
        from multiprocessing import forkserver

        forkserver.ensure_running()  # pay the forkserver's imports now, not at the first job
        self._stop.clear()
        self._thread = threading.Thread(target=self._monitor, name="uws-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the monitor; jobs still executing are stopped and marked ERROR."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            running = list(self._procs)
        for job_id in running:
            if self.store.transition(
                job_id,
                [Phase.EXECUTING],
                Phase.ERROR,
                end_time=time.time(),
                error_message="the service shut down while this job was executing; run it again",
            ):
                self._kill(job_id)

    def recover(self) -> None:
        """Mark ERROR the jobs left EXECUTING by a runner that no longer exists."""
        for job in self.store.find(phases=[Phase.EXECUTING.value]):
            if (
                job.runner_pid is not None
                and job.runner_pid != os.getpid()
                and _alive(job.runner_pid)
            ):
                continue  # another live runner (say a CLI) owns it
            self.store.transition(
                job.job_id,
                [Phase.EXECUTING],
                Phase.ERROR,
                end_time=time.time(),
                error_message="the service restarted while this job was executing; run it again",
            )
            self._remove_files(job.job_id, keep_result=False)

    # --- requests -----------------------------------------------------------------------------

    def enqueue(self, job_id: str) -> bool:
        """Queue a PENDING job for execution; whether it was PENDING."""
        moved = self.store.transition(job_id, [Phase.PENDING], Phase.QUEUED)
        self._wake.set()
        return moved

    def abort(self, job_id: str) -> bool:
        """Abort a job that has not finished, stopping its worker; whether it was active."""
        moved = self.store.transition(job_id, ACTIVE, Phase.ABORTED, end_time=time.time())
        self._kill(job_id)
        if moved:
            self._remove_files(job_id, keep_result=False)
        return moved

    def delete(self, job_id: str) -> None:
        """Abort the job if it is active, then remove its record and result."""
        self.abort(job_id)
        self._remove_files(job_id, keep_result=False)
        self.store.delete(job_id)

    def running(self) -> list[str]:
        """Identifiers of the jobs whose worker process is alive."""
        with self._lock:
            return [job_id for job_id, proc in self._procs.items() if proc.is_alive()]

    # --- internals ----------------------------------------------------------------------------

    def _kill(self, job_id: str) -> None:
        with self._lock:
            proc = self._procs.pop(job_id, None)
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(0.5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        else:
            proc.join(0)

    def _remove_files(self, job_id: str, *, keep_result: bool) -> None:
        results = self.config.results_dir
        for path in results.glob(f".{job_id}.*.part"):
            path.unlink(missing_ok=True)
        if not keep_result:
            for path in results.glob(f"{job_id}.*"):
                path.unlink(missing_ok=True)
            shutil.rmtree(self.config.uploads_dir / job_id, ignore_errors=True)

    def _monitor(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.1)
            self._wake.clear()
            try:
                self._tick()
            except Exception:  # keep the runner alive; the next tick retries
                log.exception("job runner tick failed")

    def _tick(self) -> None:
        self._reap()
        self._enforce_durations()
        self._start_queued()
        now = time.time()
        if now - self._last_sweep >= self.config.sweep_interval:
            self._last_sweep = now
            for job_id in self.store.expired(now):
                log.info("destroying job %s (destruction time passed)", job_id)
                self.delete(job_id)

    def _reap(self) -> None:
        with self._lock:
            done = [(j, p) for j, p in self._procs.items() if not p.is_alive()]
            for job_id, _ in done:
                del self._procs[job_id]
        for job_id, proc in done:
            proc.join(0)
            # A worker that ended without recording an outcome crashed (or was killed).
            if self.store.transition(
                job_id,
                [Phase.EXECUTING],
                Phase.ERROR,
                end_time=time.time(),
                error_message=f"the query's worker process ended unexpectedly "
                f"(exit code {proc.exitcode}); run the job again or report the problem",
            ):
                self._remove_files(job_id, keep_result=False)

    def _enforce_durations(self) -> None:
        now = time.time()
        for job_id in self.running():
            try:
                job = self.store.get(job_id)
            except Exception:
                continue
            limit = job.execution_duration
            overdue = limit > 0 and job.start_time is not None and now - job.start_time > limit
            if overdue and self.store.transition(
                job_id,
                [Phase.EXECUTING],
                Phase.ERROR,
                end_time=now,
                error_message=f"the job ran longer than its EXECUTIONDURATION of {limit} s "
                "and was stopped; ask for a longer duration or a smaller query",
            ):
                self._kill(job_id)
                self._remove_files(job_id, keep_result=False)

    def _start_queued(self) -> None:
        with self._lock:
            free = self.config.workers - len(self._procs)
        if free <= 0:
            return
        for job_id in self.store.queued()[:free]:
            if not self.store.transition(
                job_id,
                [Phase.QUEUED],
                Phase.EXECUTING,
                start_time=time.time(),
                runner_pid=os.getpid(),
            ):
                continue  # aborted, or claimed by another runner
            cfg = self.config
            proc = self._ctx.Process(
                target=run_job,
                args=(
                    job_id,
                    str(self.store.path),
                    str(cfg.results_dir),
                    str(cfg.catalog_dir),
                    cfg.engine_url,
                    os.getpid(),
                    cfg.engine_opener,
                    cfg.job_nice,
                    cfg.job_threads,
                    {
                        "max_bytes": cfg.max_upload_bytes,
                        "max_rows": cfg.max_upload_rows,
                        "allow_private": cfg.upload_private_urls,
                    },
                ),
                name=f"uws-job-{job_id}",
                daemon=True,
            )
            with self._lock:
                proc.start()
                self._procs[job_id] = proc
            self.store.update(job_id, worker_pid=proc.pid)
            if self.store.get(job_id).phase != Phase.EXECUTING:
                self._kill(job_id)  # aborted between the claim and the start
