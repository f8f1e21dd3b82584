"""HTTP handlers of the TAP service: thin translations between requests and :class:`TapService`."""

from __future__ import annotations

from fastapi import APIRouter

from skydm.services.tap.handlers import sync, uws, vosi


def build_router(prefix: str) -> APIRouter:
    """All TAP endpoints under ``prefix`` (the service root, such as ``/tap``)."""
    router = APIRouter()
    for module in (vosi, sync, uws):
        router.include_router(module.router, prefix=prefix)
    return router
