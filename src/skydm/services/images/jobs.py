"""SODA async: UWS 1.1 jobs that cut out in the background.

The job model, its XML and its durable SQLite store are the TAP service's
(:mod:`skydm.services.tap.uws`); cutouts need no worker process of their own
(they take milliseconds and cannot run away), so jobs run on a small thread
pool and write their result atomically under ``<repo>/soda/results/``.
"""

from __future__ import annotations

import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from skydm.errors import SkydmError
from skydm.repo.atomic import atomic_write_bytes
from skydm.services.images.params import Params
from skydm.services.images.service import ImageService
from skydm.services.tap.errors import JobNotFoundError
from skydm.services.tap.uws.models import Job, Phase
from skydm.services.tap.uws.store import JobStore

log = logging.getLogger(__name__)


def encode_params(params: Params) -> dict[str, str]:
    """Repeated parameters as ``NAME``, ``NAME#2``, ... (a job stores one value per key)."""
    out: dict[str, str] = {}
    for name, value in params.items():
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = value
    return out


def decode_params(stored: dict[str, str]) -> Params:
    """Inverse of :func:`encode_params`."""
    return Params((key.partition("#")[0], value) for key, value in stored.items())


class SodaJobs:
    """Async SODA jobs of one :class:`ImageService`.

    Parameters
    ----------
    service : ImageService
        Does the cutting.
    root : Path
        Directory for the job database and results (``<repo>/soda``).
    """

    def __init__(self, service: ImageService, root: Path) -> None:
        self.service = service
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "results").mkdir(exist_ok=True)
        self.store = JobStore(root / "jobs.sqlite")
        self._pool = ThreadPoolExecutor(
            max_workers=service.config.async_workers, thread_name_prefix="soda-job"
        )

    def close(self) -> None:
        """Stop accepting work (running cutouts finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def create(self, params: Params, *, run: bool, owner: str | None = None) -> Job:
        """A new PENDING job for ``params`` (checked now, so bad input fails at once).

        ``owner`` is the authenticated user (with auth on), who alone sees it.
        """
        self.service.soda_regions(params)  # a bad region is refused before a job exists
        now = time.time()
        stored = {k: v for k, v in encode_params(params).items() if k.partition("#")[0] != "PHASE"}
        job = Job(
            job_id=secrets.token_hex(8),
            phase=Phase.PENDING,
            parameters=stored,
            creation_time=now,
            execution_duration=600,
            destruction=now + self.service.config.job_retention,
            run_id=params.one("RUNID"),
            owner=owner,
        )
        self.store.create(job)
        if run:
            self.run(job.job_id)
        return self.store.get(job.job_id)

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job ``job_id``; with ``owner``, only if it is theirs.

        Raises
        ------
        JobNotFoundError
            When there is no such job, or it is another user's (404 alike, so
            that its existence is not revealed).
        """
        job = self.store.get(job_id)
        if owner is not None and job.owner != owner:
            raise JobNotFoundError(job_id)
        return job

    def run(self, job_id: str) -> None:
        """Queue a PENDING job."""
        if self.store.transition(job_id, [Phase.PENDING], Phase.QUEUED):
            self._pool.submit(self._execute, job_id)

    def abort(self, job_id: str) -> None:
        """Abort a job that has not finished."""
        self.store.transition(
            job_id, [Phase.PENDING, Phase.QUEUED, Phase.EXECUTING], Phase.ABORTED,
            end_time=time.time(),
        )  # fmt: skip

    def delete(self, job_id: str) -> None:
        """Delete a job and its result."""
        job = self.store.get(job_id)
        self.abort(job_id)
        self.store.delete(job_id)
        if job.result_file:
            (self.root / "results" / Path(job.result_file).name).unlink(missing_ok=True)

    def result_path(self, job: Job) -> Path | None:
        """The result file of a COMPLETED job."""
        if job.phase != Phase.COMPLETED or not job.result_file:
            return None
        return self.root / "results" / Path(job.result_file).name

    def _execute(self, job_id: str) -> None:
        if not self.store.transition(
            job_id, [Phase.QUEUED], Phase.EXECUTING, start_time=time.time()
        ):
            return
        job = self.store.get(job_id)
        try:
            payload = self.service.soda(decode_params(job.parameters))
        except SkydmError as exc:
            self.store.transition(
                job_id, [Phase.EXECUTING], Phase.ERROR, error_message=str(exc),
                end_time=time.time(),
            )  # fmt: skip
            return
        except Exception as exc:
            log.exception("SODA job %s failed", job_id)
            self.store.transition(
                job_id, [Phase.EXECUTING], Phase.ERROR,
                error_message=f"ServiceFault: {type(exc).__name__}: {exc}", end_time=time.time(),
            )  # fmt: skip
            return
        suffix = ".zip" if payload.mime.endswith("zip") else ".fits"
        path = self.root / "results" / f"{job_id}{suffix}"
        atomic_write_bytes(path, payload.content)
        moved = self.store.transition(
            job_id, [Phase.EXECUTING], Phase.COMPLETED, end_time=time.time(),
            result_file=path.name, result_mime=payload.mime, result_size=len(payload.content),
        )  # fmt: skip
        if not moved:  # aborted meanwhile
            path.unlink(missing_ok=True)
