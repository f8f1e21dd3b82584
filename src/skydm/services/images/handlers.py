"""HTTP handlers of the image services: thin layers over :class:`ImageService`.

Endpoints (GET and POST, DALI parameters, names case-insensitive):

* ``/sia/query`` (+ ``/sia/capabilities``, ``/sia/availability``): SIAv2;
* ``/datalink/links``: DataLink;
* ``/soda/sync`` and ``/soda/async`` (UWS 1.1): SODA cutouts;
* ``/images/stamps``: every epoch of a position; ``/images/files``: a stored
  file (DataLink ``#this``); ``/images/preview``: a PNG.

Every error is a DALI error document (a VOTable with ``QUERY_STATUS=ERROR``)
with the fault's name first: ``UsageFault`` (bad parameter, HTTP 400),
``NotFoundFault`` (no such image or job, 404), ``ServiceFault`` (500).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from skydm.errors import SkydmError, UserError
from skydm.image.datasets import UnknownDatasetError
from skydm.services.images.jobs import SodaJobs
from skydm.services.images.params import Params
from skydm.services.images.service import FITS_MIME, Payload
from skydm.services.images.votable import (
    DATALINK_STANDARD_ID,
    SIA_STANDARD_ID,
    SODA_ASYNC_ID,
    SODA_SYNC_ID,
    availability_document,
    capabilities_document,
    error_document,
)
from skydm.services.tap.errors import JobNotFoundError
from skydm.services.tap.uws.models import Job, Phase, job_list_xml, job_xml

log = logging.getLogger(__name__)
VOTABLE = "application/x-votable+xml"
_XML = "text/xml"


def error_response(exc: BaseException) -> Response:
    """The DALI error document of ``exc`` with its HTTP status."""
    if isinstance(exc, UnknownDatasetError | JobNotFoundError):
        status, fault = 404, "NotFoundFault"
    elif isinstance(exc, UserError):
        status, fault = 400, "UsageFault"
    elif isinstance(exc, SkydmError):
        status, fault = 500, "ServiceFault"
    else:
        log.exception("unexpected error in the image services", exc_info=exc)
        status, fault = 500, "ServiceFault"
    return Response(error_document(f"{fault}: {exc}"), status_code=status, media_type=VOTABLE)


async def request_params(request: Request) -> Params:
    """The request's query parameters and (for POST) its form fields."""
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        form = await request.form()
        pairs += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    return Params(pairs)


def _payload_response(payload: Payload) -> Response:
    return Response(
        payload.content,
        media_type=payload.mime,
        headers={"Content-Disposition": f'inline; filename="{payload.filename}"'},
    )


def _guarded(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return error_response(exc)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def build_router(app: FastAPI) -> APIRouter:
    """The image endpoints; ``app.state.images`` is the service, ``app.state.soda_jobs`` jobs."""
    router = APIRouter()
    both = ["GET", "POST"]

    def service() -> Any:
        return app.state.images

    def jobs() -> SodaJobs:
        found: SodaJobs | None = getattr(app.state, "soda_jobs", None)
        if found is None:
            raise UserError("SODA async needs a repository; this server has none")
        return found

    async def sia_capabilities(request: Request) -> Response:
        svc = service()
        doc = capabilities_document(
            [
                (SIA_STANDARD_ID, svc.url("/sia/query")),
                (DATALINK_STANDARD_ID, svc.url("/datalink/links")),
                (SODA_SYNC_ID, svc.url("/soda/sync")),
                (SODA_ASYNC_ID, svc.url("/soda/async")),
                ("ivo://ivoa.net/std/VOSI#capabilities", svc.url("/sia/capabilities")),
                ("ivo://ivoa.net/std/VOSI#availability", svc.url("/sia/availability")),
            ]
        )
        return Response(doc, media_type=_XML)

    async def availability(request: Request) -> Response:
        return Response(availability_document(), media_type=_XML)

    async def sia_query(request: Request) -> Response:
        params = await request_params(request)
        body = await run_in_threadpool(service().sia_query, params)
        return Response(body, media_type=VOTABLE)

    async def datalink(request: Request) -> Response:
        params = await request_params(request)
        body = await run_in_threadpool(service().datalink, params)
        return Response(body, media_type=f"{VOTABLE};content=datalink")

    async def soda_sync(request: Request) -> Response:
        params = await request_params(request)
        if len(params.all("ID")) == 1 and len(params.items()) <= 4:
            # One small cutout costs about a millisecond of CPU: less than the
            # hop to a worker thread and back on a busy machine.
            return _payload_response(service().soda(params))
        return _payload_response(await run_in_threadpool(service().soda, params))

    async def stamps(request: Request) -> Response:
        params = await request_params(request)
        return _payload_response(await run_in_threadpool(service().stamps, params))

    async def files(request: Request) -> Response:
        params = await request_params(request)
        image_id = params.one("ID")
        if image_id is None:
            raise UserError("ID: give the image's ID (ivo://skydm/...)")
        path = service().file(image_id)
        return FileResponse(path, media_type=FITS_MIME, filename=path.name)

    async def preview(request: Request) -> Response:
        from skydm.image.preview import preview_png

        params = await request_params(request)
        image_id = params.one("ID")
        if image_id is None:
            raise UserError("ID: give the image's ID (ivo://skydm/...)")
        path = service().file(image_id)
        return Response(await run_in_threadpool(preview_png, path), media_type="image/png")

    # --- SODA async (UWS 1.1) ----------------------------------------------------------
    def user(request: Request) -> str | None:
        # With auth on, the gate put the caller here; jobs are theirs alone.
        who = getattr(request.state, "auth", None)
        return who.username if who is not None else None

    def own(request: Request) -> Job:
        return jobs().get(request.path_params["job_id"], user(request))

    def job_url(job_id: str) -> str:
        return str(service().url(f"/soda/async/{job_id}"))

    async def async_list(request: Request) -> Response:
        if request.method == "POST":
            params = await request_params(request)
            run = (params.one("PHASE") or "").upper() == "RUN"
            job = await run_in_threadpool(jobs().create, params, run=run, owner=user(request))
            return Response(status_code=303, headers={"Location": job_url(job.job_id)})
        listed = jobs().store.find(owner=user(request))
        return Response(job_list_xml(listed, service().url("/soda/async")), media_type=_XML)

    async def async_job(request: Request) -> Response:
        job_id = own(request).job_id
        if request.method == "DELETE" or (
            request.method == "POST"
            and ((await request_params(request)).one("ACTION") or "").upper() == "DELETE"
        ):
            jobs().delete(job_id)
            return Response(status_code=303, headers={"Location": service().url("/soda/async")})
        return Response(job_xml(jobs().store.get(job_id), job_url(job_id)), media_type=_XML)

    async def async_phase(request: Request) -> Response:
        job_id = own(request).job_id  # 404 for an unknown job, or another user's
        if request.method == "GET":
            return Response(jobs().store.get(job_id).phase.value, media_type="text/plain")
        phase = ((await request_params(request)).one("PHASE") or "").upper()
        if phase == "RUN":
            jobs().run(job_id)
        elif phase == "ABORT":
            jobs().abort(job_id)
        else:
            raise UserError(f"PHASE={phase!r} is not allowed: RUN or ABORT")
        return Response(status_code=303, headers={"Location": job_url(job_id)})

    async def async_results(request: Request) -> Response:
        job = own(request)
        path = jobs().result_path(job)
        if path is None or not path.exists():
            raise JobNotFoundError(job.job_id)
        return FileResponse(path, media_type=job.result_mime or FITS_MIME, filename=path.name)

    async def async_field(request: Request) -> Response:
        job = own(request)
        name = request.path_params["field"]
        value = {
            "error": job.error_message or "",
            "executionduration": str(job.execution_duration),
            "quote": "",
            "owner": job.owner or "",
        }.get(name.lower())
        if value is None:
            raise UserError(f"{name}: not a job property (phase, error, results...)")
        if name.lower() == "error" and job.phase == Phase.ERROR:
            return Response(error_document(value), media_type=VOTABLE)
        return Response(value, media_type="text/plain")

    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/sia/capabilities", sia_capabilities, ["GET"]),
        ("/sia/availability", availability, ["GET"]),
        ("/sia/query", sia_query, both),
        ("/datalink/links", datalink, both),
        ("/soda/sync", soda_sync, both),
        ("/soda/async", async_list, both),
        ("/soda/async/{job_id}", async_job, ["GET", "POST", "DELETE"]),
        ("/soda/async/{job_id}/phase", async_phase, both),
        ("/soda/async/{job_id}/results/result", async_results, ["GET"]),
        ("/soda/async/{job_id}/{field}", async_field, ["GET"]),
        ("/images/stamps", stamps, both),
        ("/images/files", files, ["GET"]),
        ("/images/preview", preview, ["GET"]),
    ]
    for path, handler, methods in routes:
        router.add_api_route(path, _guarded(handler), methods=methods, include_in_schema=True)
    return router


def install_images(app: FastAPI, service: Any) -> None:
    """Add the image endpoints to ``app`` (the caller opens and closes ``service``)."""
    app.state.images = service
    app.include_router(build_router(app))
