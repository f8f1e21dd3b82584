"""The TAP service's operations, independent of HTTP: what the handlers call.

:class:`TapService` owns the catalog engine (for sync queries and metadata),
the job store and the job runner.  Handlers translate requests into calls
here and results into responses; nothing below knows about FastAPI.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skydm.catalog.engine import cancel_after
from skydm.catalog.obsloc import sync_visits
from skydm.catalog.uploads import UploadedTable, fetch_upload, read_upload
from skydm.errors import UserError
from skydm.repo.atomic import atomic_write_bytes
from skydm.services.tap.config import TapConfig
from skydm.services.tap.errors import JobPhaseError, ResultNotFoundError, TapParameterError
from skydm.services.tap.formats import ResultStream, find_format
from skydm.services.tap.params import Params, QueryRequest, parse_query_request
from skydm.services.tap.uws.models import UWS_PHASES, Job, Phase
from skydm.services.tap.uws.runner import JobRunner
from skydm.services.tap.uws.store import JobStore
from skydm.services.tap.uws.worker import load_opener, upload_file_name
from skydm.services.tap.vosi import DEFAULT_FEATURES, TableSet, read_tableset

log = logging.getLogger(__name__)


def parse_time(name: str, value: str) -> float:
    """An ISO 8601 time (UTC when it names no zone) as epoch seconds."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise TapParameterError(
            name, value, "give an ISO 8601 time such as 2030-01-01T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class TapService:
    """A TAP service over one catalog engine.

    Parameters
    ----------
    config : TapConfig
        The service settings.
    """

    def __init__(self, config: TapConfig) -> None:
        self.config = config
        self._engine: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self.store = JobStore(config.jobs_dir / "jobs.sqlite")
        self.runner = JobRunner(self.store, config)

    # --- life cycle ---------------------------------------------------------------------------

    def open(self, *, run_jobs: bool = True) -> None:
        """Open the catalog engine and (with ``run_jobs``) start the job runner.

        With ``config.sync_visits``, the repository's raws are first published
        as ``ivoa.obsplan`` (ObsLocTAP); a repository without a registry has none.
        """
        if self.config.sync_visits:
            try:
                sync_visits(self.config.repo_dir)
            except Exception:  # the catalog is still worth serving without it
                log.exception("could not publish the repository's visits as ivoa.obsplan")
        opener = load_opener(self.config.engine_opener)
        self._engine = opener(self.config.catalog_dir, self.config.engine_url)
        if run_jobs:
            self.runner.start()

    def close(self) -> None:
        """Stop the runner, the sync query threads and close the engine."""
        self.runner.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def engine(self) -> Any:
        """The catalog engine (opened by :meth:`open`)."""
        if self._engine is None:
            raise RuntimeError("TapService.open() has not been called")
        return self._engine

    @property
    def sync_pool(self) -> ThreadPoolExecutor:
        """The threads sync queries run on: ``config.sync_concurrency`` of them."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.config.sync_concurrency, thread_name_prefix="tap-sync"
            )
        return self._pool

    # --- metadata -----------------------------------------------------------------------------

    def features(self) -> list[tuple[str, str]]:
        """ADQL optional features offered, as (TAPRegExt feature type, form)."""
        return list(getattr(self.engine, "adql_features", None) or DEFAULT_FEATURES)

    def tableset(self) -> TableSet:
        """Schemas, tables and columns, read from ``TAP_SCHEMA``."""
        return read_tableset(self.engine)

    # --- sync ---------------------------------------------------------------------------------

    def parse(self, params: Params, *, require_query: bool = True) -> QueryRequest:
        """Validate query parameters against this service's limits."""
        return parse_query_request(params, self.config, require_query=require_query)

    def read_uploads(
        self, request: QueryRequest, files: Mapping[str, bytes] | None
    ) -> dict[str, UploadedTable]:
        """The tables of ``UPLOAD=name,param:PART``, read from the request's file parts.

        Raises
        ------
        TapParameterError
            When a named part is missing.
        UploadError
            When a part is not a usable VOTable or exceeds the limits.
        """
        tables: dict[str, UploadedTable] = {}
        for name, uri in request.uploads:
            if not uri.startswith("param:"):
                fetched = fetch_upload(
                    uri,
                    max_bytes=self.config.max_upload_bytes,
                    allow_private=self.config.upload_private_urls,
                )
                tables[name] = read_upload(
                    name,
                    fetched,
                    max_bytes=self.config.max_upload_bytes,
                    max_rows=self.config.max_upload_rows,
                )
                continue
            part = uri[len("param:") :]
            content = (files or {}).get(part)
            if content is None:
                raise TapParameterError(
                    "UPLOAD",
                    f"{name},{uri}",
                    f"a multipart file part named {part!r} holding the VOTable",
                )
            tables[name] = read_upload(
                name,
                content,
                max_bytes=self.config.max_upload_bytes,
                max_rows=self.config.max_upload_rows,
            )
        return tables

    def answer_from_memory(self, request: QueryRequest) -> ResultStream | None:
        """The query's result when the engine has it in memory (see
        :meth:`~skydm.catalog.engine.CatalogEngine.answer_from_memory`), else None.

        Safe to call on the event loop: it opens nothing and compiles nothing.
        """
        if request.uploads:
            return None
        answer = getattr(self.engine, "answer_from_memory", None)
        found = answer(request.query, maxrec=request.maxrec) if answer is not None else None
        if found is None:
            return None
        columns, batches, overflow = found
        return ResultStream(request.output, columns, batches, overflow, query=request.query)

    def start_query(
        self,
        request: QueryRequest,
        *,
        cancel: threading.Event | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> ResultStream:
        """Start a sync query; the stream's first batch is already fetched.

        ``cancel`` (set when the client goes away) interrupts the query; it is
        also set after ``max_sync_duration`` seconds, so that a runaway sync
        query cannot hold the service's resources (long queries belong in
        async jobs).  ``files`` are the request's file parts, for ``UPLOAD``.
        """
        uploads = self.read_uploads(request, files)
        cancel = cancel or threading.Event()
        done = threading.Event()
        cancel_after(cancel, self.config.max_sync_duration, done)
        try:
            columns, batches, overflow = self.engine.iter_batches(
                request.query, maxrec=request.maxrec, cancel=cancel, uploads=uploads or None
            )
        except BaseException:
            done.set()
            raise

        def watched() -> Iterator[Any]:
            try:
                yield from batches
            finally:
                done.set()  # also when the stream is dropped unfinished (generator close)

        return ResultStream(request.output, columns, watched(), overflow, query=request.query)

    # --- async jobs ---------------------------------------------------------------------------

    def create_job(
        self,
        params: Params,
        *,
        files: Mapping[str, bytes] | None = None,
        owner: str | None = None,
    ) -> Job:
        """Create a PENDING job from request parameters (and run it when ``PHASE=RUN``).

        Uploaded tables (``UPLOAD`` with the request's ``files``) are checked
        and kept with the job in ``<repo>/tap/uploads/<job>/``.
        """
        now = time.time()
        job = Job(
            job_id=secrets.token_hex(8),
            phase=Phase.PENDING,
            parameters={},
            creation_time=now,
            execution_duration=self.config.default_execution_duration,
            destruction=now + self.config.default_retention,
            owner=owner,
        )
        try:
            request = self.parse(params, require_query=False)
            job.parameters = {k: v for k, v in request.as_parameters().items() if v != ""}
            job.run_id = request.run_id
            inline = [(n, u) for n, u in request.uploads if u.startswith("param:")]
            if inline:
                # Inline tables are checked now and kept with the job; URLs are
                # fetched by the job's process when it runs.
                self.read_uploads(replace(request, uploads=tuple(inline)), files)
                folder = self.config.uploads_dir / job.job_id
                folder.mkdir(parents=True, exist_ok=True)
                for _, uri in inline:
                    part = uri[len("param:") :]
                    atomic_write_bytes(folder / upload_file_name(part), (files or {})[part])
        except UserError as exc:
            # UWS: a job is created whatever its parameters; a bad one ends in
            # ERROR when run, with the reason in its error summary.
            job.error_message = str(exc)
            limit = self.config.max_query_bytes
            job.parameters = {
                k.lower(): (v[-1] if len(v[-1]) <= limit else v[-1][:limit] + "...")
                for k, v in params.items()
                if k in ("LANG", "QUERY", "MAXREC", "RESPONSEFORMAT", "FORMAT", "RUNID", "UPLOAD")
                and v
            }
        if (value := _single(params, "EXECUTIONDURATION")) is not None:
            job.execution_duration = self._duration(value)
        if (value := _single(params, "DESTRUCTION")) is not None:
            job.destruction = self._destruction(value, now)
        self.store.create(job)
        phase = _single(params, "PHASE")
        if phase is not None:
            self.set_phase(job.job_id, phase)
        return self.store.get(job.job_id)

    def get_job(self, job_id: str) -> Job:
        """The job ``job_id`` (raises ``JobNotFoundError``)."""
        return self.store.get(job_id)

    def list_jobs(self, params: Params, *, owner: str | None = None) -> list[Job]:
        """Jobs filtered by the UWS 1.1 ``PHASE``, ``AFTER`` and ``LAST`` parameters.

        With ``owner``, only that user's jobs.
        """
        phases = [p.upper() for p in params.get("PHASE", [])]
        for phase in phases:
            if phase not in UWS_PHASES:
                raise TapParameterError("PHASE", phase, f"UWS phases are {', '.join(UWS_PHASES)}")
        after_value = _single(params, "AFTER")
        after = parse_time("AFTER", after_value) if after_value is not None else None
        last_value = _single(params, "LAST")
        last = None
        if last_value is not None:
            try:
                last = int(last_value)
            except ValueError:
                last = -1
            if last < 1:
                raise TapParameterError("LAST", last_value, "give a positive integer")
        return self.store.find(phases=phases or None, after=after, last=last, owner=owner)

    def set_phase(self, job_id: str, value: str) -> Job:
        """Apply ``PHASE=RUN`` or ``PHASE=ABORT`` to a job."""
        job = self.store.get(job_id)
        action = value.strip().upper()
        if action == "RUN":
            if job.phase == Phase.PENDING and job.error_message is not None:
                self.store.transition(job_id, [Phase.PENDING], Phase.ERROR, end_time=time.time())
            elif job.phase == Phase.PENDING:
                if not job.query.strip():
                    raise JobPhaseError(
                        f"job {job_id} has no QUERY; set one (POST QUERY=... to "
                        f"/async/{job_id}/parameters) before running it"
                    )
                self.runner.enqueue(job_id)
            elif job.phase not in (Phase.QUEUED, Phase.EXECUTING):
                raise JobPhaseError(
                    f"job {job_id} is {job.phase.value} and cannot be run again; create a new job"
                )
        elif action == "ABORT":
            self.runner.abort(job_id)
        else:
            raise TapParameterError("PHASE", value, "give RUN or ABORT")
        return self.store.get(job_id)

    def _duration(self, value: str) -> int:
        try:
            seconds = int(float(value))
        except ValueError:
            seconds = -1
        if seconds < 0:
            raise TapParameterError(
                "EXECUTIONDURATION", value, "give a non-negative number of seconds"
            )
        # 0 asks for no limit; the service's hard limit applies to every job.
        limit = self.config.max_execution_duration
        return limit if seconds == 0 else min(seconds, limit)

    def _destruction(self, value: str, creation: float) -> float:
        return min(parse_time("DESTRUCTION", value), creation + self.config.max_retention)

    def set_execution_duration(self, job_id: str, value: str) -> Job:
        """Change a job's execution duration (before it runs), capped at the hard limit."""
        seconds = self._duration(value)
        if not self.store.update(job_id, only_in=[Phase.PENDING], execution_duration=seconds):
            self._refuse(job_id, "EXECUTIONDURATION")
        return self.store.get(job_id)

    def set_destruction(self, job_id: str, value: str) -> Job:
        """Change a job's destruction time, capped at the longest retention."""
        job = self.store.get(job_id)
        self.store.update(job_id, destruction=self._destruction(value, job.creation_time))
        return self.store.get(job_id)

    def update_parameters(self, job_id: str, params: Params) -> Job:
        """Change a PENDING job's query parameters; the merged set is validated again."""
        job = self.store.get(job_id)
        if job.phase != Phase.PENDING:
            self._refuse(job_id, "parameters")
        merged: dict[str, list[str]] = {k.upper(): [v] for k, v in job.parameters.items()}
        merged.update(params)
        request = self.parse(merged, require_query=False)
        parameters = {k: v for k, v in request.as_parameters().items() if v != ""}
        if not self.store.update(
            job_id,
            only_in=[Phase.PENDING],
            parameters=parameters,
            run_id=request.run_id,
            error_message=None,
        ):
            self._refuse(job_id, "parameters")
        return self.store.get(job_id)

    def _refuse(self, job_id: str, what: str) -> None:
        phase = self.store.get(job_id).phase.value
        raise JobPhaseError(f"job {job_id} is {phase}; {what} can only be changed while PENDING")

    def delete_job(self, job_id: str) -> None:
        """Abort (if active) and remove a job with its result."""
        self.store.get(job_id)
        self.runner.delete(job_id)

    def result_file(self, job_id: str) -> tuple[Path, str]:
        """The result file of a COMPLETED job and its MIME type."""
        job = self.store.get(job_id)
        if job.phase != Phase.COMPLETED or job.result_file is None:
            raise ResultNotFoundError(
                f"job {job_id} is {job.phase.value} and has no result; results exist "
                "once the job is COMPLETED"
            )
        path = self.config.results_dir / job.result_file
        if not path.exists():
            raise ResultNotFoundError(f"the result file of job {job_id} is missing ({path})")
        mime = job.result_mime or find_format(job.parameters.get("responseformat")).mime
        return path, mime


def _single(params: Params, name: str) -> str | None:
    values: Iterable[str] = params.get(name, [])
    values = list(values)
    return values[-1] if values else None
