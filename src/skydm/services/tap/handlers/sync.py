"""``/sync``: run a query and send its result back in the response.

Queries run in threads (the event loop never waits on one), at most
``TapConfig.sync_concurrency`` computing at once: the others wait on a
semaphore without holding the GIL.  With dozens of queries each holding the
GIL in turn, every one of them (and the event loop) would get a slice every
few milliseconds and all would finish late; queued, they finish in order.

A result of at most :data:`WHOLE_BYTES` is encoded completely in its thread
and sent as one body; a larger one is streamed through a bounded queue, so
that a slow client slows its query instead of filling memory.
"""

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
#: Results up to this size are sent whole, in one response body.
WHOLE_BYTES = 1 << 20
_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _slot(limit: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(limit, threading.BoundedSemaphore(limit))


async def _run_in_thread(
    start: Callable[[threading.Event], ResultStream], limit: int
) -> tuple[ResultStream, bytes | AsyncIterator[bytes]]:
    """Run a query in a thread of its own; its whole result or a stream of its chunks.

    The engine's iterator is used from that one thread only.  Errors raised
    while starting the query come back here (to be answered with an error
    document and status); later ones end the stream.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=_QUEUE_DEPTH)
    first: asyncio.Future[tuple[str, Any]] = loop.create_future()
    gone = threading.Event()  # the client went away: interrupts the query
    slot = _slot(limit)

    def answer(item: tuple[str, Any]) -> None:
        def set_result() -> None:
            if not first.done():
                first.set_result(item)

        loop.call_soon_threadsafe(set_result)

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
        slot.acquire()
        held = True
        try:
            stream = start(gone)
            chunks: Iterator[bytes] = stream.chunks()
            head: list[bytes] = []
            size = 0
            for chunk in chunks:
                head.append(chunk)
                size += len(chunk)
                if size > WHOLE_BYTES:
                    break
            else:
                answer(("whole", (stream, b"".join(head))))
                return
            slot.release()  # a long transfer: let the next query compute meanwhile
            held = False
            answer(("stream", stream))
            for chunk in head:
                if not put(("chunk", chunk)):
                    return
            for chunk in chunks:
                if chunk and not put(("chunk", chunk)):
                    return
        except BaseException as exc:
            if first.done():
                put(("error", exc))
            else:
                answer(("error", exc))
            return
        finally:
            if held:
                slot.release()
        put(("end", None))

    threading.Thread(target=work, name="tap-sync", daemon=True).start()
    try:
        kind, value = await first
    except asyncio.CancelledError:
        gone.set()
        raise
    if kind == "error":
        raise value
    if kind == "whole":
        return value  # type: ignore[no-any-return]

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
    """TAP sync endpoint: ``LANG``, ``QUERY``, ``MAXREC``, ``RESPONSEFORMAT``, ``UPLOAD``."""
    tap = service(request)
    params, files = await inputs_of(request)
    query = tap.parse(params)
    stream, body = await _run_in_thread(
        lambda gone: tap.start_query(query, cancel=gone, files=files),
        tap.config.sync_concurrency,
    )
    if isinstance(body, bytes):
        return Response(body, media_type=stream.output.mime)
    return StreamingResponse(body, media_type=stream.output.mime)
