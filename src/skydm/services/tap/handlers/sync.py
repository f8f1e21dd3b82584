"""``/sync``: run a query and send its result back in the response.

Queries run on the service's pool of ``TapConfig.sync_concurrency`` threads
(the event loop never waits on one); the others wait in the pool's queue
without holding a thread or the GIL.  With dozens of queries each holding the
GIL in turn, every one of them (and the event loop) would get a slice every
few milliseconds and all would finish late; queued, they finish in order.

A result of at most :data:`WHOLE_BYTES` is encoded completely on its pool
thread and sent as one body; a larger one frees the pool thread and is
streamed from a thread of its own through a bounded queue, so that a slow
client slows its query instead of filling memory or holding a query slot.

A query the engine answers from memory alone (a cone search of a known shape
whose files' ``_healpix`` columns show no row in its ranges, most small cones:
see :meth:`~skydm.services.tap.service.TapService.answer_from_memory`) is
answered on the event loop at once: it costs less than the hop to a pool
thread and back, and, answered in arrival order on one thread, such requests
never wait for the GIL behind pool threads.

Two routes lead here.  :func:`lean_sync` answers ``GET`` and url-encoded
``POST`` requests straight from ASGI, before FastAPI's routing, dependency and
form machinery (which cost more CPU than a cone search itself); multipart
requests (``UPLOAD`` with inline tables) take the FastAPI route
:func:`sync_query`.  Both validate, run and encode through the same calls, so
their answers are the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from skydm.errors import SkydmError
from skydm.services.tap.errors import TapParameterError
from skydm.services.tap.formats import ResultStream
from skydm.services.tap.handlers.common import (
    MAX_BODY_BYTES,
    error_response,
    inputs_of,
    service,
)
from skydm.services.tap.params import collect_params
from skydm.services.tap.service import TapService

log = logging.getLogger(__name__)
router = APIRouter()

_QUEUE_DEPTH = 8  # encoded chunks buffered between the query thread and the response
#: Results up to this size are sent whole, in one response body.
WHOLE_BYTES = 1 << 20

Start = Callable[[threading.Event], ResultStream]


def _compute(
    start: Start, gone: threading.Event
) -> tuple[ResultStream, list[bytes], Iterator[bytes] | None]:
    """On a pool thread: start the query and encode up to :data:`WHOLE_BYTES` of it.

    Returns the stream, the chunks encoded and, when there is more, the
    iterator of the rest.
    """
    stream = start(gone)
    chunks = stream.chunks()
    head: list[bytes] = []
    size = 0
    for chunk in chunks:
        head.append(chunk)
        size += len(chunk)
        if size > WHOLE_BYTES:
            return stream, head, chunks
    return stream, head, None


async def run_query(
    start: Start, pool: Executor
) -> tuple[ResultStream, bytes | AsyncIterator[bytes]]:
    """Run a query on ``pool``; its whole result, or a stream of its chunks.

    Errors raised while starting the query come back here (to be answered with
    an error document and status); later ones end the stream.
    """
    loop = asyncio.get_running_loop()
    gone = threading.Event()  # the client went away: interrupts the query
    try:
        stream, head, rest = await loop.run_in_executor(pool, _compute, start, gone)
    except asyncio.CancelledError:
        gone.set()
        raise
    if rest is None:
        return stream, b"".join(head)
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=_QUEUE_DEPTH)

    def put(item: tuple[str, Any]) -> bool:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                future.result(timeout=0.5)
                return True
            except TimeoutError:
                if gone.is_set():  # the client went away: stop the query
                    future.cancel()
                    return False

    def transfer() -> None:
        try:
            for chunk in rest:
                if chunk and not put(("chunk", chunk)):
                    return
        except BaseException as exc:
            put(("error", exc))
            return
        put(("end", None))

    threading.Thread(target=transfer, name="tap-sync-stream", daemon=True).start()

    async def body() -> AsyncIterator[bytes]:
        try:
            for chunk in head:
                yield chunk
            while True:
                kind, item = await queue.get()
                if kind == "chunk":
                    yield item
                elif kind == "end":
                    return
                else:
                    raise item  # breaks the transfer: the client sees it incomplete
        finally:
            gone.set()

    return stream, body()


@router.api_route("/sync", methods=["GET", "POST"], summary="Run an ADQL query synchronously")
async def sync_query(request: Request) -> Response:
    """TAP sync endpoint: ``LANG``, ``QUERY``, ``MAXREC``, ``RESPONSEFORMAT``, ``UPLOAD``.

    Requests without file parts are answered by :func:`lean_sync` before they
    reach this route; it serves multipart ones (inline ``UPLOAD`` tables).
    """
    tap = service(request)
    params, files = await inputs_of(request)
    query = tap.parse(params)
    stream, body = await run_query(
        lambda gone: tap.start_query(query, cancel=gone, files=files), tap.sync_pool
    )
    if isinstance(body, bytes):
        return Response(body, media_type=stream.output.mime)
    return StreamingResponse(body, media_type=stream.output.mime)


# --- the lean ASGI route ---------------------------------------------------------------------


def wants_lean(scope: Scope, path: str) -> bool:
    """Whether :func:`lean_sync` answers this request (a non-multipart /sync)."""
    if scope["type"] != "http" or scope["path"] != path:
        return False
    method = scope["method"]
    if method == "GET":
        return True
    if method != "POST":
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            return not bytes(value).lower().startswith(b"multipart/")
    return True


async def _read_form(scope: Scope, receive: Receive) -> list[tuple[str, str]] | None:
    """Parameters of a url-encoded body (none for other content types, as Starlette).

    None when the client went away before sending it all.
    """
    length = None
    form = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = bytes(value)
        elif name == b"content-type":
            form = bytes(value).lower().startswith(b"application/x-www-form-urlencoded")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise TapParameterError(
            "request body",
            f"{length.decode()} bytes",
            f"at most {MAX_BODY_BYTES} bytes are accepted",
        )
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TapParameterError(
                "request body", "too large", f"at most {MAX_BODY_BYTES} bytes are accepted"
            )
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    if not form:
        return []
    return parse_qsl(b"".join(parts).decode("latin-1"), keep_blank_values=True)


async def lean_sync(tap: TapService, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a ``/sync`` request that has no file parts, straight from ASGI.

    Parameters are read as Starlette reads them (query string, then a
    url-encoded body; names upper-cased), errors are answered as the
    application's exception handlers answer them, and the response is the
    one :func:`sync_query` would send.
    """
    response: Response
    body: bytes | AsyncIterator[bytes]
    try:
        items = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if scope["method"] == "POST":
            form = await _read_form(scope, receive)
            if form is None:
                return
            items += form
        query = tap.parse(collect_params(items))
        quick = tap.answer_from_memory(query)
        if quick is not None:
            stream, body = quick, b"".join(quick.chunks())
        else:
            stream, body = await run_query(
                lambda gone: tap.start_query(query, cancel=gone), tap.sync_pool
            )
    except SkydmError as exc:
        response = error_response(exc)
    except RecursionError:
        response = error_response(
            RecursionError("the query is nested too deeply to be parsed: simplify it"), 400
        )
    except Exception as exc:
        log.exception("unexpected error answering %s", scope["path"])
        response = error_response(exc, 500)
    else:
        if isinstance(body, bytes):
            response = Response(body, media_type=stream.output.mime)
        else:
            response = StreamingResponse(body, media_type=stream.output.mime)
    await response(scope, receive, send)
