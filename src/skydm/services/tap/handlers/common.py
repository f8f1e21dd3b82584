"""Helpers shared by the TAP handlers: the service, parameters, URLs, error answers."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from skydm.services.tap.errors import TapParameterError, status_of
from skydm.services.tap.params import collect_params
from skydm.services.tap.service import TapService
from skydm.services.tap.votable import error_document

#: Largest request body read; beyond it the request is refused unread.
MAX_BODY_BYTES = 16 * 1024 * 1024
VOTABLE_MIME = "application/x-votable+xml"


def service(request: Request) -> TapService:
    """The TAP service of the application handling ``request``."""
    return request.app.state.tap  # type: ignore[no-any-return]


def tap_url(request: Request) -> str:
    """The TAP service's root URL as the client sees it (no trailing slash)."""
    return str(request.url_for("tap_root")).rstrip("/")


async def params_of(request: Request) -> dict[str, list[str]]:
    """Request parameters from the query string and (for POST) the form body.

    Names are upper-cased (DALI: parameter names are case-insensitive).  The
    body size is checked before it is read, so a huge upload costs nothing.
    """
    params, _ = await inputs_of(request, with_files=False)
    return params


async def inputs_of(
    request: Request, *, with_files: bool = True
) -> tuple[dict[str, list[str]], dict[str, bytes]]:
    """Request parameters (see :func:`params_of`) and the file parts of a multipart body.

    Files are keyed by their part name as sent (``UPLOAD=t,param:NAME`` refers
    to part ``NAME``); each is read up to the service's upload limit.
    """
    items = list(request.query_params.multi_items())
    files: dict[str, bytes] = {}
    if request.method == "POST":
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise TapParameterError(
                "request body", f"{length} bytes", f"at most {MAX_BODY_BYTES} bytes are accepted"
            )
        form = await request.form(max_part_size=MAX_BODY_BYTES)
        limit = service(request).config.max_upload_bytes
        for key, value in form.multi_items():
            if isinstance(value, str):
                items.append((key, value))
            elif with_files:
                content = await value.read(limit + 1)
                if len(content) > limit:
                    raise TapParameterError(
                        f"uploaded part {key}", "too large", f"at most {limit} bytes per table"
                    )
                files[key] = content
    return collect_params(items), files


def error_response(exc: BaseException, status: int | None = None) -> Response:
    """A VOTable error document answering ``exc``."""
    message = str(exc) or type(exc).__name__
    return Response(
        error_document(message), status_code=status or status_of(exc), media_type=VOTABLE_MIME
    )
