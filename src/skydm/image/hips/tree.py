"""Build and update a HiPS 1.0 tree: tiles of every order, Allsky, MOC and ``properties``.

:func:`build_tree` resamples images (a band's coadds) into FITS tiles at the
order their pixel scale calls for (:func:`~skydm.image.hips.geometry.choose_order`),
makes each lower order down to 3 by halving, and writes picture tiles (PNG
with transparency off the coverage) with an asinh (Lupton) stretch fixed
once per tree, ``Norder3/Allsky.fits`` and ``.png``, ``Moc.fits`` (mocpy)
and ``properties``.

It is incremental: ``skydm-hips.json`` in the tree records which image (ID
and checksum) built which tiles, so that a later build redoes only the tiles
that images added, changed or removed touch, and their parents.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from skydm.errors import BadValueError, UserError, require_extra
from skydm.image.color import LuptonParams, color_from_planes, lupton_params
from skydm.image.hips.geometry import (
    MIN_ORDER,
    check_width,
    children,
    choose_order,
    pixel_scale_deg,
    tiles_touched,
)
from skydm.image.hips.tiles import (
    SourceImage,
    parent_from_children,
    read_fits_tile,
    sample_tile,
    tile_path,
    write_fits_tile,
    write_picture,
)
from skydm.progress import Progress
from skydm.repo.atomic import atomic_write_bytes

STATE = "skydm-hips.json"
#: Allsky: tiles of order 3 shrunk to this width, 27 to a row (as hipsgen lays them out).
ALLSKY_WIDTH = 64
ALLSKY_PER_ROW = 27


@dataclass(frozen=True)
class HipsSpec:
    """What tree to build.

    Attributes
    ----------
    name : str
        The tree's name (its directory and ``/hips/<name>/``).
    title : str
        ``obs_title``.
    width : int
        Tile width in pixels (512).
    order : int or None
        Deepest order; None chooses it from the images' pixel scale.
    q : float
        Asinh softening of the picture tiles.
    """

    name: str
    title: str
    width: int = 512
    order: int | None = None
    q: float = 8.0

    def __post_init__(self) -> None:
        check_width(self.width)
        if not _name_ok(self.name):
            raise BadValueError("HiPS name", self.name, "letters, digits, '_', '-' or '.'")
        if self.order is not None and not MIN_ORDER <= self.order <= 20:
            raise BadValueError("--order", self.order, f"an order from {MIN_ORDER} to 20")


def _name_ok(name: str) -> bool:
    return (
        0 < len(name) <= 64
        and name[0].isalnum()
        and all(c.isalnum() or c in "_-." for c in name)
        and ".." not in name
    )


@dataclass
class BuildReport:
    """What one build did.

    Attributes
    ----------
    path : Path
        The tree.
    order : int
        Its deepest order.
    tiles_written : int
        FITS tiles written at the deepest order (the resampled ones).
    tiles_removed : int
        Tiles deleted (no image covers them any more).
    tiles_total : int
        Tiles of the deepest order in the tree.
    lower_written : int
        Tiles of lower orders rewritten.
    seconds : float
        Wall time.
    rebuilt_tiles : list of int
        Indices of the deepest order's tiles redone.
    changed : dict of int to set of int
        Every order's tiles written or removed (what picture trees made from
        this one must redo).
    """

    path: Path
    order: int
    tiles_written: int = 0
    tiles_removed: int = 0
    tiles_total: int = 0
    lower_written: int = 0
    seconds: float = 0.0
    rebuilt_tiles: list[int] = field(default_factory=list)
    changed: dict[int, set[int]] = field(default_factory=dict)


def _load_state(root: Path) -> dict[str, object]:
    path = root / STATE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: rebuild everything
    return state if isinstance(state, dict) else {}


def build_tree(
    root: Path,
    spec: HipsSpec,
    sources: list[tuple[SourceImage, str]],
    *,
    workers: int = 1,
    progress: Progress | None = None,
) -> BuildReport:
    """Build or update the tree at ``root`` from ``sources`` ((image, checksum) pairs).

    ``workers`` threads resample the deepest order's tiles (each tile is
    independent; the HEALPix, WCS and interpolation code release the GIL).

    Raises
    ------
    UserError
        When there is no image to build from.
    """
    start = time.monotonic()
    for module in ("mocpy", "astropy_healpix", "PIL.Image"):
        require_extra(module, "hips")  # before anything is written
    if not sources:
        raise UserError(f"{root}: no image to build HiPS {spec.name!r} from; make coadds first")
    width = spec.width
    order = spec.order or max(choose_order(pixel_scale_deg(s.wcs), width) for s, _ in sources)
    state = _load_state(root)
    same_shape = state.get("order") == order and state.get("width") == width
    old: dict[str, dict[str, object]] = state.get("sources", {}) if same_shape else {}  # type: ignore[assignment]
    if not same_shape and root.exists():
        for sub in root.glob("Norder*"):
            shutil.rmtree(sub)  # another order or width: nothing of the old tree is reusable
    current = {s.id: (s, checksum) for s, checksum in sources}
    touched: dict[str, list[int]] = {}
    stats: dict[str, dict[str, float]] = {}
    redo: set[int] = set()
    for sid, (source, checksum) in current.items():
        prior = old.get(sid)
        if prior is not None and prior.get("checksum") == checksum:
            touched[sid] = [int(t) for t in prior["tiles"]]  # type: ignore[attr-defined]
            saved = prior.get("stats")
            stats[sid] = saved if isinstance(saved, dict) else _pixel_stats(source)
            continue
        stats[sid] = _pixel_stats(source)
        tiles = sorted(tiles_touched(source.wcs, source.shape, order, width))
        touched[sid] = tiles
        redo.update(tiles)
        if prior is not None:
            redo.update(int(t) for t in prior["tiles"])  # type: ignore[attr-defined]
    for sid, prior in old.items():
        if sid not in current:
            redo.update(int(t) for t in prior["tiles"])  # type: ignore[attr-defined]
    by_tile: dict[int, list[SourceImage]] = {}
    for sid, tiles in touched.items():
        for t in tiles:
            by_tile.setdefault(t, []).append(current[sid][0])
    params = _stretch(state, [s for s, _ in sources], spec.q) if same_shape else None
    if params is None:
        params = lupton_params(_planes([s for s, _ in sources]), q=spec.q)
    report = BuildReport(path=root, order=order, rebuilt_tiles=sorted(redo))
    if progress is not None:
        progress.total = (progress.total or 0) + len(redo)
    if workers < 1:
        raise BadValueError("--workers", workers, "a positive number of threads")

    for t in redo:  # read here: loaders may use the repository, which is not shared
        for source in by_tile.get(t, []):
            _ = source.image

    def one(t: int) -> int:
        """1: written; -1: removed (no data now); 0: no data, nothing there."""
        tile = sample_tile(order, t, width, by_tile.get(t, []))
        if tile is None:
            return -_remove(root, order, t)
        _write(root, order, t, tile, params)
        return 1

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for outcome in pool.map(one, sorted(redo)):
            report.tiles_written += outcome == 1
            report.tiles_removed += outcome == -1
            if progress is not None:
                progress.advance(1, f"order {order}")
    present = set(by_tile)
    changed = redo
    report.changed[order] = set(redo)
    order3: list[int] = []
    # Down to order 0: Aladin asks for the lowest orders' tiles when zoomed out.
    for k in range(order - 1, -1, -1):
        changed = {t // 4 for t in changed}
        present = {t // 4 for t in present}
        if k == MIN_ORDER:
            order3 = sorted(present)
        report.changed[k] = changed
        for t in sorted(changed):
            kids = {
                c: read_fits_tile(p)
                for c in children(t)
                if (p := tile_path(root, k + 1, c, "fits")).exists()
            }
            tile = parent_from_children(kids, width)
            if tile is None:
                _remove(root, k, t)
            else:
                _write(root, k, t, tile, params)
                report.lower_written += 1
    _allsky(root, order3, width, params)
    _moc(root, sorted(by_tile), order)
    _properties(root, spec, order, [s for s, _ in sources], list(stats.values()))
    report.tiles_total = len(by_tile)
    new_state = {
        "order": order,
        "width": width,
        "stretch": {"minimum": list(params.minimum), "stretch": params.stretch, "q": params.q},
        "sources": {
            sid: {"checksum": current[sid][1], "tiles": tiles, "stats": stats[sid]}
            for sid, tiles in touched.items()
        },
    }
    atomic_write_bytes(root / STATE, json.dumps(new_state, indent=1).encode())
    report.seconds = time.monotonic() - start
    return report


def _stretch(state: dict[str, object], sources: list[SourceImage], q: float) -> LuptonParams | None:
    saved = state.get("stretch")
    if not isinstance(saved, dict) or saved.get("q") != q:
        return None
    m = saved["minimum"]
    return LuptonParams((float(m[0]), float(m[1]), float(m[2])), float(saved["stretch"]), q)


def _planes(sources: list[SourceImage]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = np.concatenate([s.image[:: max(1, s.image.shape[0] // 256)].ravel() for s in sources])
    plane = flat.reshape(1, -1)
    return plane, plane, plane


def _remove(root: Path, order: int, index: int) -> int:
    removed = 0
    for ext in ("fits", "png"):
        path = tile_path(root, order, index, ext)
        if path.exists():
            path.unlink()
            removed = 1
    return removed


def picture(tile: np.ndarray, params: LuptonParams) -> tuple[np.ndarray, np.ndarray]:
    """Grey asinh-stretched RGB of a FITS tile and its alpha (0 off the coverage).

    The stretch is :func:`~skydm.image.color.color_from_planes` of the tile
    as all three bands, looked up in a table of it: with three equal bands
    it maps each value to one grey level, so the table is exact to a
    fraction of a level and costs nothing per pixel.
    """
    levels = _grey_table(params)
    values = np.nan_to_num(tile.astype(np.float64), nan=params.minimum[0])
    grey = np.interp(values, levels[0], levels[1]).round().astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    alpha = np.where(np.isfinite(tile), 255, 0).astype(np.uint8)
    return rgb, alpha


def _grey_table(params: LuptonParams) -> tuple[np.ndarray, np.ndarray]:
    # Values spaced evenly in the stretched (asinh) scale, from black to past white.
    u = np.linspace(0.0, 1.05 * params.q, 8192)
    values = params.minimum[0] + params.stretch * np.sinh(u) / params.q
    values = np.concatenate([[values[0] - params.stretch], values])
    row = values.reshape(1, -1)
    single = LuptonParams((params.minimum[0],) * 3, params.stretch, params.q)
    grey = color_from_planes((row, row, row), single)[0, :, 0].astype(np.float64)
    return values, grey


def _write(root: Path, order: int, index: int, tile: np.ndarray, params: LuptonParams) -> None:
    write_fits_tile(tile_path(root, order, index, "fits"), tile, order, index)
    rgb, alpha = picture(tile, params)
    write_picture(tile_path(root, order, index, "png"), rgb, alpha, "png")


def _allsky(root: Path, tiles: list[int], width: int, params: LuptonParams) -> None:
    """``Norder3/Allsky.fits`` and ``.png``: every order-3 tile shrunk, 27 to a row.

    The layout is in picture order (first row on top); the FITS file holds it
    bottom row first, like every FITS tile.
    """
    from astropy.io import fits

    w = ALLSKY_WIDTH
    rows = math.ceil(768 / ALLSKY_PER_ROW)
    top_first = np.full((rows * w, ALLSKY_PER_ROW * w), np.nan, dtype=np.float32)
    factor = width // w
    for t in tiles:
        path = tile_path(root, MIN_ORDER, t, "fits")
        if not path.exists():
            continue
        data = read_fits_tile(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks: NaN
            small = np.nanmean(data.reshape(w, factor, w, factor), axis=(1, 3))
        r, c = divmod(t, ALLSKY_PER_ROW)
        top_first[r * w : (r + 1) * w, c * w : (c + 1) * w] = small[::-1]
    fits_rows = top_first[::-1]

    buf = io.BytesIO()
    fits.PrimaryHDU(np.ascontiguousarray(fits_rows)).writeto(buf)
    (root / f"Norder{MIN_ORDER}").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / f"Norder{MIN_ORDER}" / "Allsky.fits", buf.getvalue())
    rgb, alpha = picture(fits_rows, params)
    write_picture(root / f"Norder{MIN_ORDER}" / "Allsky.png", rgb, alpha, "png")


def _moc(root: Path, tiles: list[int], order: int) -> None:
    """``Moc.fits``: the tiles of the deepest order that hold data."""
    mocpy = require_extra("mocpy", "hips")
    import tempfile

    cells = np.array(tiles, dtype=np.uint64)
    moc = mocpy.MOC.from_healpix_cells(cells, np.full(cells.size, order, dtype=np.uint8), order)
    with tempfile.TemporaryDirectory(prefix="skydm-moc-", dir=root) as tmp:
        path = Path(tmp) / "Moc.fits"
        moc.save(str(path), format="fits", overwrite=True)
        atomic_write_bytes(root / "Moc.fits", path.read_bytes())


def _pixel_stats(source: SourceImage) -> dict[str, float]:
    """A source's pixel range (0.5 and 99.5 percentiles, min, max), kept in the state."""
    values = source.image[np.isfinite(source.image)]
    values = values[:: max(1, values.size // 100_000)]
    if values.size == 0:
        return {"low": 0.0, "high": 1.0, "min": 0.0, "max": 1.0}
    low, high = np.percentile(values, [0.5, 99.5])
    return {
        "low": float(low),
        "high": float(high),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _properties(
    root: Path,
    spec: HipsSpec,
    order: int,
    sources: list[SourceImage],
    stats: list[dict[str, float]],
) -> None:
    """``properties`` per HiPS 1.0: the mandatory keys and those Aladin uses."""
    ras, decs, size = [], [], 0.0
    for s in sources:
        ny, nx = s.shape
        ra, dec = s.wcs.celestial.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
        ras.append(math.radians(ra))
        decs.append(dec)
        size = max(size, max(nx, ny) * pixel_scale_deg(s.wcs))
    mean_ra = math.degrees(math.atan2(np.mean(np.sin(ras)), np.mean(np.cos(ras)))) % 360.0
    span = max(decs) - min(decs) + size
    low, high = min(x["low"] for x in stats), max(x["high"] for x in stats)
    lowest, highest = min(x["min"] for x in stats), max(x["max"] for x in stats)
    lines = {
        "creator_did": f"ivo://skydm/P/{spec.name}",
        "obs_title": spec.title,
        "dataproduct_type": "image",
        "hips_version": "1.4",
        "hips_builder": "skydm",
        "hips_release_date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "hips_status": "public master clonableOnce",
        "hips_frame": "equatorial",
        "hips_order": str(order),
        "hips_order_min": "0",
        "hips_tile_width": str(spec.width),
        "hips_tile_format": "fits png",
        "hips_pixel_bitpix": "-32",
        "hips_pixel_cut": f"{low:.6g} {high:.6g}",
        "hips_data_range": f"{lowest:.6g} {highest:.6g}",
        "hips_initial_ra": f"{mean_ra:.6f}",
        "hips_initial_dec": f"{float(np.mean(decs)):.6f}",
        "hips_initial_fov": f"{min(180.0, 1.2 * span):.6f}",
    }
    text = "".join(f"{k:<20} = {v}\n" for k, v in lines.items())
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / "properties", text.encode())


def read_properties(path: Path) -> dict[str, str]:
    """The key/value pairs of a ``properties`` file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out
