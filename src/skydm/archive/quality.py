"""What lossy compression does to a repository's own images (a DMTN-068-style study).

For every quantization level ``q`` asked for, each sampled image is written
with the ``lossy<q>`` recipe (:mod:`skydm.archive.lossy`), read back, and
compared with the image as stored:

* compression ratio (uncompressed FITS bytes / compressed bytes) and write
  and read speed;
* noise growth ``sqrt(1 + var(Δ)/σ²) − 1`` over unmasked pixels, and the
  fraction of pixels changed by more than one quantum;
* forced PSF-flux error ``|ΔF|/σ_F``, windowed-centroid shift and the error of
  Gaussian-weighted second moments (size ``T`` and ellipticity), each per S/N
  bin, at the positions of the sources detected on the original;
* the background re-fit (largest change of the background model, in σ);
* coadds (``coadd``/``template`` datasets): noise growth and flux errors on
  the coadd itself; differences (``diff``): DIA detections added or lost.

The images compared are those stored; when they were themselves written
lossily the study measures the extra loss of a second quantization, and the
report says which codec each had.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skydm.archive.lossy import encode_exposure_hdulist, hdulist_bytes, noise_sigma
from skydm.archive.recipes import PlaneCodec, WriteRecipe
from skydm.errors import BadValueError, UserError
from skydm.image.exposure import Exposure
from skydm.image.mask import UNUSABLE

#: Dataset types whose images are studied as single-visit images.
VISIT_TYPES = ("calexp", "warp")
COADD_TYPES = ("coadd", "template")
DIFF_TYPES = ("diff",)


@dataclass(frozen=True)
class QualityConfig:
    """Tunables of the study, validated on construction.

    Parameters
    ----------
    q_levels : tuple of int
        Quantization levels to study.
    snr_edges : tuple of float
        Edges of the S/N bins (forced PSF-flux S/N on the original).
    detect_threshold : float
        Detection threshold in σ for the sources measured and for DIA sources.
    max_images : int
        Images sampled per dataset type (the first ones in registry order).
    match_radius : float
        Pixels within which a DIA detection on the decompressed difference
        is the same as one on the original.
    """

    q_levels: tuple[int, ...] = (4, 8, 16, 32)
    snr_edges: tuple[float, ...] = (5.0, 10.0, 20.0, 50.0, 100.0, math.inf)
    detect_threshold: float = 5.0
    max_images: int = 4
    match_radius: float = 2.0

    def __post_init__(self) -> None:
        if not self.q_levels:
            raise BadValueError("q", "", "a comma-separated list of levels such as 4,8,16,32")
        for q in self.q_levels:
            PlaneCodec.parse(f"lossy{q}", where="q")
        edges = self.snr_edges
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise BadValueError("snr_edges", edges, "at least two increasing S/N values")
        if not self.detect_threshold > 0:
            raise BadValueError("detect_threshold", self.detect_threshold, "a positive σ")
        if self.max_images < 1:
            raise BadValueError("max_images", self.max_images, "a positive number of images")
        if not self.match_radius > 0:
            raise BadValueError("match_radius", self.match_radius, "a positive number of pixels")


@dataclass
class SnrBin:
    """Errors of the sources in one S/N bin (medians over the sources)."""

    snr_lo: float
    snr_hi: float
    n: int
    flux_err_sigma: float  # median |ΔF| / σ_F
    flux_bias_sigma: float  # median ΔF / σ_F
    centroid_px: float  # median centroid shift
    size_frac: float  # median |ΔT| / T of the second moments
    ellipticity: float  # median |Δe|


@dataclass
class ImageQuality:
    """The comparison of one image with its ``lossy<q>`` copy."""

    dataset_type: str
    data_id: str
    stored_codec: str
    raw_bytes: int
    compressed_bytes: int
    write_s: float
    read_s: float
    quantum: float
    noise_growth: float
    frac_changed_gt_quantum: float
    background_max_sigma: float
    dia_added: int = 0
    dia_lost: int = 0
    sources: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass
class LevelQuality:
    """Everything measured at one quantization level."""

    q: int
    ratio: float
    write_mb_per_s: float
    read_mb_per_s: float
    noise_growth: float
    frac_changed_gt_quantum: float
    background_max_sigma: float
    bins: list[SnrBin]
    coadd: dict[str, float] | None
    difference: dict[str, float] | None
    images: list[ImageQuality] = field(default_factory=list, repr=False)


@dataclass
class QualityReport:
    """The study: one :class:`LevelQuality` per level, and what was sampled."""

    repo: str
    datasets: list[str]
    levels: list[LevelQuality]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-serializable data (per-image arrays left out)."""
        levels = []
        for level in self.levels:
            d = asdict(level)
            d["images"] = [
                {k: v for k, v in asdict(i).items() if k != "sources"} for i in level.images
            ]
            levels.append(d)
        return _finite({"repo": self.repo, "datasets": self.datasets, "levels": levels})


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -- one image ---------------------------------------------------------------


def roundtrip(exposure: Exposure, recipe: WriteRecipe) -> tuple[Exposure, int, int, float, float]:
    """``(decoded, raw_bytes, compressed_bytes, write_s, read_s)`` of ``exposure``."""
    from skydm.image.io import read_exposure

    hdul = exposure.to_hdulist()
    raw_bytes = len(hdulist_bytes(hdul))
    t0 = time.perf_counter()
    encoded, _ = encode_exposure_hdulist(hdul, recipe)
    data = hdulist_bytes(encoded)
    write_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="skydm-quality-") as tmp:
        path = Path(tmp) / "image.fits"
        path.write_bytes(data)
        t0 = time.perf_counter()
        decoded = read_exposure(path)
        read_s = time.perf_counter() - t0
    return decoded, raw_bytes, len(data), write_s, read_s


def _usable(exposure: Exposure) -> np.ndarray:
    return ((exposure.msk & np.uint32(UNUSABLE)) == 0) & np.isfinite(exposure.image)


def _moments(image: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted second moments ``(T, e1, e2)`` about each position."""
    half = math.ceil(4 * sigma)
    off = np.arange(-half, half + 1, dtype=np.float64)
    ny, nx = image.shape
    out = np.full((x.size, 3), np.nan)
    for k, (xc, yc) in enumerate(zip(x, y, strict=True)):
        ix, iy = round(float(xc)), round(float(yc))
        if ix - half < 0 or iy - half < 0 or ix + half >= nx or iy + half >= ny:
            continue
        stamp = image[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(np.float64)
        dx = off[None, :] + (ix - xc)
        dy = off[:, None] + (iy - yc)
        w = np.exp(-(dx**2 + dy**2) / (2 * sigma**2)) * np.nan_to_num(stamp)
        s = w.sum()
        if not s > 0:
            continue
        ixx, iyy, ixy = (w * dx**2).sum() / s, (w * dy**2).sum() / s, (w * dx * dy).sum() / s
        t = ixx + iyy
        out[k] = (t, (ixx - iyy) / t, 2 * ixy / t) if t > 0 else np.nan
    return out


def _detect(exposure: Exposure, threshold: float, *, both_signs: bool) -> np.ndarray:
    """Positions ``(n, 2)`` of sources detected on a copy of ``exposure``."""
    from skydm.image.detect import detect_sources

    found = []
    signs = (1.0, -1.0) if both_signs else (1.0,)
    for sign in signs:
        copy = exposure.copy()
        copy.image = (sign * copy.image).astype(copy.image.dtype)
        table = detect_sources(copy, threshold=threshold, set_mask=False)
        found.append(np.column_stack([np.asarray(table["x"]), np.asarray(table["y"])]))
    return np.concatenate(found) if found else np.zeros((0, 2))


def compare_images(
    original: Exposure, decoded: Exposure, *, quantum: float, threshold: float
) -> dict[str, Any]:
    """Pixel and source errors of ``decoded`` against ``original``.

    Returns a mapping with ``noise_growth``, ``frac_changed_gt_quantum``,
    ``background_max_sigma`` and ``sources`` (arrays ``snr``, ``dflux_sigma``,
    ``centroid_px``, ``size_frac``, ``ellipticity`` per detected source).
    """
    import sep

    from skydm.ap.forced import psf_fluxes
    from skydm.image.detect import estimate_background

    usable = _usable(original) & np.isfinite(decoded.image)
    delta = (decoded.image.astype(np.float64) - original.image)[usable]
    sigma = noise_sigma(original.image, usable)
    noise_growth = math.sqrt(1 + float(np.var(delta)) / sigma**2) - 1 if sigma > 0 else math.nan
    changed = float(np.mean(np.abs(delta) > quantum)) if quantum > 0 and delta.size else 0.0
    back_o, _ = estimate_background(original)
    back_d, _ = estimate_background(decoded)
    dback = np.abs(np.asarray(back_d, float) - np.asarray(back_o, float))[usable]
    background = float(dback.max() / sigma) if dback.size and sigma > 0 else math.nan

    sources: dict[str, np.ndarray] = {}
    if original.psf is not None:
        xy = _detect(original, threshold, both_signs=False)
        x, y = xy[:, 0], xy[:, 1]
        f0, e0 = psf_fluxes(original, x, y)
        f1, _ = psf_fluxes(decoded, x, y)
        psf_sigma = original.psf.fwhm / 2.3548
        bad = ~usable
        img0 = np.where(bad, 0.0, original.image).astype(np.float64)
        img1 = np.where(bad, 0.0, decoded.image).astype(np.float64)
        sig = np.full(x.size, psf_sigma)
        x0, y0, _ = sep.winpos(img0, x, y, sig, mask=bad)
        x1, y1, _ = sep.winpos(img1, x, y, sig, mask=bad)
        m0 = _moments(img0, x0, y0, 2 * psf_sigma)
        m1 = _moments(img1, x0, y0, 2 * psf_sigma)
        with np.errstate(divide="ignore", invalid="ignore"):
            sources = {
                "snr": f0 / e0,
                "dflux_sigma": (f1 - f0) / e0,
                "centroid_px": np.hypot(x1 - x0, y1 - y0),
                "size_frac": np.abs(m1[:, 0] - m0[:, 0]) / m0[:, 0],
                "ellipticity": np.hypot(m1[:, 1] - m0[:, 1], m1[:, 2] - m0[:, 2]),
            }
    return {
        "noise_growth": noise_growth,
        "frac_changed_gt_quantum": changed,
        "background_max_sigma": background,
        "sources": sources,
    }


def dia_changes(
    original: Exposure, decoded: Exposure, *, threshold: float, radius: float
) -> tuple[int, int]:
    """``(added, lost)``: detections (both signs) on ``decoded`` not on ``original``, and back."""
    a = _detect(original, threshold, both_signs=True)
    b = _detect(decoded, threshold, both_signs=True)

    def unmatched(p: np.ndarray, ref: np.ndarray) -> int:
        if not len(p):
            return 0
        if not len(ref):
            return len(p)
        d = np.hypot(p[:, None, 0] - ref[None, :, 0], p[:, None, 1] - ref[None, :, 1])
        return int(np.sum(d.min(axis=1) > radius))

    return unmatched(b, a), unmatched(a, b)


def bin_sources(sources: Sequence[dict[str, np.ndarray]], edges: Sequence[float]) -> list[SnrBin]:
    """Median errors of the sources of every image in each S/N bin."""
    keys = ("snr", "dflux_sigma", "centroid_px", "size_frac", "ellipticity")
    merged = {k: np.concatenate([s[k] for s in sources if s] or [np.zeros(0)]) for k in keys}
    bins = []
    for lo, hi in itertools.pairwise(edges):
        sel = (merged["snr"] >= lo) & (merged["snr"] < hi) & np.isfinite(merged["dflux_sigma"])

        def med(values: np.ndarray, sel: np.ndarray = sel) -> float:
            v = values[sel & np.isfinite(values)]
            return float(np.median(v)) if v.size else math.nan

        bins.append(
            SnrBin(
                snr_lo=float(lo), snr_hi=float(hi), n=int(sel.sum()),
                flux_err_sigma=med(np.abs(merged["dflux_sigma"])),
                flux_bias_sigma=med(merged["dflux_sigma"]),
                centroid_px=med(merged["centroid_px"]),
                size_frac=med(merged["size_frac"]),
                ellipticity=med(merged["ellipticity"]),
            )
        )  # fmt: skip
    return bins


# -- a repository --------------------------------------------------------------


def _stored_codec(repo: Any, ref: Any) -> str:
    from astropy.io import fits

    with fits.open(
        repo.get_path(ref.dataset_type, ref.data_id), disable_image_compression=True
    ) as hdul:
        for hdu in hdul:
            if hdu.name == "IMAGE":
                return str(hdu.header.get("SDMCODEC", "none"))
    return "none"


def measure_quality(
    repo: Any,
    config: QualityConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> QualityReport:
    """Run the study on ``repo``'s stored processed images.

    Parameters
    ----------
    repo : skydm.repo.Repository
        The repository; its ``calexp``/``warp``, ``coadd``/``template`` and
        ``diff`` datasets are sampled (``config.max_images`` of each type).
    config : QualityConfig, optional
        Levels, S/N bins and detection settings.
    progress : callable, optional
        Called with a short description before each image is measured.

    Raises
    ------
    UserError
        When the repository has no processed images to study.
    """
    config = config or QualityConfig()
    sample: dict[str, list[Any]] = {}
    for kind, types in (("visit", VISIT_TYPES), ("coadd", COADD_TYPES), ("diff", DIFF_TYPES)):
        refs = [r for t in types for r in repo.query(dataset_type=t)]
        sample[kind] = refs[: config.max_images]
    if not sample["visit"] and not sample["coadd"]:
        raise UserError(
            f"{repo.root}: no calexp, warp, coadd or template datasets to study; "
            "process some raws first (e.g. `skydm demo --repo DIR`)"
        )
    originals = {
        id(ref): (ref, repo.get_exposure(ref.dataset_type, ref.data_id), _stored_codec(repo, ref))
        for refs in sample.values()
        for ref in refs
    }
    levels = []
    for q in config.q_levels:
        recipe = WriteRecipe.named(f"lossy{q}")
        per_kind: dict[str, list[ImageQuality]] = {k: [] for k in sample}
        for kind, refs in sample.items():
            for ref in refs:
                ref, original, codec = originals[id(ref)]
                if progress is not None:
                    progress(f"q={q} {ref.dataset_type} {ref.data_id}")
                per_kind[kind].append(_one_image(ref, original, codec, recipe, config, kind))
        levels.append(_level(q, per_kind, config))
    names = [f"{r.dataset_type} {r.data_id}" for r, _, _ in originals.values()]
    return QualityReport(str(repo.root), names, levels)


def _one_image(
    ref: Any, original: Exposure, codec: str, recipe: WriteRecipe, config: QualityConfig, kind: str
) -> ImageQuality:
    decoded, raw_bytes, nbytes, write_s, read_s = roundtrip(original, recipe)
    assert recipe.image.q is not None
    quantum = noise_sigma(original.image, _usable(original)) / recipe.image.q
    cmp = compare_images(original, decoded, quantum=quantum, threshold=config.detect_threshold)
    result = ImageQuality(
        dataset_type=ref.dataset_type, data_id=str(ref.data_id), stored_codec=codec,
        raw_bytes=raw_bytes, compressed_bytes=nbytes, write_s=write_s, read_s=read_s,
        quantum=quantum, noise_growth=cmp["noise_growth"],
        frac_changed_gt_quantum=cmp["frac_changed_gt_quantum"],
        background_max_sigma=cmp["background_max_sigma"], sources=cmp["sources"],
    )  # fmt: skip
    if kind == "diff":
        result.dia_added, result.dia_lost = dia_changes(
            original, decoded, threshold=config.detect_threshold, radius=config.match_radius
        )
    return result


def _level(q: int, per_kind: dict[str, list[ImageQuality]], config: QualityConfig) -> LevelQuality:
    images = [i for kind in ("visit", "coadd", "diff") for i in per_kind[kind]]
    raw = sum(i.raw_bytes for i in images)
    visits = per_kind["visit"] or per_kind["coadd"]

    def mean(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    coadd = None
    if per_kind["coadd"]:
        coadd_bins = bin_sources([i.sources for i in per_kind["coadd"]], config.snr_edges)
        coadd = {
            "noise_growth": mean([i.noise_growth for i in per_kind["coadd"]]),
            "flux_err_sigma": mean([b.flux_err_sigma for b in coadd_bins if b.n]),
            "n_images": float(len(per_kind["coadd"])),
        }
    difference = None
    if per_kind["diff"]:
        difference = {
            "dia_added": float(sum(i.dia_added for i in per_kind["diff"])),
            "dia_lost": float(sum(i.dia_lost for i in per_kind["diff"])),
            "noise_growth": mean([i.noise_growth for i in per_kind["diff"]]),
            "n_images": float(len(per_kind["diff"])),
        }
    return LevelQuality(
        q=q,
        ratio=raw / max(sum(i.compressed_bytes for i in images), 1),
        write_mb_per_s=raw / 1e6 / max(sum(i.write_s for i in images), 1e-9),
        read_mb_per_s=raw / 1e6 / max(sum(i.read_s for i in images), 1e-9),
        noise_growth=mean([i.noise_growth for i in visits]),
        frac_changed_gt_quantum=mean([i.frac_changed_gt_quantum for i in visits]),
        background_max_sigma=max((i.background_max_sigma for i in visits), default=math.nan),
        bins=bin_sources([i.sources for i in visits], config.snr_edges),
        coadd=coadd,
        difference=difference,
        images=images,
    )


__all__ = [
    "ImageQuality", "LevelQuality", "QualityConfig", "QualityReport", "SnrBin",
    "bin_sources", "compare_images", "dia_changes", "measure_quality", "roundtrip",
]  # fmt: skip
