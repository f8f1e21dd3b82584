"""Assembly of the TAP service into a FastAPI application."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from skydm.errors import SkydmError
from skydm.services.tap.config import TapConfig
from skydm.services.tap.handlers import build_router
from skydm.services.tap.handlers.common import error_response
from skydm.services.tap.service import TapService

log = logging.getLogger(__name__)

#: Where the TAP service is mounted in the application.
PREFIX = "/tap"


def create_tap_service(config: TapConfig) -> TapService:
    """A TAP service for ``config`` (not yet opened)."""
    return TapService(config)


def install_tap(app: FastAPI, tap: TapService, *, prefix: str = PREFIX) -> None:
    """Add the TAP endpoints under ``prefix`` and answer errors as VOTable documents.

    ``app.state.tap`` is set to ``tap``; the caller opens and closes it (in the
    application's lifespan).
    """
    app.state.tap = tap
    app.include_router(build_router(prefix))

    async def skydm_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    async def fault(request: Request, exc: Exception) -> Response:
        if isinstance(exc, RecursionError):
            return error_response(
                RecursionError("the query is nested too deeply to be parsed: simplify it"), 400
            )
        log.exception("unexpected error answering %s", request.url)
        return error_response(exc, 500)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(RuntimeError(exc.detail), exc.status_code)

    app.add_exception_handler(SkydmError, skydm_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, fault)
