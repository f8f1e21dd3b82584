"""The image services' logic: SIA queries, DataLink documents, SODA cutouts, stamps.

HTTP handlers (:mod:`skydm.services.images.handlers`) only turn requests into
:class:`~skydm.services.images.params.Params` and call these methods; the
pixels come from :mod:`skydm.image.cutout` and :mod:`skydm.image.datasets`,
the same code as ``skydm cutout``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from skydm.catalog.obscore import OBSCORE, obscore_row, sync_obscore
from skydm.catalog.obsloc import BAND_WAVELENGTHS
from skydm.catalog.schema import ColumnDef
from skydm.errors import BadValueError, UserError
from skydm.image.cutout import Cutout, combined_bytes, to_zip
from skydm.image.datasets import (
    IMAGE_TYPES,
    ImageFootprint,
    ImageIndex,
    UnknownDatasetError,
    cutout_dataset,
    dataset_id,
    stamps,
)
from skydm.image.regions import (
    Circle,
    NoOverlapError,
    Polygon,
    Range,
    Region,
    parse_circle,
    parse_polygon,
    parse_pos,
    pixel_box,
)
from skydm.repo import Repository
from skydm.repo.dataid import DataId
from skydm.services.images.config import ImagesConfig
from skydm.services.images.params import Params, parse_int, parse_interval
from skydm.services.images.votable import (
    SODA_SYNC_ID,
    InputParam,
    service_descriptor,
    table_document,
)

log = logging.getLogger(__name__)

FITS_MIME = "application/fits"
ZIP_MIME = "application/zip"
_DATALINK_COLUMNS = (
    ColumnDef("ID", "char", "", "meta.id;meta.main", "Input identifier", arraysize="*"),
    ColumnDef("access_url", "char", "", "meta.ref.url", "Link to the data", arraysize="*"),
    ColumnDef("service_def", "char", "", "meta.ref", "Service descriptor", arraysize="*"),
    ColumnDef("error_message", "char", "", "meta.code.error", "Why no link", arraysize="*"),
    ColumnDef("semantics", "char", "", "meta.code", "Vocabulary term", arraysize="*"),
    ColumnDef("description", "char", "", "meta.note", "What the link is", arraysize="*"),
    ColumnDef("content_type", "char", "", "meta.code.mime", "MIME type", arraysize="*"),
    ColumnDef("content_length", "long", "byte", "phys.size;meta.file", "Size in bytes"),
)
_SODA_PARAMS = (
    InputParam("CIRCLE", "double", "obs.field", "Cone to cut: ra dec radius", "3", "deg", "circle"),
    InputParam(
        "POLYGON", "double", "obs.field", "Polygon to cut: ra dec pairs", "*", "deg", "polygon"
    ),
    InputParam("POS", "char", "obs.field", "CIRCLE, RANGE or POLYGON (SODA syntax)"),
    InputParam("BAND", "double", "em.wl;stat.interval", "Wavelengths (m)", "2", "m", "interval"),
)


@dataclass(frozen=True)
class Payload:
    """A response body with its type and a suggested file name."""

    content: bytes
    mime: str
    filename: str


class ImageService:
    """The image services of one repository.

    Parameters
    ----------
    config : ImagesConfig
        Settings.
    """

    def __init__(self, config: ImagesConfig) -> None:
        self.config = config
        self.repo: Repository | None = None
        self.index: ImageIndex | None = None

    # --- life cycle -----------------------------------------------------------------
    def open(self) -> None:
        """Open the repository, index its images and publish them as ``ivoa.ObsCore``.

        A directory without a registry serves no image (the catalog may still
        be served by TAP).
        """
        try:
            self.repo = Repository.open(self.config.repo_dir, create=False)
        except UserError:
            log.info("no repository at %s: no images to serve", self.config.repo_dir)
            return
        self.index = ImageIndex(self.repo)
        self.index.refresh()
        if self.config.sync_obscore:
            try:
                sync_obscore(self.config.repo_dir, self.config.public_url)
            except Exception:  # the images are still worth serving without it
                log.exception("could not publish the repository's images as ivoa.ObsCore")

    def close(self) -> None:
        """Release the repository."""
        if self.repo is not None:
            self.repo.close()
            self.repo = None

    def _index(self) -> ImageIndex:
        if self.index is None:
            raise UserError(f"{self.config.repo_dir}: no skydm repository here; no images")
        return self.index

    def url(self, path: str) -> str:
        """An absolute URL of the services."""
        return f"{self.config.public_url}{path}"

    # --- SIA ------------------------------------------------------------------------
    def sia_query(self, params: Params) -> bytes:
        """Answer an SIAv2 query (POS, BAND, TIME, CALIB, COLLECTION, ID, DPTYPE, MAXREC)."""
        fmt = params.one("RESPONSEFORMAT")
        if fmt not in (None, "votable", "application/x-votable+xml") and not (
            fmt.startswith("application/x-votable+xml")
        ):
            raise BadValueError("RESPONSEFORMAT", fmt, "votable (application/x-votable+xml)")
        maxrec = self.config.default_maxrec
        if (text := params.one("MAXREC")) is not None:
            maxrec = min(parse_int("MAXREC", text), self.config.max_maxrec)
        regions = [parse_pos(p) for p in params.all("POS")]
        bands = [parse_interval("BAND", b) for b in params.all("BAND")]
        times = [parse_interval("TIME", t) for t in params.all("TIME")]
        calibs = {parse_int("CALIB", c) for c in params.all("CALIB")}
        collections = set(params.all("COLLECTION"))
        ids = set(params.all("ID"))
        dptypes = {d.lower() for d in params.all("DPTYPE")}
        instruments = set(params.all("INSTRUMENT"))
        rows = []
        index = self._index().current(max_age=0.0)
        for fp in sorted(index.all(), key=lambda f: (f.mjd or 0.0, f.id)):
            row = obscore_row(fp, self.config.public_url)
            if regions and not any(_overlaps(fp, r) for r in regions):
                continue
            if bands and not any(b.overlaps(row["em_min"], row["em_max"]) for b in bands):
                continue
            if times and not any(t.overlaps(row["t_min"], row["t_max"]) for t in times):
                continue
            if calibs and row["calib_level"] not in calibs:
                continue
            if collections and row["obs_collection"] not in collections:
                continue
            if ids and fp.id not in ids:
                continue
            if dptypes and "image" not in dptypes:
                continue
            if instruments and row["instrument_name"] not in instruments:
                continue
            rows.append(row)
            if len(rows) > maxrec:
                break
        overflow = len(rows) > maxrec
        return table_document(OBSCORE.columns, rows[:maxrec], overflow=overflow)

    # --- DataLink -------------------------------------------------------------------
    def datalink(self, params: Params) -> bytes:
        """The DataLink document of every ``ID``: file, cutout service, preview, inputs."""
        ids = params.all("ID")
        if not ids:
            raise BadValueError("ID", None, "one or more image IDs (ivo://skydm/...)")
        if len(ids) > self.config.max_cutouts:
            raise BadValueError("ID", f"{len(ids)} IDs", f"at most {self.config.max_cutouts}")
        rows: list[dict[str, Any]] = []
        descriptors = []
        for k, image_id in enumerate(ids):
            try:
                fp = self._index().get(image_id)
            except (BadValueError, UnknownDatasetError) as exc:
                rows.append({"ID": image_id, "error_message": f"NotFoundFault: {exc}"})
                continue
            q = quote(fp.id, safe="")
            ident = f"soda{k}"
            rows += [
                {
                    "ID": fp.id,
                    "access_url": self.url(f"/images/files?ID={q}"),
                    "semantics": "#this",
                    "description": f"the stored {fp.dataset_type} file",
                    "content_type": FITS_MIME,
                    "content_length": fp.ref.size,
                },
                {
                    "ID": fp.id,
                    "service_def": ident,
                    "semantics": "#cutout",
                    "description": "cutouts with image, variance and mask planes (SODA)",
                    "content_type": FITS_MIME,
                },
                {
                    "ID": fp.id,
                    "access_url": self.url(f"/images/preview?ID={q}"),
                    "semantics": "#preview",
                    "description": "a PNG preview of the image",
                    "content_type": "image/png",
                },
            ]
            for input_id in self._inputs(fp):
                rows.append(
                    {
                        "ID": fp.id,
                        "access_url": self.url(f"/datalink/links?ID={quote(input_id, safe='')}"),
                        "semantics": "#progenitor",
                        "description": f"made from {input_id}",
                        "content_type": "application/x-votable+xml;content=datalink",
                    }
                )
            value = InputParam("ID", "char", "meta.id;meta.dataset", "The image", value=fp.id)
            descriptors.append(
                service_descriptor(
                    ident, SODA_SYNC_ID, self.url("/soda/sync"), (value, *_SODA_PARAMS)
                )
            )
        return table_document(_DATALINK_COLUMNS, rows, extra_resources="".join(descriptors))

    def _inputs(self, fp: ImageFootprint) -> list[str]:
        """IDs an image was made from: a coadd's inputs, a calexp's raw, a difference's calexp.

        A coadd's inputs are as recorded when it was made, else the calexps
        of its band under it.
        """
        if fp.ref.data_id.skycell is None:
            source = {"calexp": "raw", "diff": "calexp"}.get(fp.dataset_type)
            if source is None:
                return []
            wanted = dataset_id(source, fp.ref.data_id)
            return [wanted] if any(o.id == wanted for o in self._index().all()) else []
        recorded = fp.ref.meta.get("inputs")
        if isinstance(recorded, list):
            out = []
            for item in recorded:
                try:
                    kind = str(item["dataset_type"])
                    parts = {k: item[k] for k in ("instrument", "detector", "visit", "band")}
                    out.append(dataset_id(kind, DataId(**parts, skycell=item.get("skycell"))))
                except (KeyError, TypeError, UserError):
                    continue
            return out
        band = fp.ref.data_id.band
        return [
            other.id
            for other in self._index().all()
            if other.dataset_type == "calexp"
            and other.ref.data_id.band == band
            and _overlaps(other, Circle(fp.ra, fp.dec, min(fp.radius, 1.0)))
        ]

    def file(self, image_id: str) -> Path:
        """The stored file of an image (for DataLink's ``#this``): registry path, in the repo."""
        fp = self._index().get(image_id)
        return Path(fp.ref.path)

    def footprint(self, image_id: str) -> ImageFootprint:
        """The footprint of an ID (strictly parsed, looked up in the registry)."""
        return self._index().get(image_id)

    # --- SODA -----------------------------------------------------------------------
    def soda_regions(self, params: Params) -> list[Region]:
        """Every region of a SODA request (CIRCLE, POLYGON, POS), at least one."""
        regions: list[Region] = [parse_circle(c) for c in params.all("CIRCLE")]
        regions += [parse_polygon(p) for p in params.all("POLYGON")]
        regions += [parse_pos(p) for p in params.all("POS")]
        if not regions:
            raise BadValueError(
                "CIRCLE/POLYGON/POS",
                None,
                "at least one region to cut (SODA CIRCLE, POLYGON or POS)",
            )
        return regions

    def soda(self, params: Params) -> Payload:
        """Cut every region out of every ``ID``: one FITS file, or several in one MEF or a zip.

        Raises
        ------
        UserError
            For a missing or bad parameter, an unknown ID, or a region that
            misses an image (each names what is wrong).
        """
        ids = params.all("ID")
        if not ids:
            raise BadValueError("ID", None, "one or more image IDs (ivo://skydm/...)")
        regions = self.soda_regions(params)
        if len(ids) * len(regions) > self.config.max_cutouts:
            raise BadValueError(
                "ID x regions",
                len(ids) * len(regions),
                f"at most {self.config.max_cutouts} cutouts",
            )
        fmt = _response_format(params.one("RESPONSEFORMAT"))
        bands = [parse_interval("BAND", b) for b in params.all("BAND")]
        footprints = [self._index().get(i) for i in ids]
        cutouts = []
        for fp in footprints:
            if bands:
                wl = BAND_WAVELENGTHS.get(fp.ref.data_id.band.lower())
                lo, hi = wl if wl else (None, None)
                if not any(b.overlaps(lo, hi) for b in bands):
                    raise NoOverlapError(
                        f"BAND: {fp.id} (band {fp.ref.data_id.band}) is outside the band asked for"
                    )
            cutouts += [cutout_dataset(fp, region) for region in regions]
        return _payload(cutouts, fmt, "cutout")

    def stamps(self, params: Params) -> Payload:
        """Every epoch of one position as fixed-size stamps (``POS=ra dec`` or ``RA``/``DEC``)."""
        ra, dec = _position(params)
        size = parse_int("SIZE", params.one("SIZE") or "51", minimum=1)
        types = tuple(params.all("DPTYPE") or params.all("TYPE") or ["calexp"])
        for t in types:
            if t not in IMAGE_TYPES:
                raise BadValueError("TYPE", t, f"one of {', '.join(IMAGE_TYPES)}")
        band = params.one("BAND")
        fmt = _response_format(params.one("RESPONSEFORMAT") or params.one("FORMAT"))
        found = stamps(self._index().current(), ra, dec, size=size, types=types, band=band)
        if not found:
            raise NoOverlapError(f"POS: no {'/'.join(types)} image covers {ra:g} {dec:g}")
        if len(found) > self.config.max_cutouts:
            found = found[: self.config.max_cutouts]
        return _payload(found, fmt, "stamps", force_multi=True)


def _position(params: Params) -> tuple[float, float]:
    text = params.one("POS")
    if text is None and params.one("RA") is not None:
        text = f"{params.one('RA')} {params.one('DEC')}"
    if text is None:
        raise BadValueError("POS", None, "'ra dec' in degrees (or RA and DEC)")
    parts = text.replace("CIRCLE", "").split()
    try:
        ra, dec = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise BadValueError("POS", text, "'ra dec' in degrees") from None
    if not (math.isfinite(ra) and math.isfinite(dec) and -90 <= dec <= 90):
        raise BadValueError("POS", text, "finite ra and a dec between -90 and 90 degrees")
    return ra % 360.0, dec


def _response_format(value: str | None) -> str:
    if value in (None, "", "fits", FITS_MIME, "image/fits"):
        return FITS_MIME
    if value in ("zip", ZIP_MIME):
        return ZIP_MIME
    raise BadValueError("RESPONSEFORMAT", value, "application/fits (default) or application/zip")


def _payload(cutouts: list[Cutout], fmt: str, stem: str, *, force_multi: bool = False) -> Payload:
    if fmt == ZIP_MIME:
        names = [f"{k:04d}_{_file_stem(c.source)}.fits" for k, c in enumerate(cutouts, 1)]
        return Payload(to_zip(cutouts, names), ZIP_MIME, f"{stem}.zip")
    if len(cutouts) == 1 and not force_multi:
        return Payload(cutouts[0].to_bytes(), FITS_MIME, f"{_file_stem(cutouts[0].source)}.fits")
    return Payload(combined_bytes(cutouts), FITS_MIME, f"{stem}.fits")


def _file_stem(image_id: str) -> str:
    """A file-name-safe rendering of an ID (for Content-Disposition and zip members)."""
    tail = image_id.removeprefix("ivo://skydm/")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tail)[:120]


def _overlaps(fp: ImageFootprint, region: Region) -> bool:
    """True when ``region`` touches the image ``fp``."""
    if isinstance(region, Circle):
        from skydm.image.datasets import separation

        if separation(fp.ra, fp.dec, region.ra, region.dec) > fp.radius + region.radius:
            return False
    elif isinstance(region, Range):
        if fp.dec + fp.radius < region.dec_min or fp.dec - fp.radius > region.dec_max:
            return False
    elif isinstance(region, Polygon):
        pass
    try:
        pixel_box(region, fp.wcs, fp.shape)
    except NoOverlapError:
        return False
    return True
