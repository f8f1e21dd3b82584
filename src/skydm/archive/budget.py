"""Retention planning: bytes per night and per year for each dataset type.

The projection starts from what is stored: the size of every registered
file, and the nights on which its visits were observed (the ``mjd`` ingest
records with each raw; a night is the ``dayObs`` convention, the UTC date
twelve hours earlier, ``floor(MJD − 0.5)``).  Files written before the
current write recipe was set are rescaled: one sample of each such type is
compressed with the recipe and the ratio of the sizes applies to the rest.

Visit datasets (``raw``, ``calexp``, ``diff``...) grow with every night;
datasets of a sky cell (``coadd``, ``template``) are a fixed set, replaced
rather than added to, so they are reported as stored and not projected.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from skydm.errors import BadValueError, UserError

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15}


def parse_size(text: str, *, option: str = "--budget") -> int:
    """``"500TB"``, ``"2.5 PB"``, ``"1e12"`` -> bytes (decimal units)."""
    s = str(text).strip().upper().replace(" ", "")
    for unit in sorted(_UNITS, key=len, reverse=True):
        if s.endswith(unit):
            number, scale = s[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = s, 1
    try:
        value = float(number) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise BadValueError(option, text, "a positive size such as 500TB, 2.5PB or 1e12 (bytes)")
    return int(value)


@dataclass(frozen=True)
class BudgetConfig:
    """Assumptions of the projection, validated on construction.

    Parameters
    ----------
    nights_per_year : float
        Observing nights in a year.
    visits_per_night : float or None
        Visits a night in operations; by default the mean of the nights stored.
    budget_bytes : int or None
        Disk budget to compare the yearly total with.
    """

    nights_per_year: float = 300.0
    visits_per_night: float | None = None
    budget_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.nights_per_year <= 366:
            raise BadValueError("--nights-per-year", self.nights_per_year, "a number in (0, 366]")
        if self.visits_per_night is not None and not self.visits_per_night > 0:
            raise BadValueError("--visits-per-night", self.visits_per_night, "a positive number")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise BadValueError("--budget", self.budget_bytes, "a positive size")


@dataclass
class TypeBudget:
    """One dataset type's stored bytes and projection."""

    dataset_type: str
    recipe: str
    n_datasets: int
    stored_bytes: int
    recipe_scale: float  # projected / stored size of a file written with today's recipe
    per_visit_bytes: float
    bytes_per_night: float
    bytes_per_year: float
    grows_nightly: bool


@dataclass
class BudgetReport:
    """The projection of every dataset type, with totals against the budget."""

    nights_stored: int
    visits_stored: int
    visits_per_night: float
    nights_per_year: float
    types: list[TypeBudget]
    budget_bytes: int | None

    @property
    def bytes_per_night(self) -> float:
        """All growing types together."""
        return sum(t.bytes_per_night for t in self.types)

    @property
    def bytes_per_year(self) -> float:
        """All growing types together, plus the fixed sets once."""
        return sum(t.bytes_per_year for t in self.types) + sum(
            t.stored_bytes * t.recipe_scale for t in self.types if not t.grows_nightly
        )

    @property
    def years_to_fill(self) -> float | None:
        """Years until the budget is used up at this rate (``None`` without a budget)."""
        if self.budget_bytes is None:
            return None
        growth = sum(t.bytes_per_year for t in self.types)
        fixed = sum(t.stored_bytes * t.recipe_scale for t in self.types if not t.grows_nightly)
        return math.inf if growth <= 0 else max(self.budget_bytes - fixed, 0) / growth

    def to_json(self) -> dict[str, Any]:
        """JSON-serializable figures."""
        years = self.years_to_fill
        return {
            "nights_stored": self.nights_stored,
            "visits_stored": self.visits_stored,
            "visits_per_night": self.visits_per_night,
            "nights_per_year": self.nights_per_year,
            "bytes_per_night": self.bytes_per_night,
            "bytes_per_year": self.bytes_per_year,
            "budget_bytes": self.budget_bytes,
            "years_to_fill": None if years is None or not math.isfinite(years) else years,
            "types": [asdict(t) for t in self.types],
        }


def _recipe_scale(repo: Any, refs: list[Any], recipe: Any) -> float:
    """Projected / stored size, from one stored file re-encoded with ``recipe``."""
    from astropy.io import fits

    from skydm.archive.lossy import encode_exposure_hdulist, hdulist_bytes

    ref = refs[0]
    with fits.open(
        repo.get_path(ref.dataset_type, ref.data_id), disable_image_compression=True
    ) as hdul:
        names = [h.name for h in hdul]
        codec = hdul["IMAGE"].header.get("SDMCODEC") if "IMAGE" in names else None
    if "IMAGE" not in names or codec == recipe.image.name:
        return 1.0
    exposure = repo.get_exposure(ref.dataset_type, ref.data_id)
    hdul = exposure.to_hdulist()
    encoded, _ = encode_exposure_hdulist(hdul, recipe)
    return len(hdulist_bytes(encoded)) / max(ref.size, 1)


def project_budget(repo: Any, config: BudgetConfig | None = None) -> BudgetReport:
    """Project the repository's growth per night and per year.

    Parameters
    ----------
    repo : skydm.repo.Repository
        The repository; its raws must record ``mjd`` (ingest does).
    config : BudgetConfig, optional
        Nights per year, visits per night and the disk budget.

    Raises
    ------
    UserError
        When the repository holds no raws with an observation time.
    """
    config = config or BudgetConfig()
    nights: dict[tuple[str, int], int] = {}
    for ref in repo.query(dataset_type="raw"):
        mjd = ref.meta.get("mjd")
        if isinstance(mjd, int | float) and math.isfinite(mjd):
            nights[(ref.data_id.instrument, ref.data_id.visit)] = math.floor(mjd - 0.5)
    if not nights:
        raise UserError(
            f"{repo.root}: no raw dataset records an observation time (mjd), so there are no "
            "nights to project from; ingest raws with `skydm ingest` first"
        )
    n_nights = len(set(nights.values()))
    n_visits = len(nights)
    per_night = config.visits_per_night or n_visits / n_nights
    by_type: dict[str, list[Any]] = defaultdict(list)
    for ref in repo.query():
        by_type[ref.dataset_type].append(ref)
    types = []
    for dataset_type, refs in sorted(by_type.items()):
        recipe = repo.recipes.for_type(dataset_type)
        scale = _recipe_scale(repo, refs, recipe) if recipe is not None else 1.0
        stored = sum(r.size for r in refs)
        grows = all(r.data_id.skycell is None for r in refs)
        visits = {(r.data_id.instrument, r.data_id.visit) for r in refs} if grows else set()
        per_visit = stored * scale / max(len(visits), 1) if grows else 0.0
        nightly = per_visit * per_night
        types.append(
            TypeBudget(
                dataset_type=dataset_type,
                recipe="lossless container" if dataset_type == "raw" else (
                    "plain" if recipe is None else recipe.image.name
                ),
                n_datasets=len(refs), stored_bytes=stored, recipe_scale=scale,
                per_visit_bytes=per_visit, bytes_per_night=nightly,
                bytes_per_year=nightly * config.nights_per_year, grows_nightly=grows,
            )
        )  # fmt: skip
    return BudgetReport(
        nights_stored=n_nights,
        visits_stored=n_visits,
        visits_per_night=per_night,
        nights_per_year=config.nights_per_year,
        types=types,
        budget_bytes=config.budget_bytes,
    )


def format_bytes(n: float) -> str:
    """``1.23 GB``-style (decimal units)."""
    for unit in ("PB", "TB", "GB", "MB", "KB"):
        if abs(n) >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.3g} {unit}"
    return f"{n:.0f} B"
