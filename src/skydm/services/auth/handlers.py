"""``/auth/api/v1``: token information, creation, listing and revocation over HTTP.

Thin handlers over :class:`~skydm.services.auth.tokens.TokenStore`; the
gate (:mod:`skydm.services.auth.gate`) has already authenticated the caller
and put the token's identity in ``request.state.auth``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from skydm.errors import BadValueError, SkydmError
from skydm.services.auth.tokens import DELEGATED_TYPES, TokenInfo, TokenStore

PREFIX = "/auth/api/v1"

router = APIRouter(prefix=PREFIX)


class TokenRequest(BaseModel):
    """Body of ``POST /auth/api/v1/tokens``."""

    scopes: list[str]
    token_type: str = "user"
    name: str | None = None
    lifetime: float | None = None
    username: str | None = None


def _caller(request: Request) -> TokenInfo:
    return request.state.auth  # type: ignore[no-any-return]


def _store(request: Request) -> TokenStore:
    return request.app.state.token_store  # type: ignore[no-any-return]


def _not_found(key: str) -> JSONResponse:
    # Someone else's token is answered like a missing one: its existence is not revealed.
    return JSONResponse({"detail": f"no token {key!r} of yours"}, status_code=404)


@router.get("/token-info", summary="What the presented token stands for")
async def token_info(request: Request) -> dict[str, Any]:
    return _caller(request).as_dict()


@router.get("/tokens", summary="The caller's live tokens")
async def list_tokens(request: Request) -> list[dict[str, Any]]:
    return [t.as_dict() for t in _store(request).tokens(_caller(request).username)]


@router.post("/tokens", summary="Create a token", status_code=201)
async def create_token(request: Request, body: TokenRequest) -> dict[str, Any]:
    """A user token with a subset of the caller's scopes, or a delegated one.

    With ``admin:token`` the caller may create a token for another user
    with any scopes (``username``).
    """
    caller = _caller(request)
    store = _store(request)
    username = body.username or caller.username
    admin = caller.has("admin:token")
    if username != caller.username and not admin:
        raise BadValueError("username", username, "only admin:token may create others' tokens")
    if body.token_type not in ("user", *DELEGATED_TYPES):
        # Session tokens come from a login only.
        raise BadValueError("token_type", body.token_type, "user, notebook or internal")
    parent = caller if body.token_type in DELEGATED_TYPES else None
    if parent is None and not admin and not set(body.scopes) <= caller.scopes:
        extra = ", ".join(sorted(set(body.scopes) - caller.scopes))
        raise BadValueError("scopes", extra, "a token can only carry scopes yours has")
    new = store.create(
        username,
        body.scopes,
        token_type=body.token_type,
        name=body.name,
        lifetime=body.lifetime,
        parent=parent,
    )
    return {"token": new.token, **new.info.as_dict()}


@router.delete("/tokens/{key}", summary="Revoke a token (and those delegated from it)")
async def revoke_token(request: Request, key: str) -> Response:
    caller = _caller(request)
    store = _store(request)
    info = store.get(key)
    if info is None or info.revoked is not None:
        return _not_found(key)
    if info.username != caller.username and not caller.has("admin:token"):
        return _not_found(key)
    store.revoke(key)
    return Response(status_code=204)


@router.get("/admin/tokens", summary="Every live token (admin:token)")
async def admin_tokens(request: Request, username: str | None = None) -> list[dict[str, Any]]:
    return [t.as_dict() for t in _store(request).tokens(username)]


def install_auth(app: FastAPI, store: TokenStore) -> None:
    """Add the ``/auth/api/v1`` routes; ``app.state.token_store`` is set to ``store``."""
    app.state.token_store = store
    app.include_router(router)

    async def user_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    # TAP answers its own errors as VOTables; these routes answer JSON.
    app.add_exception_handler(SkydmError, _only_auth(user_error, app))


def _only_auth(handler: Any, app: FastAPI) -> Any:
    previous: Any = app.exception_handlers.get(SkydmError)

    async def dispatch(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(PREFIX) or previous is None:
            return await handler(request, exc)  # type: ignore[no-any-return]
        return await previous(request, exc)  # type: ignore[no-any-return]

    return dispatch
