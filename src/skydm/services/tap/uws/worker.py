"""What runs inside a job's worker process: one query, its result written to a file.

The module is preloaded by the forkserver, so its imports (pyarrow, the
catalog engine) are paid once and a job's process starts in milliseconds.
The worker writes its result to ``.<job>.<ext>.part`` batch by batch and
renames it into place only when complete, then records the outcome with a
conditional phase change: if the job was aborted meanwhile, the change fails
and the worker removes its file.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skydm.errors import UserError
from skydm.services.tap.formats import ResultStream, find_format
from skydm.services.tap.uws.models import Phase
from skydm.services.tap.uws.store import JobStore


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Exit this process as soon as the web process is gone.

    Worker processes are children of the forkserver, not of the web process,
    so they would otherwise outlive a killed service and keep a query running
    that nobody can collect (the restarted service marks such jobs ERROR).
    """

    def watch() -> None:
        while True:
            time.sleep(interval)
            if not _alive(parent_pid):
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def load_opener(dotted: str) -> Callable[..., Any]:
    """The engine-opening function named ``module:function``."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def upload_file_name(part: str) -> str:
    """File name under which an async job keeps the upload sent as part ``part``."""
    safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in part)
    return f"{safe}-{hashlib.sha256(part.encode()).hexdigest()[:8]}.vot"


def job_uploads(uploads_dir: Path, job: Any, limits: dict[str, Any]) -> dict[str, Any]:
    """The tables a job's ``upload`` parameter names.

    Inline tables are read from where the job's creation kept them; URLs are
    fetched now, under ``limits`` (``max_bytes``, ``max_rows``, ``allow_private``).
    """
    from skydm.catalog.uploads import fetch_upload, parse_upload_param, read_upload

    tables = {}
    for name, uri in parse_upload_param([job.parameters.get("upload", "")]):
        if uri.startswith("param:"):
            path = uploads_dir / job.job_id / upload_file_name(uri[len("param:") :])
            content = path.read_bytes()
        else:
            content = fetch_upload(
                uri, max_bytes=limits["max_bytes"], allow_private=limits["allow_private"]
            )
        tables[name] = read_upload(
            name, content, max_bytes=limits["max_bytes"], max_rows=limits["max_rows"]
        )
    return tables


def part_path(results_dir: Path, job_id: str, extension: str) -> Path:
    """Where a job's result is written while the query runs."""
    return results_dir / f".{job_id}.{extension}.part"


def run_job(
    job_id: str,
    db_path: str,
    results_dir: str,
    catalog_dir: str,
    engine_url: str | None,
    parent_pid: int,
    opener: str = "skydm.catalog:open_engine",
    nice: int = 0,
    threads: int | None = None,
    upload_limits: dict[str, Any] | None = None,
) -> None:
    """Execute job ``job_id`` (already EXECUTING in the store) and record its outcome.

    ``nice`` is added to the process's niceness, so that long jobs yield the
    CPU to the web process and its sync queries; ``threads`` caps the
    engine's threads (``SKYDM_CATALOG_THREADS``).
    """
    _watch_parent(parent_pid)
    if nice:
        os.nice(nice)
    if threads:
        os.environ["SKYDM_CATALOG_THREADS"] = str(threads)
    store = JobStore(Path(db_path))
    job = store.get(job_id)
    if job.phase != Phase.EXECUTING:
        return  # aborted before this process started
    output = find_format(job.parameters.get("responseformat"))
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    final = results / f"{job_id}.{output.extension}"
    part = part_path(results, job_id, output.extension)
    error: str | None = None
    stream: ResultStream | None = None
    try:
        engine = load_opener(opener)(catalog_dir, engine_url)
        try:
            maxrec = int(job.parameters.get("maxrec", "0"))
            uploads = None
            if "upload" in job.parameters:
                limits = upload_limits or {
                    "max_bytes": 16 * 2**20,
                    "max_rows": 10**6,
                    "allow_private": False,
                }
                uploads = job_uploads(results.parent / "uploads", job, limits)
            columns, batches, overflow = engine.iter_batches(
                job.query, maxrec=maxrec, uploads=uploads
            )
            stream = ResultStream(output, columns, batches, overflow, query=job.query)
            with open(part, "wb") as f:
                for chunk in stream.chunks():
                    f.write(chunk)
            error = stream.error
        finally:
            engine.close()
    except UserError as exc:
        error = str(exc)
    except RecursionError:
        error = "the query is nested too deeply to be parsed: simplify it"
    except Exception as exc:  # a fault, not the user's: still reported on the job
        error = f"internal error while executing the query: {type(exc).__name__}: {exc}"
    now = time.time()
    if error is not None or stream is None:
        part.unlink(missing_ok=True)
        store.transition(
            job_id,
            [Phase.EXECUTING],
            Phase.ERROR,
            end_time=now,
            error_message=error or "the query produced no result",
        )
        return
    os.replace(part, final)
    done = store.transition(
        job_id,
        [Phase.EXECUTING],
        Phase.COMPLETED,
        end_time=now,
        result_file=final.name,
        result_mime=output.mime,
        result_rows=stream.rows,
        result_size=final.stat().st_size,
        overflow=stream.overflow,
    )
    if not done:  # aborted or destroyed while finishing: the result is not wanted
        final.unlink(missing_ok=True)
