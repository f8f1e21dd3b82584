"""``/sync``: run a query and stream its result back in the response."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from skydm.services.tap.formats import ResultStream
from skydm.services.tap.handlers.common import inputs_of, service

router = APIRouter()

_QUEUE_DEPTH = 8  # encoded chunks buffered between the query thread and the response


async def _run_in_thread(
    start: Callable[[threading.Event], ResultStream],
) -> tuple[ResultStream, AsyncIterator[bytes]]:
    """Start a query in a thread of its own and stream its chunks to the event loop.

    The engine's iterator is used from that one thread only, and a bounded
    queue makes a slow client slow the query rather than fill memory.  Errors
    raised while starting the query come back here (to be answered with an
    error document and status); later ones end the stream.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=_QUEUE_DEPTH)
    gone = threading.Event()  # the client went away: interrupts the query

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

    def work() -> None:
        try:
            stream = start(gone)
        except BaseException as exc:
            put(("error", exc))
            return
        if not put(("ready", stream)):
            return
        chunks: Iterator[bytes] = stream.chunks()
        try:
            for chunk in chunks:
                if chunk and not put(("chunk", chunk)):
                    return
        except BaseException as exc:
            put(("error", exc))
            return
        put(("end", None))

    threading.Thread(target=work, name="tap-sync", daemon=True).start()
    kind, value = await queue.get()
    if kind == "error":
        raise value

    async def body() -> AsyncIterator[bytes]:
        try:
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

    return value, body()


@router.api_route("/sync", methods=["GET", "POST"], summary="Run an ADQL query synchronously")
async def sync_query(request: Request) -> Response:
    """TAP sync endpoint: ``LANG``, ``QUERY``, ``MAXREC``, ``RESPONSEFORMAT``."""
    tap = service(request)
    params, files = await inputs_of(request)
    query = tap.parse(params)
    stream, body = await _run_in_thread(
        lambda gone: tap.start_query(query, cancel=gone, files=files)
    )
    return StreamingResponse(body, media_type=stream.output.mime)
