"""``/login``, ``/login/callback``, ``/logout``: thin handlers over :class:`OidcLogin`."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from skydm.errors import UserError
from skydm.services.auth.oidc import LOGIN_COOKIE, LOGIN_TTL, SESSION_COOKIE, OidcLogin

router = APIRouter()


def _login(request: Request) -> OidcLogin:
    return request.app.state.oidc_login  # type: ignore[no-any-return]


def _refused(exc: UserError) -> Response:
    return PlainTextResponse(str(exc) + "\n", status_code=getattr(exc, "status_code", 400))


@router.get("/login", summary="Log in through the identity provider")
async def login(request: Request, rd: str | None = None) -> Response:
    try:
        url, state = await _login(request).start(rd)
    except UserError as exc:
        return _refused(exc)
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        LOGIN_COOKIE,
        state,
        max_age=int(LOGIN_TTL),
        path="/login",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/login/callback", summary="Where the identity provider sends the browser back")
async def callback(request: Request, code: str | None = None, state: str | None = None) -> Response:
    oidc = _login(request)
    try:
        new, return_to = await oidc.finish(
            code=code, state=state, browser_state=request.cookies.get(LOGIN_COOKIE)
        )
    except UserError as exc:
        return _refused(exc)
    response = RedirectResponse(return_to, status_code=302)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    response.set_cookie(
        SESSION_COOKIE,
        new.token,
        max_age=int(oidc.config.session_lifetime),
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/logout", summary="End the browser session")
async def logout(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        store = _login(request).store
        with contextlib.suppress(UserError):  # already expired or revoked: nothing to end
            store.revoke(store.verify(token).key)
    response = PlainTextResponse("logged out\n")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def install_login(app: FastAPI, login: OidcLogin) -> None:
    """Add the login routes; ``app.state.oidc_login`` is set to ``login``."""
    app.state.oidc_login = login
    app.include_router(router)
