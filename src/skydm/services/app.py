"""The skydm web application: one FastAPI app mounting each service.

Only the TAP service exists so far (at ``/tap``); image and authentication
services are meant to be installed beside it in :func:`create_app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from skydm import __version__
from skydm.services.tap.config import TapConfig
from skydm.services.tap.factory import create_tap_service, install_tap


def create_app(
    repo_dir: Path | str,
    *,
    engine_url: str | None = None,
    workers: int | None = None,
    tap_config: TapConfig | None = None,
) -> FastAPI:
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

    Returns
    -------
    FastAPI
        The application; the TAP engine and job runner start with its lifespan.
    """
    config = tap_config or TapConfig.from_env(repo_dir, engine_url=engine_url, workers=workers)
    tap = create_tap_service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tap.open()
        try:
            yield
        finally:
            tap.close()

    app = FastAPI(
        title="skydm services",
        version=__version__,
        description="IVOA TAP over the skydm catalog.",
        lifespan=lifespan,
    )
    install_tap(app, tap)
    return app
