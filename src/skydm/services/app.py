"""The skydm web application: one FastAPI app mounting each service.

TAP at ``/tap``; the image services (SIA, DataLink, SODA, stamps) beside it
(:mod:`skydm.services.images`); with auth on, every request passes the token
gate (:mod:`skydm.services.auth`) first, the fast TAP path included.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from skydm import __version__
from skydm.services.auth.config import AuthConfig
from skydm.services.auth.gate import AuthGate
from skydm.services.auth.handlers import install_auth
from skydm.services.auth.login import install_login
from skydm.services.auth.oidc import OidcConfig, OidcLogin
from skydm.services.auth.tokens import TokenStore
from skydm.services.images.config import ImagesConfig
from skydm.services.images.handlers import install_images
from skydm.services.images.hips import install_hips
from skydm.services.images.jobs import SodaJobs
from skydm.services.images.service import ImageService
from skydm.services.portal import install_portal
from skydm.services.tap.config import TapConfig
from skydm.services.tap.factory import PREFIX, create_tap_service, install_tap
from skydm.services.tap.handlers.sync import lean_sync, wants_lean
from skydm.services.tap.service import TapService


class SkydmApp(FastAPI):
    """The FastAPI application, with TAP ``/sync`` requests answered before its routing.

    A sync query (a cone search, typically) costs a few milliseconds of CPU
    at most; FastAPI's middleware, routing, dependency and form handling
    cost as much again, so requests without file parts go straight to
    :func:`~skydm.services.tap.handlers.sync.lean_sync`.  Everything else
    (multipart uploads included) takes the FastAPI routes.

    With auth on, :class:`~skydm.services.auth.gate.AuthGate` sees every
    request before either path, so neither can be reached around it.
    """

    tap_service: TapService | None = None
    auth_gate: AuthGate | None = None
    _sync_path = f"{PREFIX}/sync"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate = self.auth_gate
        if gate is not None and scope["type"] == "http":
            await gate(scope, receive, send, self._dispatch)
        elif gate is not None and scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # no such routes: closed
        else:
            await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        tap = self.tap_service
        if tap is not None and wants_lean(scope, self._sync_path):
            await lean_sync(tap, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    repo_dir: Path | str,
    *,
    engine_url: str | None = None,
    workers: int | None = None,
    tap_config: TapConfig | None = None,
    public_url: str | None = None,
    auth: AuthConfig | None = None,
    oidc: OidcConfig | None = None,
) -> SkydmApp:
    """Build the web application for a repository.

    Parameters
    ----------
    repo_dir : Path or str
        The skydm repository (catalog in ``<repo>/catalog``, TAP jobs in
        ``<repo>/tap``).
    engine_url : str, optional
        Catalog engine URL (a PostgreSQL URL); DuckDB over the repository's
        files when omitted.
    workers : int, optional
        Async jobs executed at once (each in its own process).
    tap_config : TapConfig, optional
        Complete TAP settings; overrides the three arguments above.
    public_url : str, optional
        The root URL clients reach the services at (for the links of ObsCore,
        SIA and DataLink); ``$SKYDM_PUBLIC_URL`` overrides it.
    auth : AuthConfig, optional
        Authentication; none when omitted.  With ``mode="tokens"`` every
        route needs a token from the repository's token store
        (``skydm token create``) with the scope its path needs; ``oidc``
        adds browser login (``/login``) through an OpenID Connect provider.
    oidc : OidcConfig, optional
        The provider, with ``mode="oidc"``; from ``SKYDM_OIDC_*`` when omitted.

    Returns
    -------
    SkydmApp
        The (FastAPI) application; the TAP engine and job runner start with its lifespan.
    """
    config = tap_config or TapConfig.from_env(repo_dir, engine_url=engine_url, workers=workers)
    # Auth is set up first: a missing repository or provider is refused
    # before the services create anything on disk.
    auth = auth or AuthConfig()
    oidc_config = None
    if auth.mode == "oidc":
        oidc_config = oidc or OidcConfig.from_env(public_url or "")
    tokens = TokenStore.for_repo(config.repo_dir) if auth.mode != "none" else None
    login = OidcLogin(oidc_config, tokens) if oidc_config and tokens else None
    tap = create_tap_service(config)
    images = ImageService(ImagesConfig.from_env(config.repo_dir, public_url=public_url))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        images.open()  # first: it publishes ivoa.ObsCore, which TAP then serves
        if images.repo is not None:
            app.state.soda_jobs = SodaJobs(images, Path(config.repo_dir) / "soda")
        tap.open()
        # Everything loaded so far (astropy, sqlglot, pyarrow...) lives as long
        # as the process: out of the collector's way, so that the collections
        # that requests trigger stay short.
        gc.freeze()
        try:
            yield
        finally:
            tap.close()
            if getattr(app.state, "soda_jobs", None) is not None:
                app.state.soda_jobs.close()
            images.close()
            if tokens is not None:
                tokens.close()

    app = SkydmApp(
        title="skydm services",
        version=__version__,
        description="IVOA TAP over the skydm catalog; SIA, DataLink and SODA over its images.",
        lifespan=lifespan,
    )
    install_tap(app, tap)
    install_images(app, images)
    install_hips(app, Path(config.repo_dir) / "hips")
    install_portal(app)
    app.tap_service = tap
    app.state.auth_config = auth
    if tokens is not None:
        install_auth(app, tokens)
        if login is not None:
            install_login(app, login)
        app.auth_gate = AuthGate(tokens, auth)
    return app
