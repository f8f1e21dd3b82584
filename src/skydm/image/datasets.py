"""The repository's images as the image services see them: opaque IDs and footprints.

A dataset is named to the outside world by an opaque, strictly parsed ID,
``ivo://skydm/<dataset_type>?<instrument>/<band>/<visit>/<detector>`` (plus
``/<skycell>`` for coadds and templates).  An ID is only ever looked up in
the registry; it never becomes part of a path, and the file the registry
names must lie inside the repository, so nothing else can be served.

:class:`ImageIndex` keeps each image's footprint (WCS, shape, centre, radius,
time, band) in memory, parsed once per stored file, so that finding every
image over a position costs no file access.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.wcs import WCS

from skydm.errors import BadFileError, BadValueError, UserError
from skydm.image.cutout import Cutout, cut_planes, cutout_file, prepare
from skydm.image.regions import NoOverlapError, Region, Stamp
from skydm.image.tiled import open_tiled
from skydm.repo import Repository
from skydm.repo.dataid import DataId, DatasetRef

#: Dataset types that hold images (cutouts, SIA, ObsCore).
IMAGE_TYPES = ("raw", "calexp", "diff", "warp", "coadd", "template")
#: ObsCore calibration level of each.
CALIB_LEVEL = {"raw": 1, "calexp": 2, "diff": 3, "warp": 2, "coadd": 3, "template": 3}
ID_PREFIX = "ivo://skydm/"
_PART = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
_ID = re.compile(
    rf"^ivo://skydm/(?P<type>[a-z][a-z0-9_]{{0,63}})\?(?P<instrument>{_PART})/(?P<band>{_PART})"
    rf"/(?P<visit>[0-9]{{1,19}})/(?P<detector>[0-9]{{1,19}})"
    rf"(?:/(?P<skycell>[A-Za-z0-9][A-Za-z0-9_.,+-]{{0,63}}))?$"
)


class UnknownDatasetError(UserError, LookupError):
    """An ID that is well formed but names no stored image."""


def dataset_id(dataset_type: str, data_id: DataId) -> str:
    """The public ID of a dataset (see the module's description)."""
    d = data_id
    tail = f"/{d.skycell}" if d.skycell is not None else ""
    return f"{ID_PREFIX}{dataset_type}?{d.instrument}/{d.band}/{d.visit}/{d.detector}{tail}"


def parse_dataset_id(text: str, *, name: str = "ID") -> tuple[str, DataId]:
    """``(dataset_type, data_id)`` of a public ID, checked strictly.

    Raises
    ------
    BadValueError
        When ``text`` is not an ID of this service (or names a type that
        holds no image).
    """
    match = _ID.match(text) if isinstance(text, str) and len(text) <= 400 else None
    if match is None or match["type"] not in IMAGE_TYPES:
        shown = text if isinstance(text, str) and len(text) <= 120 else f"{str(text)[:120]}..."
        raise BadValueError(
            name,
            shown,
            f"an image ID of this service, {ID_PREFIX}<type>?<instrument>/<band>/<visit>/"
            f"<detector>[/<skycell>] with <type> one of {', '.join(IMAGE_TYPES)}; "
            "find IDs with an SIA query or in ivoa.ObsCore",
        )
    data_id = DataId(
        instrument=match["instrument"],
        detector=int(match["detector"]),
        visit=int(match["visit"]),
        band=match["band"],
        skycell=match["skycell"],
    )
    return match["type"], data_id


@dataclass(frozen=True)
class ImageFootprint:
    """Where on the sky one stored image is, and what it is.

    Attributes
    ----------
    id : str
        The public ID.
    ref : DatasetRef
        The registry entry (absolute path).
    wcs : astropy.wcs.WCS
        Celestial WCS of the image plane.
    shape : tuple of int
        (rows, columns).
    ra, dec, radius : float
        Centre and the radius (degrees) of the circle through the corners.
    corners : tuple of (ra, dec)
        The four corners, in pixel order.
    header : Any
        The primary header (visit metadata).
    """

    id: str
    ref: DatasetRef
    wcs: WCS
    shape: tuple[int, int]
    ra: float
    dec: float
    radius: float
    corners: tuple[tuple[float, float], ...]
    header: Any

    @property
    def dataset_type(self) -> str:
        """raw, calexp, diff, ..."""
        return self.ref.dataset_type

    @property
    def mjd(self) -> float | None:
        """Mid-exposure MJD (registry metadata, else MJD-OBS), or None."""
        value = self.ref.meta.get("mjd")
        if value is None:
            value = self.header.get("MJD-OBS", self.header.get("MJD"))
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None

    @property
    def exptime(self) -> float | None:
        """Exposure time (s), or None."""
        value = self.ref.meta.get("exptime", self.header.get("EXPTIME"))
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    def contains(self, ra: float, dec: float) -> bool:
        """True when (ra, dec) falls on the image."""
        if separation(self.ra, self.dec, ra, dec) > self.radius * 1.01:
            return False
        with np.errstate(invalid="ignore"):
            x, y = self.wcs.all_world2pix([[ra, dec]], 0)[0]
        ny, nx = self.shape
        return bool(-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5)


def separation(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = (math.radians(v) for v in (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))


def footprint(ref: DatasetRef) -> ImageFootprint | None:
    """The footprint of a stored image, or None when it has no usable WCS."""
    tiled = open_tiled(ref.path)
    plane = cut_planes(tiled)[0]
    # Prepared now, so that the first cutout of this image costs no header work.
    wcs = prepare(tiled).wcs
    if not isinstance(wcs, WCS):
        return None
    ny, nx = plane.shape
    px = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5, (nx - 1) / 2])
    py = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5, (ny - 1) / 2])
    try:
        ra, dec = wcs.all_pix2world(px, py, 0)
    except Exception:  # a WCS astropy cannot invert: no footprint
        return None
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        return None
    radius = max(separation(ra[4], dec[4], a, d) for a, d in zip(ra[:4], dec[:4], strict=True))
    return ImageFootprint(
        id=dataset_id(ref.dataset_type, ref.data_id),
        ref=ref,
        wcs=wcs,
        shape=plane.shape,
        ra=float(ra[4] % 360.0),
        dec=float(dec[4]),
        radius=radius,
        corners=tuple((float(a % 360.0), float(d)) for a, d in zip(ra[:4], dec[:4], strict=True)),
        header=tiled.primary_header,
    )


class ImageIndex:
    """Footprints of a repository's images, refreshed from the registry on demand.

    Parameters
    ----------
    repo : Repository
        The repository (kept open by the caller).
    types : tuple of str
        Dataset types indexed.
    """

    def __init__(self, repo: Repository, types: tuple[str, ...] = IMAGE_TYPES) -> None:
        self.repo = repo
        self.types = types
        self._by_id: dict[str, ImageFootprint] = {}
        self._lock = threading.Lock()
        self._root = repo.root.resolve()
        self._refreshed = -math.inf

    def current(self, max_age: float = 5.0) -> ImageIndex:
        """This index, refreshed first if it is older than ``max_age`` seconds."""
        if time.monotonic() - self._refreshed > max_age:
            self.refresh()
        return self

    def refresh(self) -> list[ImageFootprint]:
        """Re-read the registry; parse only files not seen before. Returns every footprint."""
        refs = [r for t in self.types for r in self.repo.query(dataset_type=t)]
        fresh: dict[str, ImageFootprint] = {}
        for ref in refs:
            key = dataset_id(ref.dataset_type, ref.data_id)
            old = self._by_id.get(key)
            if old is not None and old.ref.checksum == ref.checksum:
                fresh[key] = old
                continue
            if not self._inside(ref.path) or not Path(ref.path).exists():
                continue
            try:
                fp = footprint(ref)
            except BadFileError:
                continue  # an unreadable file is for `skydm verify` to report
            if fp is not None:
                fresh[key] = fp
        with self._lock:
            self._by_id = fresh
            self._refreshed = time.monotonic()
        return list(fresh.values())

    def _inside(self, path: Path) -> bool:
        try:
            return Path(path).resolve().is_relative_to(self._root)
        except OSError:
            return False

    def all(self) -> list[ImageFootprint]:
        """Every indexed footprint."""
        return list(self._by_id.values())

    def get(self, image_id: str, *, name: str = "ID") -> ImageFootprint:
        """The footprint of an ID (parsed strictly), refreshing once if unknown.

        Raises
        ------
        BadValueError
            When the ID is malformed.
        UnknownDatasetError
            When it names no stored image.
        """
        dataset_type, data_id = parse_dataset_id(image_id, name=name)
        canonical = dataset_id(dataset_type, data_id)
        found = self._by_id.get(canonical)
        if found is None:
            self.refresh()
            found = self._by_id.get(canonical)
        if found is None:
            raise UnknownDatasetError(
                f"{name}={image_id!r}: no such image in this repository; "
                "find IDs with an SIA query or in ivoa.ObsCore"
            )
        return found

    def covering(
        self,
        ra: float,
        dec: float,
        *,
        types: tuple[str, ...] = ("calexp",),
        band: str | None = None,
    ) -> list[ImageFootprint]:
        """Images of ``types`` (and ``band``) on which (ra, dec) falls, by time."""
        found = [
            fp
            for fp in self._by_id.values()
            if fp.dataset_type in types
            and (band is None or fp.ref.data_id.band == band)
            and fp.contains(ra, dec)
        ]
        return sorted(found, key=lambda fp: (fp.mjd or 0.0, fp.id))


def cutout_dataset(fp: ImageFootprint, region: Region) -> Cutout:
    """Cut ``region`` out of the stored image ``fp``, after checking the file's size.

    The full checksum is for ``skydm verify``: reading the whole file would
    defeat reading only the tiles a cutout needs.

    Raises
    ------
    NoOverlapError
        When the region does not touch the image.
    """
    path = Path(fp.ref.path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadFileError(path, "is missing; run `skydm verify` on the repository") from None
    if size != fp.ref.size:
        raise BadFileError(
            path, f"has {size} bytes, not the {fp.ref.size} recorded; run `skydm verify`"
        )
    return cutout_file(path, region, source=fp.id)


def cutout(repo: Repository, dataset_type: str, data_id: DataId, region: Region) -> Cutout:
    """Cut ``region`` out of a repository dataset (the library call behind ``skydm cutout``).

    Parameters
    ----------
    repo : Repository
        The repository.
    dataset_type : str
        ``raw``, ``calexp``, ``diff``, ``warp``, ``coadd`` or ``template``.
    data_id : DataId
        Which one.
    region : Region
        What to cut.

    Raises
    ------
    DatasetNotFoundError
        When there is no such dataset.
    NoOverlapError
        When the region is off the image.
    """
    ref = repo.get_ref(dataset_type, data_id)
    fp = footprint(ref)
    if fp is None:
        raise BadFileError(ref.path, "has no celestial WCS, so no region can be cut out")
    return cutout_dataset(fp, region)


def stamps(
    index: ImageIndex,
    ra: float,
    dec: float,
    *,
    size: int = 51,
    types: tuple[str, ...] = ("calexp",),
    band: str | None = None,
) -> list[Cutout]:
    """Every epoch of a position: one ``size`` x ``size`` stamp per image covering it, by time."""
    region = Stamp(ra, dec, size)
    out = []
    for fp in index.covering(region.ra, region.dec, types=types, band=band):
        try:
            out.append(cutout_dataset(fp, region))
        except NoOverlapError:
            continue  # on the footprint's edge by less than a pixel
    return out
