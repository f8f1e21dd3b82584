"""The trees of a repository: one per band from its coadds, and a colour tree."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skydm.errors import BadValueError, UserError
from skydm.image.color import LuptonParams, color_from_planes
from skydm.image.hips.geometry import MIN_ORDER, choose_order, pixel_scale_deg
from skydm.image.hips.tiles import SourceImage, read_fits_tile, tile_path, write_picture
from skydm.image.hips.tree import STATE, BuildReport, HipsSpec, build_tree
from skydm.progress import Progress
from skydm.repo import Repository
from skydm.repo.atomic import atomic_write_bytes
from skydm.repo.dataid import DataId

COLOR = "color"
#: Preferred colour bands, red first; else the three reddest.
PREFERRED = ("i", "r", "g")
_ORDER_OF_BANDS = "ugrizy"


@dataclass
class HipsResult:
    """What ``skydm hips`` did: one report per band tree, and the colour tree's tiles.

    Attributes
    ----------
    out : Path
        The directory holding the trees.
    bands : dict of str to BuildReport
        Each band's tree.
    color_tiles : int
        Colour tiles written (all orders).
    color_bands : tuple of str
        The colour tree's bands, red first (empty when there is none).
    seconds : float
        Wall time.
    """

    out: Path
    bands: dict[str, BuildReport] = field(default_factory=dict)
    color_tiles: int = 0
    color_bands: tuple[str, ...] = ()
    seconds: float = 0.0


def _sources(repo: Repository, band: str, dataset_type: str) -> list[tuple[SourceImage, str]]:
    """A band's images with their checksums; pixels read only for the tiles redone."""
    from skydm.image.datasets import dataset_id, footprint

    out = []
    for ref in repo.query(dataset_type=dataset_type, band=band):
        fp = footprint(ref)  # the header only
        if fp is None:
            continue  # no place on the sky: nothing to tile

        def load(data_id: DataId = ref.data_id) -> np.ndarray:
            return np.asarray(repo.get_exposure(dataset_type, data_id).image, dtype=np.float32)

        source = SourceImage(
            dataset_id(dataset_type, ref.data_id), None, fp.wcs, shape=fp.shape, loader=load
        )
        out.append((source, ref.checksum))
    return out


def color_bands(bands: list[str]) -> tuple[str, ...]:
    """Three bands for the colour tree, red first, or () with fewer than three."""
    if len(bands) < 3:
        return ()
    if set(PREFERRED) <= set(bands):
        return PREFERRED
    rank = {b: _ORDER_OF_BANDS.find(b) if b in _ORDER_OF_BANDS else 99 for b in bands}
    return tuple(sorted(bands, key=lambda b: (rank[b], b))[-3:][::-1])


def build_repository_hips(
    repo: Repository,
    out: Path,
    *,
    bands: list[str] | None = None,
    dataset_type: str = "coadd",
    width: int = 512,
    workers: int = 1,
    progress: Progress | None = None,
) -> HipsResult:
    """Build or update the HiPS trees of ``repo``'s coadds under ``out``.

    Parameters
    ----------
    repo : Repository
        The repository.
    out : Path
        Directory of the trees (``<out>/<band>/``, ``<out>/color/``).
    bands : list of str, optional
        Bands to build; every band with a coadd when None.
    dataset_type : str
        The images tiled (``coadd``).
    width : int
        Tile width (512).
    workers : int
        Threads resampling tiles.
    progress : Progress, optional
        Counts tiles.

    Raises
    ------
    UserError
        When a band has no coadd, or the repository none at all.
    """
    start = time.monotonic()
    have = sorted({r.data_id.band for r in repo.query(dataset_type=dataset_type)})
    if bands is None:
        bands = have
        if not bands:
            raise UserError(
                f"{repo.root}: no {dataset_type} to build HiPS from; run `skydm coadd` first"
            )
    for band in bands:
        if band not in have:
            raise BadValueError(
                "--band", band, f"a band with a {dataset_type}: {', '.join(have) or 'none yet'}"
            )
    sources = {band: _sources(repo, band, dataset_type) for band in bands}
    every = [s for band in bands for s, _ in sources[band]]
    if not every:
        raise UserError(f"{repo.root}: no {dataset_type} of {', '.join(bands)} has a WCS")
    order = max(choose_order(pixel_scale_deg(s.wcs), width) for s in every)
    result = HipsResult(out=out)
    for band in bands:
        spec = HipsSpec(
            name=band, title=f"skydm {dataset_type}s, band {band}", width=width, order=order
        )
        result.bands[band] = build_tree(
            out / band, spec, sources[band], workers=workers, progress=progress
        )
    trio = color_bands(have)
    if trio and all((out / b / STATE).exists() for b in trio):
        result.color_bands = trio
        result.color_tiles = _color_tree(out, trio, order, width, result.bands)
    result.seconds = time.monotonic() - start
    return result


def _stretch_of(tree: Path) -> LuptonParams:
    saved = json.loads((tree / STATE).read_text())["stretch"]
    return LuptonParams(tuple(saved["minimum"]), float(saved["stretch"]), float(saved["q"]))  # type: ignore[arg-type]


def _color_tree(
    out: Path, trio: tuple[str, ...], order: int, width: int, reports: dict[str, BuildReport]
) -> int:
    """PNG and JPEG tiles of three band trees; only tiles a band build changed, if possible."""
    root = out / COLOR
    stretches = [_stretch_of(out / b) for b in trio]
    params = LuptonParams(
        (stretches[0].minimum[0], stretches[1].minimum[0], stretches[2].minimum[0]),
        float(np.mean([s.stretch for s in stretches])),
        stretches[0].q,
    )
    state_path = root / STATE
    key = {"order": order, "width": width, "bands": list(trio), "stretch": list(params.minimum)}
    try:
        same = json.loads(state_path.read_text()) == key
    except (OSError, ValueError):
        same = False
    written = 0
    if not same and root.exists():
        shutil.rmtree(root)
    for k in range(order, -1, -1):
        if same:
            todo = set().union(*(reports[b].changed.get(k, set()) for b in trio if b in reports))
        else:
            todo = {
                int(p.stem[4:])
                for b in trio
                for p in (out / b / f"Norder{k}").glob("Dir*/Npix*.fits")
            }
        for t in sorted(todo):
            paths = [tile_path(out / b, k, t, "fits") for b in trio]
            planes = [
                read_fits_tile(p) if p.exists() else np.full((width, width), np.nan, np.float32)
                for p in paths
            ]
            if not any(p.exists() for p in paths):
                for ext in ("png", "jpg"):
                    tile_path(root, k, t, ext).unlink(missing_ok=True)
                continue
            rgb = color_from_planes((planes[0], planes[1], planes[2]), params)
            alpha = np.where(
                np.isfinite(planes[0]) | np.isfinite(planes[1]) | np.isfinite(planes[2]), 255, 0
            )
            write_picture(tile_path(root, k, t, "png"), rgb, alpha, "png")
            write_picture(tile_path(root, k, t, "jpg"), rgb, None, "jpeg")
            written += 1
    allsky = [read_fits_tile(out / b / f"Norder{MIN_ORDER}" / "Allsky.fits") for b in trio]
    rgb = color_from_planes((allsky[0], allsky[1], allsky[2]), params)
    finite = np.isfinite(allsky[0]) | np.isfinite(allsky[1]) | np.isfinite(allsky[2])
    write_picture(root / f"Norder{MIN_ORDER}" / "Allsky.png", rgb, np.where(finite, 255, 0), "png")
    write_picture(root / f"Norder{MIN_ORDER}" / "Allsky.jpg", rgb, None, "jpeg")
    atomic_write_bytes(root / "Moc.fits", (out / trio[0] / "Moc.fits").read_bytes())
    props = (out / trio[0] / "properties").read_text().splitlines()
    lines = []
    for line in props:
        name = line.split("=", 1)[0].strip()
        if name in ("hips_pixel_bitpix", "hips_pixel_cut", "hips_data_range"):
            continue
        if name == "creator_did":
            line = f"{name:<20} = ivo://skydm/P/{COLOR}"
        elif name == "obs_title":
            line = f"{name:<20} = skydm colour ({'/'.join(trio)} as R/G/B)"
        elif name == "hips_tile_format":
            line = f"{name:<20} = png jpeg"
        lines.append(line)
    lines.append(f"{'dataproduct_subtype':<20} = color")
    atomic_write_bytes(root / "properties", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(state_path, json.dumps(key).encode())
    return written
