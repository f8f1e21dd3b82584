"""VOSI and DALI endpoints: the service root, capabilities, availability, tables, examples."""

from __future__ import annotations

import asyncio
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from skydm.services.tap import vosi
from skydm.services.tap.errors import ResultNotFoundError, TapParameterError
from skydm.services.tap.examples import examples_document, sample_positions
from skydm.services.tap.handlers.common import service, tap_url

router = APIRouter()

XML = "application/xml"


@router.get("", name="tap_root", summary="The TAP service")
async def root(request: Request) -> Response:
    """A short HTML page pointing at the service's endpoints."""
    base = escape(tap_url(request))
    links = "".join(
        f'<li><a href="{base}/{p}">{p}</a></li>'
        for p in ("sync", "async", "tables", "capabilities", "availability", "examples")
    )
    return HTMLResponse(
        f"<html><head><title>skydm TAP</title></head><body><h1>skydm TAP service</h1>"
        f"<p>IVOA TAP 1.1 over the skydm catalog; query it in ADQL.</p><ul>{links}</ul>"
        "</body></html>"
    )


@router.get("/capabilities", summary="VOSI capabilities")
async def capabilities(request: Request) -> Response:
    tap = service(request)
    return Response(
        vosi.capabilities(tap_url(request), tap.config, tap.features()), media_type="text/xml"
    )


@router.get("/availability", summary="VOSI availability")
async def availability(request: Request) -> Response:
    """Available when the catalog engine answers a trivial query."""
    tap = service(request)
    try:
        await asyncio.to_thread(
            tap.engine.execute, "SELECT TOP 1 table_name FROM TAP_SCHEMA.tables"
        )
        ok, note = True, "service is accepting queries"
    except Exception as exc:  # the point is to report any failure, not to raise it
        ok, note = False, f"the catalog engine does not answer: {exc}"
    return Response(vosi.availability(ok, note), media_type="text/xml")


@router.get("/tables", summary="VOSI table set")
async def tables(request: Request) -> Response:
    """All schemas and tables; ``detail=min`` leaves the columns out."""
    detail = request.query_params.get("detail", "max").lower()
    if detail not in ("min", "max"):
        raise TapParameterError("detail", detail, "give min or max")
    tableset = await asyncio.to_thread(service(request).tableset)
    return Response(vosi.tableset_xml(tableset, detail=detail == "max"), media_type="text/xml")


@router.get("/tables/{name}", summary="One table (VOSI 1.1)")
async def table(request: Request, name: str) -> Response:
    tableset = await asyncio.to_thread(service(request).tableset)
    found = tableset.find(name)
    if found is None:
        raise ResultNotFoundError(f"there is no table {name!r}; see /tap/tables for the list")
    return Response(
        ('<?xml version="1.0" encoding="UTF-8"?>\n' + vosi.table_xml(found, root=True)).encode(),
        media_type="text/xml",
    )


@router.get("/examples", summary="DALI examples")
async def examples(request: Request) -> Response:
    tap = service(request)
    tableset = await asyncio.to_thread(tap.tableset)
    positions = await asyncio.to_thread(sample_positions, tap.engine, tableset)
    return Response(examples_document(tableset, positions), media_type="application/xhtml+xml")
