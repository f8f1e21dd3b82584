"""What runs inside a job's worker process: one query, its result written to a file.

The module is preloaded by the forkserver, so its imports (pyarrow, the
catalog engine) are paid once and a job's process starts in milliseconds.
The worker writes its result to ``.<job>.<ext>.part`` batch by batch and
renames it into place only when complete, then records the outcome with a
conditional phase change: if the job was aborted meanwhile, the change fails
and the worker removes its file.
"""

from __future__ import annotations

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
) -> None:
    """Execute job ``job_id`` (already EXECUTING in the store) and record its outcome."""
    _watch_parent(parent_pid)
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
            columns, batches, overflow = engine.iter_batches(job.query, maxrec=maxrec)
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
