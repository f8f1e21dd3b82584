"""Labelled DIA sources from simulated surveys: the reliability training set.

A survey of the demo's shape (:func:`skydm.pipeline.demo.run_demo`) is run
through the same stages as the demo (calibration with cosmic-ray repair, a
CompareWarp template from the first visits, Alard-Lupton differencing, DIA
detection at 5 sigma), and every DIA source gets its features and its class
by the simulator's truth.  Everything stays in memory except the template's
inputs, which the coadd reads from a scratch repository.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.table import Table

from skydm.errors import BadValueError
from skydm.image import Exposure
from skydm.progress import Progress
from skydm.reliability.features import FEATURE_NAMES, compute_features
from skydm.reliability.truth import IGNORED, REAL, label_sources

if TYPE_CHECKING:
    from skydm.sim.survey import SimVisit


@dataclass(frozen=True)
class SampleConfig:
    """The simulated surveys a training or test set is made of.

    The defaults are the demo's survey (``skydm demo``): 10 visits of 512^2,
    the first 5 in the template, 6 transients and 2 variables.

    Parameters
    ----------
    n_visits, n_template : int
        Visits in all, and how many of the first build the template.
    size : int
        Image side, pixels (64 to 4096).
    n_transients, n_variables : int
        Real sources injected per survey.
    threshold : float
        DIA detection threshold, sigma.
    """

    n_visits: int = 10
    n_template: int = 5
    size: int = 512
    n_transients: int = 6
    n_variables: int = 2
    threshold: float = 5.0

    def __post_init__(self) -> None:
        if not 2 <= self.n_template < self.n_visits:
            raise BadValueError(
                "SampleConfig.n_template", self.n_template, f"2 to n_visits - 1 ({self.n_visits})"
            )
        if not 64 <= self.size <= 4096:
            raise BadValueError("SampleConfig.size", self.size, "64 to 4096 pixels")
        for name in ("n_transients", "n_variables"):
            if int(getattr(self, name)) < 0:
                raise BadValueError(f"SampleConfig.{name}", getattr(self, name), "an integer >= 0")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise BadValueError("SampleConfig.threshold", self.threshold, "a positive sigma")


@dataclass
class Sample:
    """Labelled DIA sources.

    Attributes
    ----------
    features : numpy.ndarray
        ``(n, len(FEATURE_NAMES))``.
    labels : numpy.ndarray
        Class of each source by the truth (:data:`skydm.reliability.truth.CLASSES`).
    seeds : numpy.ndarray
        Survey seed of each source.
    visits : numpy.ndarray
        Visit of each source.
    """

    features: np.ndarray
    labels: np.ndarray
    seeds: np.ndarray
    visits: np.ndarray

    @property
    def real(self) -> np.ndarray:
        """True for real sources (transients and variables)."""
        return np.isin(self.labels, REAL)

    @property
    def used(self) -> np.ndarray:
        """True for sources that count as real or bogus (not movers)."""
        return ~np.isin(self.labels, IGNORED)

    def __len__(self) -> int:
        return int(self.labels.size)

    @classmethod
    def concatenate(cls, samples: list[Sample]) -> Sample:
        """One sample of several."""
        if not samples:
            return cls(
                np.zeros((0, len(FEATURE_NAMES))),
                np.zeros(0, "U10"),
                np.zeros(0, int),
                np.zeros(0, int),
            )
        return cls(
            np.concatenate([s.features for s in samples]),
            np.concatenate([s.labels for s in samples]),
            np.concatenate([s.seeds for s in samples]),
            np.concatenate([s.visits for s in samples]),
        )

    def save(self, path: str | Path) -> None:
        """Write as ``.npz`` (for inspection; never committed)."""
        np.savez_compressed(
            path, features=self.features, labels=self.labels, seeds=self.seeds, visits=self.visits
        )

    @classmethod
    def load(cls, path: str | Path) -> Sample:
        """Read what :meth:`save` wrote."""
        with np.load(path) as f:
            return cls(f["features"], f["labels"], f["seeds"], f["visits"])


def simulate_sample(
    seed: int,
    config: SampleConfig | None = None,
    *,
    keep_dir: str | Path | None = None,
    quiet: bool = True,
) -> Sample:
    """Run one simulated survey to DIA sources and label them by its truth.

    Parameters
    ----------
    seed : int
        Survey seed.
    config : SampleConfig, optional
        The survey's shape; the demo's by default.
    keep_dir : path, optional
        Where each differenced visit's products (difference, science and
        template on its grid, DIA sources with their classes) are kept, and
        read back instead of simulated when already there: features can then
        be recomputed without simulating again.
    quiet : bool
        No progress output.

    Returns
    -------
    Sample
    """
    cfg = config or SampleConfig()
    keep = Path(keep_dir) / f"seed{seed}" if keep_dir is not None else None
    if keep is not None and (keep / "done").exists():
        return _from_kept(keep, seed)
    parts = [
        Sample(
            compute_features(v.sources, v.difference, science=v.science, template=v.template),
            np.asarray(v.sources["label"]),
            np.full(len(v.sources), seed),
            np.full(len(v.sources), v.visit),
        )
        for v in _differenced_visits(seed, cfg, keep, quiet)
    ]
    if keep is not None:
        (keep / "done").touch()
    return Sample.concatenate(parts)


def _sky_sigma(v: SimVisit) -> float:
    """Sky noise per pixel of a simulated visit, ADU."""
    cfg = v.config
    return math.sqrt(v.sky / cfg.gain + (cfg.read_noise / cfg.gain) ** 2)


def _released_truth(v: SimVisit) -> Table:
    """A visit's truth table, its pixels forgotten afterwards."""
    truth = v.truth
    v.release()
    return truth


def reference_fluxes(truths: list[Table]) -> dict[int, float]:
    """Mean true flux of each transient and variable over the template epochs.

    Parameters
    ----------
    truths : list of astropy.table.Table
        The truth tables of the visits the template was made of.
    """
    sums: dict[int, list[float]] = {}
    for truth in truths:
        for row in truth[np.isin(truth["kind"], REAL)]:
            sums.setdefault(int(row["id"]), []).append(float(row["flux"]))
    n = max(len(truths), 1)
    # An object off a template visit's image adds nothing to that visit.
    return {i: sum(f) / n for i, f in sums.items()}


@dataclass
class _DiffVisit:
    visit: int
    sources: Table
    difference: Exposure
    science: Exposure
    template: Exposure


def _from_kept(keep: Path, seed: int) -> Sample:
    from skydm.image import read_exposure

    parts = []
    for folder in sorted(p for p in keep.iterdir() if p.is_dir()):
        sources = Table.read(folder / "sources.ecsv")
        if (folder / "truth.ecsv").exists():
            # Classes by the current matching rules (they may have changed).
            truth = Table.read(folder / "truth.ecsv")
            ref = {
                int(k): float(f)
                for k, f in json.loads((folder / "reference.json").read_text()).items()
            }
            sources["label"] = label_sources(
                sources,
                truth,
                None,
                float(truth.meta["fwhm"]),
                sky_sigma=float(truth.meta["sky_sigma"]),
                reference_flux=ref,
            )
        diff = read_exposure(folder / "difference.fits")
        feats = compute_features(
            sources,
            diff,
            science=read_exposure(folder / "science.fits"),
            template=read_exposure(folder / "template.fits"),
        )
        n = len(sources)
        parts.append(
            Sample(
                feats, np.asarray(sources["label"]), np.full(n, seed), np.full(n, int(folder.name))
            )
        )
    return Sample.concatenate(parts)


def _differenced_visits(
    seed: int, cfg: SampleConfig, keep: Path | None, quiet: bool
) -> Iterator[_DiffVisit]:
    """The demo's stages on one survey; each differenced visit's products."""
    from skydm.coadd import SkyCell
    from skydm.coadd.template import build_template
    from skydm.diffim import detect_dia_sources, subtract
    from skydm.pipeline.calibrate import calibrate_raw
    from skydm.repo import DataId, Repository
    from skydm.sim import SurveyConfig, simulate_survey

    survey = simulate_survey(
        SurveyConfig(
            seed=seed,
            shape=(cfg.size, cfg.size),
            n_visits=cfg.n_visits,
            n_transients=cfg.n_transients,
            n_variables=cfg.n_variables,
        )
    )
    visits = sorted(survey.visits, key=lambda v: v.mjd)
    bar = Progress(f"sample seed {seed}", len(visits), quiet=quiet)
    with tempfile.TemporaryDirectory(prefix="skydm-reliability-") as tmp:
        repo = Repository.open(Path(tmp), create=True)
        try:
            calexps = []
            truths = []
            for v in visits[: cfg.n_template]:
                truths.append(v.truth)
                calexp = calibrate_raw(v.raw)
                data_id = DataId(v.info.instrument, v.detector, v.visit, v.band)
                repo.put_exposure(calexp, "calexp", data_id, replace=True)
                calexps.append(calexp)
                v.release()
                bar.advance()
            first = calexps[0]
            wcs = first.require_wcs("the template coadd")
            ny, nx = first.shape
            ra, dec = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
            scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
            cell = SkyCell.centred(float(ra), float(dec), (ny, nx), scale, id="sample")
            template, _ = build_template(
                repo, cell, first.info.band, visits=[v.visit for v in visits[: cfg.n_template]]
            )
        finally:
            repo.close()
    reference = reference_fluxes(truths)
    for v in visits[cfg.n_template :]:
        science = calibrate_raw(v.raw)
        result = subtract(science, template, method="al")
        sources = detect_dia_sources(result, threshold=cfg.threshold)
        sky_sigma = _sky_sigma(v)
        truth = v.truth
        sources["label"] = label_sources(
            sources, truth, None, v.psf.fwhm, sky_sigma=sky_sigma, reference_flux=reference
        )
        out = _DiffVisit(v.visit, sources, result.difference, science, result.template)
        if keep is not None:
            folder = keep / f"{v.visit:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            sources.write(folder / "sources.ecsv", overwrite=True)
            kept = truth.copy()
            kept.meta.update({"fwhm": v.psf.fwhm, "sky_sigma": sky_sigma})
            kept.write(folder / "truth.ecsv", overwrite=True)
            (folder / "reference.json").write_text(json.dumps(reference))
            for name in ("difference", "science", "template"):
                getattr(out, name).write(folder / f"{name}.fits")
            # Features from what was kept, as a later run reads it: a pixel
            # PSF is stored as float32, and a rounded PSF moves the features
            # (and so the model) by a hair.
            from skydm.image import read_exposure

            out = _DiffVisit(
                v.visit,
                sources,
                read_exposure(folder / "difference.fits"),
                read_exposure(folder / "science.fits"),
                read_exposure(folder / "template.fits"),
            )
        v.release()
        bar.advance()
        yield out


def label_alerts(archives: list[Path], seed: int, config: SampleConfig | None = None) -> Table:
    """The diaSource of every alert packet in ``archives``, with its class by truth.

    For the alerts of ``skydm demo --seed SEED`` (or of
    :func:`skydm.pipeline.demo.run_demo`) with the survey shape of ``config``.

    Parameters
    ----------
    archives : list of path
        The visits' Avro alert archives.
    seed : int
        The survey seed the demo ran with.
    config : SampleConfig, optional
        The demo's survey shape (its defaults are the demo's).

    Returns
    -------
    astropy.table.Table
        ``diaSourceId``, ``visit``, ``ra``, ``dec``, ``snr``, ``reliability``,
        ``reliabilityVersion`` and ``label`` (a class of
        :data:`skydm.reliability.truth.CLASSES`), one row per packet.
    """
    from skydm.alerts.archive import read_archive
    from skydm.sim import SurveyConfig, simulate_survey

    cfg = config or SampleConfig()
    survey = simulate_survey(
        SurveyConfig(
            seed=seed,
            shape=(cfg.size, cfg.size),
            n_visits=cfg.n_visits,
            n_transients=cfg.n_transients,
            n_variables=cfg.n_variables,
        )
    )
    by_visit = {v.visit: v for v in survey.visits}
    ordered = sorted(survey.visits, key=lambda v: v.mjd)
    reference = reference_fluxes([_released_truth(v) for v in ordered[: cfg.n_template]])
    rows: dict[int, list[dict[str, Any]]] = {}
    for path in archives:
        for packet in read_archive(Path(path)):
            src = packet["diaSource"]
            rows.setdefault(int(src["visit"]), []).append(src)
    keys = ("diaSourceId", "visit", "ra", "dec", "snr", "reliability", "reliabilityVersion")
    cols: dict[str, list[Any]] = {k: [] for k in (*keys, "label")}
    for visit, srcs in sorted(rows.items()):
        if visit not in by_visit:
            raise BadValueError("seed", seed, f"the seed of the survey with visit {visit}")
        v = by_visit[visit]
        table = Table({"ra": [s["ra"] for s in srcs], "dec": [s["dec"] for s in srcs]})
        labels = label_sources(
            table, v.truth, v.wcs, v.psf.fwhm, sky_sigma=_sky_sigma(v), reference_flux=reference
        )
        v.release()
        for src, label in zip(srcs, labels, strict=True):
            for k in keys:
                cols[k].append(src.get(k))
            cols["label"].append(str(label))
    out = Table()
    for k in keys:
        if k == "reliability":
            out[k] = np.array([np.nan if r is None else r for r in cols[k]], dtype=float)
        elif k == "reliabilityVersion":
            out[k] = np.array(["" if r is None else r for r in cols[k]], dtype=str)
        else:
            out[k] = cols[k]
    out["label"] = np.array(cols["label"], dtype="U10")
    return out
