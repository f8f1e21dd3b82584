"""``/async``: the UWS 1.1 job list and job resources."""

from __future__ import annotations

import asyncio
import time
from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from skydm.services.tap.errors import TapParameterError
from skydm.services.tap.handlers.common import (
    VOTABLE_MIME,
    inputs_of,
    params_of,
    service,
    tap_url,
)
from skydm.services.tap.params import single
from skydm.services.tap.uws.models import UWS_NS, iso, job_list_xml, job_xml
from skydm.services.tap.uws.owned import UserJobs
from skydm.services.tap.votable import error_document

router = APIRouter(prefix="/async")

XML = "application/xml"
_POLL = 0.05  # seconds between looks at a job during a blocking WAIT


def jobs(request: Request) -> UserJobs:
    """The jobs the caller may see: its own with auth on (``request.state.auth``), else all."""
    who = getattr(request.state, "auth", None)
    auth = getattr(request.app.state, "auth_config", None)
    if who is None:
        return UserJobs(service(request), None)
    if auth is None:
        return UserJobs(service(request), who.username)
    return UserJobs(service(request), who.username, auth.max_user_jobs, auth.max_user_result_bytes)


def _job_url(request: Request, job_id: str) -> str:
    return f"{tap_url(request)}/async/{job_id}"


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("", summary="List async jobs")
async def list_jobs(request: Request) -> Response:
    """The job list, filtered by ``PHASE`` (repeatable), ``AFTER`` and ``LAST``."""
    found = jobs(request).list_jobs(await params_of(request))
    return Response(job_list_xml(found, f"{tap_url(request)}/async"), media_type=XML)


@router.post("", summary="Create an async job")
async def create_job(request: Request) -> Response:
    """Create a job from TAP parameters; ``PHASE=RUN`` also starts it."""
    params, files = await inputs_of(request)
    job = jobs(request).create_job(params, files=files)
    return _see_other(_job_url(request, job.job_id))


@router.get("/{job_id}", summary="An async job")
async def get_job(request: Request, job_id: str) -> Response:
    """The job document; ``WAIT=n`` blocks until the phase changes (UWS 1.1 §2.2.1.1)."""
    tap = jobs(request)
    params = await params_of(request)
    job = tap.get_job(job_id)
    wait = single(params, "WAIT")
    if wait is not None and job.phase.active:
        try:
            seconds = float(wait)
        except ValueError:
            raise TapParameterError(
                "WAIT", wait, "give a number of seconds (-1: longest)"
            ) from None
        limit = tap.config.max_wait
        seconds = limit if seconds < 0 else min(seconds, limit)
        awaited = (single(params, "PHASE") or job.phase.value).upper()
        if awaited == job.phase.value:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await asyncio.sleep(_POLL)
                job = tap.get_job(job_id)
                if job.phase.value != awaited:
                    break
    return Response(job_xml(job, _job_url(request, job_id)), media_type=XML)


@router.post("/{job_id}", summary="Delete an async job (ACTION=DELETE)")
async def post_job(request: Request, job_id: str) -> Response:
    """``ACTION=DELETE`` deletes the job; other parameters update it like their resources."""
    tap = jobs(request)
    params = await params_of(request)
    action = single(params, "ACTION")
    if action is not None:
        if action.upper() != "DELETE":
            raise TapParameterError("ACTION", action, "the only action is DELETE")
        tap.delete_job(job_id)
        return _see_other(f"{tap_url(request)}/async")
    if (value := single(params, "EXECUTIONDURATION")) is not None:
        tap.set_execution_duration(job_id, value)
    if (value := single(params, "DESTRUCTION")) is not None:
        tap.set_destruction(job_id, value)
    rest = {
        k: v for k, v in params.items() if k not in ("PHASE", "EXECUTIONDURATION", "DESTRUCTION")
    }
    if rest:
        tap.update_parameters(job_id, rest)
    if (value := single(params, "PHASE")) is not None:
        tap.set_phase(job_id, value)
    return _see_other(_job_url(request, job_id))


@router.delete("/{job_id}", summary="Delete an async job")
async def delete_job(request: Request, job_id: str) -> Response:
    """Abort the job if it runs, then remove it and its result."""
    jobs(request).delete_job(job_id)
    return _see_other(f"{tap_url(request)}/async")


@router.get("/{job_id}/phase", summary="The job's phase")
async def get_phase(request: Request, job_id: str) -> Response:
    return PlainTextResponse(jobs(request).get_job(job_id).phase.value)


@router.post("/{job_id}/phase", summary="Run or abort the job")
async def post_phase(request: Request, job_id: str) -> Response:
    """``PHASE=RUN`` queues the job; ``PHASE=ABORT`` stops it (its worker within a second)."""
    params = await params_of(request)
    value = single(params, "PHASE")
    if value is None:
        raise TapParameterError("PHASE", "", "give PHASE=RUN or PHASE=ABORT")
    tap = jobs(request)
    if value.strip().upper() == "ABORT":
        # Terminating the worker waits on the process: keep the event loop free.
        await asyncio.to_thread(tap.set_phase, job_id, value)
    else:
        tap.set_phase(job_id, value)
    return _see_other(_job_url(request, job_id))


@router.get("/{job_id}/executionduration", summary="The job's execution duration")
async def get_execution_duration(request: Request, job_id: str) -> Response:
    return PlainTextResponse(str(jobs(request).get_job(job_id).execution_duration))


@router.post("/{job_id}/executionduration", summary="Change the job's execution duration")
async def post_execution_duration(request: Request, job_id: str) -> Response:
    value = single(await params_of(request), "EXECUTIONDURATION")
    if value is None:
        raise TapParameterError("EXECUTIONDURATION", "", "give a number of seconds")
    jobs(request).set_execution_duration(job_id, value)
    return _see_other(_job_url(request, job_id))


@router.get("/{job_id}/destruction", summary="The job's destruction time")
async def get_destruction(request: Request, job_id: str) -> Response:
    return PlainTextResponse(iso(jobs(request).get_job(job_id).destruction) or "")


@router.post("/{job_id}/destruction", summary="Change the job's destruction time")
async def post_destruction(request: Request, job_id: str) -> Response:
    value = single(await params_of(request), "DESTRUCTION")
    if value is None:
        raise TapParameterError("DESTRUCTION", "", "give an ISO 8601 time")
    jobs(request).set_destruction(job_id, value)
    return _see_other(_job_url(request, job_id))


@router.get("/{job_id}/error", summary="The job's error document")
async def get_error(request: Request, job_id: str) -> Response:
    """A VOTable error document with the job's error message (empty if it has none)."""
    job = jobs(request).get_job(job_id)
    return Response(error_document(job.error_message or ""), media_type=VOTABLE_MIME)


@router.get("/{job_id}/quote", summary="The job's quote")
async def get_quote(request: Request, job_id: str) -> Response:
    jobs(request).get_job(job_id)
    return PlainTextResponse("")


@router.get("/{job_id}/owner", summary="The job's owner")
async def get_owner(request: Request, job_id: str) -> Response:
    return PlainTextResponse(jobs(request).get_job(job_id).owner or "")


@router.get("/{job_id}/parameters", summary="The job's parameters")
async def get_parameters(request: Request, job_id: str) -> Response:
    job = jobs(request).get_job(job_id)
    body = "".join(
        f"<uws:parameter id={quoteattr(k)}>{escape(v)}</uws:parameter>"
        for k, v in job.parameters.items()
    )
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:parameters xmlns:uws="{UWS_NS}">'
        f"{body}</uws:parameters>\n",
        media_type=XML,
    )


@router.post("/{job_id}/parameters", summary="Change the parameters of a PENDING job")
async def post_parameters(request: Request, job_id: str) -> Response:
    jobs(request).update_parameters(job_id, await params_of(request))
    return _see_other(_job_url(request, job_id))


@router.get("/{job_id}/results", summary="The job's results")
async def get_results(request: Request, job_id: str) -> Response:
    job = jobs(request).get_job(job_id)
    result = ""
    if job.result_file is not None and job.phase.value == "COMPLETED":
        href = quoteattr(_job_url(request, job_id) + "/results/result")
        result = f'<uws:result id="result" xlink:type="simple" xlink:href={href}/>'
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:results xmlns:uws="{UWS_NS}" '
        f'xmlns:xlink="http://www.w3.org/1999/xlink">{result}</uws:results>\n',
        media_type=XML,
    )


@router.get("/{job_id}/results/result", summary="The job's result file")
async def get_result(request: Request, job_id: str) -> Response:
    """The result, streamed from its file (no size cap)."""
    path, mime = jobs(request).result_file(job_id)
    return FileResponse(path, media_type=mime)
