"""Run one ADQL query locally (through the engine or a UWS job) or against a TAP service.

This is the library behind ``skydm query``: results are streamed to a file
or binary stream in any output format the service offers.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from skydm.errors import SkydmError, UserError
from skydm.progress import Progress, plural
from skydm.repo.atomic import atomic_open
from skydm.services.tap.config import TapConfig
from skydm.services.tap.formats import ResultStream
from skydm.services.tap.params import parse_query_request

if TYPE_CHECKING:
    import httpx

_POLL = 0.2
_UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"


@dataclass(frozen=True)
class QueryOutcome:
    """What a query produced.

    Attributes
    ----------
    rows : int or None
        Rows written (``None`` when the remote service does not say).
    overflow : bool
        Whether MAXREC cut the result.
    job_id : str or None
        The UWS job that ran it, for async queries.
    """

    rows: int | None
    overflow: bool
    job_id: str | None = None


@contextlib.contextmanager
def _open_sink(sink: Path | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(sink, Path):
        with atomic_open(sink) as fh:
            yield fh
    else:
        yield sink
        sink.flush()


def _params(adql: str, output: str, maxrec: int | None) -> dict[str, list[str]]:
    params = {"LANG": ["ADQL"], "QUERY": [adql], "RESPONSEFORMAT": [output]}
    if maxrec is not None:
        params["MAXREC"] = [str(maxrec)]
    return params


def run_local(
    repo: Path | str,
    adql: str,
    *,
    sink: Path | BinaryIO,
    output: str = "votable",
    maxrec: int | None = None,
    run_async: bool = False,
    engine_url: str | None = None,
    quiet: bool = False,
) -> QueryOutcome:
    """Run ``adql`` on the catalog of repository ``repo`` and write the result to ``sink``.

    With ``run_async`` the query runs as a UWS job of the repository's job
    store (in a worker process, as the service would run it); Ctrl-C aborts it.

    Raises
    ------
    UserError
        For a bad query or parameter (the message points at the fault).
    """
    from skydm.services.tap.service import TapService
    from skydm.services.tap.uws.worker import load_opener

    config = TapConfig.from_env(repo, engine_url=engine_url)
    params = _params(adql, output, maxrec)
    if not run_async:
        request = parse_query_request(params, config)
        engine = load_opener(config.engine_opener)(config.catalog_dir, config.engine_url)
        try:
            columns, batches, overflow = engine.iter_batches(request.query, maxrec=request.maxrec)
            stream = ResultStream(request.output, columns, batches, overflow, query=request.query)
            bar = Progress("query", quiet=quiet)
            with _open_sink(sink) as fh:
                for chunk in stream.chunks():
                    fh.write(chunk)
                    bar.advance(0, f"{stream.rows} rows")
            bar.finish(plural(stream.rows, "row"))
            if stream.error is not None:
                raise UserError(stream.error)
            return QueryOutcome(stream.rows, stream.overflow)
        finally:
            engine.close()
    service = TapService(config)
    service.open()
    try:
        job = service.create_job({**params, "PHASE": ["RUN"]})
        bar = Progress(f"job {job.job_id}", quiet=quiet)
        try:
            while job.phase.active:
                time.sleep(_POLL)
                job = service.get_job(job.job_id)
                bar.advance(0, job.phase.value)
        except KeyboardInterrupt:
            service.set_phase(job.job_id, "ABORT")
            raise
        finally:
            bar.finish(job.phase.value)
        if job.error_message is not None or job.phase.value != "COMPLETED":
            raise UserError(f"job {job.job_id} ended {job.phase.value}: {job.error_message}")
        path, _mime = service.result_file(job.job_id)
        with _open_sink(sink) as fh, path.open("rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)
        return QueryOutcome(job.result_rows, job.overflow, job.job_id)
    finally:
        service.close()


def error_message(body: bytes) -> str:
    """The message of a VOTable error document (or the start of any other body)."""
    text = body.decode("utf-8", errors="replace")
    found = re.search(
        r'<INFO[^>]*name="QUERY_STATUS"[^>]*value="ERROR"[^>]*>(.*?)</INFO>', text, re.S
    )
    return html.unescape(found.group(1)).strip() if found else text[:500].strip()


def run_remote(
    url: str,
    adql: str,
    *,
    sink: Path | BinaryIO,
    output: str = "votable",
    maxrec: int | None = None,
    run_async: bool = False,
    timeout: float = 60.0,
    quiet: bool = False,
    token: str | None = None,
) -> QueryOutcome:
    """Send ``adql`` to the TAP service at ``url`` and write the result to ``sink``.

    ``token`` (default: ``$SKYDM_TOKEN``, which notebooks get) is sent as a
    bearer token to services running with ``--auth tokens``.

    Raises
    ------
    UserError
        When the service refuses the query or the job ends in ERROR/ABORTED.
    SkydmError
        When the service cannot be reached.
    """
    import httpx

    base = url.rstrip("/")
    data = {k: v[0] for k, v in _params(adql, output, maxrec).items()}
    token = token if token is not None else os.environ.get("SKYDM_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(timeout=timeout, headers=headers) as client:
            if not run_async:
                return _remote_sync(client, base, data, sink)
            return _remote_async(client, base, data, sink, quiet=quiet)
    except httpx.TransportError as exc:
        raise SkydmError(f"{base}: cannot reach the TAP service ({exc}); is it running?") from exc


def _remote_sync(
    client: httpx.Client, base: str, data: dict[str, str], sink: Path | BinaryIO
) -> QueryOutcome:
    with client.stream("POST", f"{base}/sync", data=data) as response:
        if response.status_code != 200:
            raise UserError(f"{base}: {error_message(response.read())}")
        tail = b""
        with _open_sink(sink) as fh:
            for chunk in response.iter_bytes():
                fh.write(chunk)
                tail = (tail + chunk)[-300:]
    return QueryOutcome(None, b'value="OVERFLOW"' in tail)


def _remote_async(
    client: httpx.Client, base: str, data: dict[str, str], sink: Path | BinaryIO, *, quiet: bool
) -> QueryOutcome:
    created = client.post(f"{base}/async", data={**data, "PHASE": "RUN"})
    if created.status_code != 303:
        raise UserError(f"{base}: job not created: {error_message(created.content)}")
    job_url = created.headers["location"]
    bar = Progress(f"job {job_url.rsplit('/', 1)[-1]}", quiet=quiet)
    try:
        while True:
            doc = ET.fromstring(client.get(job_url, params={"WAIT": "5"}).content)
            phase = doc.findtext(f"{_UWS}phase") or "UNKNOWN"
            bar.advance(0, phase)
            if phase not in ("PENDING", "QUEUED", "EXECUTING"):
                break
    except KeyboardInterrupt:
        client.post(f"{job_url}/phase", data={"PHASE": "ABORT"})
        raise
    finally:
        bar.finish()
    if phase != "COMPLETED":
        message = doc.findtext(f"{_UWS}errorSummary/{_UWS}message") or ""
        raise UserError(f"{job_url}: job ended {phase}: {message}")
    with client.stream("GET", f"{job_url}/results/result") as response, _open_sink(sink) as fh:
        for chunk in response.iter_bytes():
            fh.write(chunk)
    info = doc.find(f"{_UWS}jobInfo")
    rows = int(info.findtext("rows") or 0) if info is not None else None
    overflow = info is not None and info.findtext("overflow") == "true"
    client.delete(job_url)  # fetched: the job has served its purpose
    return QueryOutcome(rows, overflow, job_url.rsplit("/", 1)[-1])
