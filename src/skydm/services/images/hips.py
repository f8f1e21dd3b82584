"""``/hips/``: the HiPS trees that ``skydm hips`` built, and an index of them.

Only names HiPS 1.0 defines are served (``properties``, ``Moc.fits``,
``NorderK/Allsky.*``, ``NorderK/DirD/NpixN.*``) from trees whose name is a
plain word: each path is matched against those patterns before it touches
the disk, and the file found must lie inside the trees' directory, so that
nothing else (``skydm-hips.json`` included) can be reached.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from skydm.image.hips.tree import read_properties

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FILE = re.compile(
    r"^(properties|Moc\.fits|Norder[0-9]{1,2}/Allsky\.(fits|png|jpg)"
    r"|Norder[0-9]{1,2}/Dir[0-9]{1,12}/Npix[0-9]{1,15}\.(fits|png|jpg))$"
)
MEDIA = {
    ".fits": "application/fits",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    "": "text/plain; charset=utf-8",
}


def trees(root: Path) -> list[dict[str, str]]:
    """Every tree under ``root``: name, title, order, tile formats, initial position."""
    out: list[dict[str, str]] = []
    if not root.is_dir():
        return out
    for props_path in sorted(root.glob("*/properties")):
        name = props_path.parent.name
        if not _NAME.match(name) or ".." in name:
            continue
        try:
            props = read_properties(props_path)
        except (OSError, UnicodeDecodeError):
            continue  # a tree being written: listed once it is whole
        out.append(
            {
                "name": name,
                "url": f"{name}/",
                "obs_title": props.get("obs_title", name),
                "hips_order": props.get("hips_order", ""),
                "hips_tile_format": props.get("hips_tile_format", ""),
                "hips_frame": props.get("hips_frame", ""),
                "hips_initial_ra": props.get("hips_initial_ra", ""),
                "hips_initial_dec": props.get("hips_initial_dec", ""),
                "hips_initial_fov": props.get("hips_initial_fov", ""),
            }
        )
    return out


def _not_found(what: str) -> Response:
    return Response(
        f"{what}: no such HiPS file; see /hips/ for the trees\n",
        status_code=404,
        media_type="text/plain; charset=utf-8",
    )


def build_hips_router(root: Path) -> APIRouter:
    """The ``/hips/`` routes over the trees in ``root``."""
    router = APIRouter()
    base = root.resolve() if root.exists() else root

    @router.get("/hips", include_in_schema=False)
    @router.get("/hips/", summary="Index of the HiPS trees")
    def hips_index(request: Request) -> Response:
        listed = trees(root)
        accept = request.headers.get("accept", "")
        if request.query_params.get("format") == "json" or (
            "application/json" in accept and "text/html" not in accept
        ):
            return JSONResponse(listed)
        rows = "".join(
            f'<li><a href="/hips/{html.escape(t["name"])}/">{html.escape(t["name"])}</a>: '
            f"{html.escape(t['obs_title'])} (order {html.escape(t['hips_order'])}, "
            f"{html.escape(t['hips_tile_format'])})</li>"
            for t in listed
        )
        body = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>HiPS trees</title></head>"
            f"<body><h1>HiPS trees</h1><ul>{rows or '<li>none yet: run skydm hips</li>'}</ul>"
            "</body></html>"
        )
        return HTMLResponse(body)

    @router.get("/hips/{name}/", summary="One HiPS tree's page (its properties)")
    def hips_tree(name: str) -> Response:
        if not _NAME.match(name) or ".." in name or not (root / name / "properties").is_file():
            return _not_found(name)
        return FileResponse(root / name / "properties", media_type=MEDIA[""])

    @router.get("/hips/{name}/{path:path}", summary="A file of a HiPS tree")
    def hips_file(name: str, path: str) -> Response:
        path = path.lstrip("/")  # a base URL given with its slash: .../color//Norder3/...
        shown = f"{name}/{path}"[:200]
        if not _NAME.match(name) or ".." in name or not _FILE.match(path):
            return _not_found(shown)
        target = root / name / path
        try:
            resolved = target.resolve(strict=True)
        except (OSError, RuntimeError):
            return _not_found(shown)
        if not resolved.is_relative_to(base) or not resolved.is_file():
            return _not_found(shown)
        return FileResponse(
            resolved,
            media_type=MEDIA[resolved.suffix],
            headers={"Cache-Control": "max-age=60", "Access-Control-Allow-Origin": "*"},
        )

    return router


def install_hips(app: FastAPI, root: Path) -> None:
    """Serve the trees in ``root`` (``<repo>/hips``) at ``/hips/``."""
    app.include_router(build_hips_router(Path(root)))
