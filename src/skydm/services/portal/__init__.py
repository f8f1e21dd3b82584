"""The portal at ``/``: the HiPS trees in Aladin Lite, Objects and DiaObjects from TAP.

The page (``static/``) is plain HTML and a JavaScript module; everything it
shows comes from the services themselves (``/hips/``, ``/tap/sync``,
``/sia/query``, ``/soda/sync``, ``/images/stamps``).  Aladin Lite is not
committed: it is installed from npm at set-up (``npm install aladin-lite``)
and found in ``$SKYDM_ALADIN_DIR`` or the nearest ``node_modules``.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response

STATIC = Path(__file__).parent / "static"
_FILES = {
    "portal.js": "text/javascript; charset=utf-8",
    "portal.css": "text/css; charset=utf-8",
}


def find_aladin() -> Path | None:
    """The directory holding Aladin Lite's ``aladin.js``, or None when it is not installed."""
    env = os.environ.get("SKYDM_ALADIN_DIR")
    candidates = [Path(env)] if env else []
    for start in (Path.cwd(), Path(__file__).resolve()):
        for parent in (start, *start.parents):
            candidates.append(parent / "node_modules" / "aladin-lite" / "dist")
    for candidate in candidates:
        if (candidate / "aladin.js").is_file():
            return candidate
    return None


def build_portal_router() -> APIRouter:
    """``/`` (the page), ``/portal/<file>`` and ``/portal/aladin/aladin.js``."""
    router = APIRouter()
    aladin = find_aladin()

    @router.get("/", include_in_schema=False)
    def portal_page() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @router.get("/portal/aladin/aladin.js", include_in_schema=False)
    def aladin_js() -> Response:
        if aladin is None:
            return Response(
                "Aladin Lite is not installed: run `npm install aladin-lite` in the project "
                "(or set SKYDM_ALADIN_DIR to its dist directory) and restart skydm serve\n",
                status_code=404,
                media_type="text/plain; charset=utf-8",
            )
        return FileResponse(aladin / "aladin.js", media_type="text/javascript; charset=utf-8")

    @router.get("/portal/{name}", include_in_schema=False)
    def portal_file(name: str) -> Response:
        media = _FILES.get(name)  # only the page's own files: no path reaches the disk
        if media is None:
            return Response("no such portal file\n", status_code=404, media_type="text/plain")
        return FileResponse(STATIC / name, media_type=media)

    return router


def install_portal(app: FastAPI) -> None:
    """Serve the portal at ``/``."""
    app.include_router(build_portal_router())
