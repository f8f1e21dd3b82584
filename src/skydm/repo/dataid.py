"""Data IDs, dataset references and the problems a repository scrub can find."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from skydm.errors import BadValueError, UserError

# Data ID strings become directory and file names, so they are restricted to
# characters that are safe on every filesystem and need no quoting.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_SKYCELL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,+-]{0,63}$")
_DATASET_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def check_dataset_type(dataset_type: str) -> str:
    """Return ``dataset_type`` if it is a valid name, else raise :class:`BadValueError`."""
    if not isinstance(dataset_type, str) or not _DATASET_TYPE.match(dataset_type):
        raise BadValueError(
            "dataset_type",
            dataset_type,
            "a lower-case name of letters, digits and '_' starting with a letter "
            "(raw, calexp, warp, coadd, template, diff, ...)",
        )
    return dataset_type


@dataclass(frozen=True, order=True)
class DataId:
    """What a dataset is of: instrument, detector, visit, band, and a sky cell for coadds.

    Parameters
    ----------
    instrument : str
        Instrument definition name (``generic``, ``skysim``, ...).
    detector : int
        Detector number, >= 0.
    visit : int
        Visit (exposure) number, >= 0; 0 for datasets that belong to no visit.
    band : str
        Filter band (``r``, ``i``, ``Clear``...).
    skycell : str or None
        Sky-cell identifier of coadds and templates; ``None`` for visit datasets.

    Raises
    ------
    BadValueError
        When a part is of the wrong type or holds characters that cannot be
        part of a file name.
    """

    instrument: str
    detector: int = 0
    visit: int = 0
    band: str = "unknown"
    skycell: str | None = None

    def __post_init__(self) -> None:
        for name in ("instrument", "band"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME.match(value):
                raise BadValueError(
                    name, value, "1-64 characters of letters, digits, '_', '.', '+', '-'"
                )
        for name in ("detector", "visit"):
            value = getattr(self, name)
            try:
                number = int(value)
            except (TypeError, ValueError):
                number = -1
            if isinstance(value, bool) or number != value or number < 0:
                raise BadValueError(name, value, "a non-negative integer")
            object.__setattr__(self, name, number)  # numpy integers become int
        if self.skycell is not None and (
            not isinstance(self.skycell, str) or not _SKYCELL.match(self.skycell)
        ):
            raise BadValueError(
                "skycell", self.skycell, "None or 1-64 characters of letters, digits, '_.,+-'"
            )

    @classmethod
    def unchecked(
        cls, instrument: str, detector: int, visit: int, band: str, skycell: str | None
    ) -> DataId:
        """A data ID of values already validated (registry rows, graph products).

        Skips :meth:`__post_init__`'s checks, which dominate reading a
        registry of 100,000 rows; anything from outside must use the
        constructor.
        """
        obj = object.__new__(cls)
        # A frozen dataclass's fields live in its __dict__; filling it
        # directly is what its own __init__ does, without the checks.
        obj.__dict__.update(
            instrument=instrument, detector=detector, visit=visit, band=band, skycell=skycell
        )
        return obj

    def with_skycell(self, skycell: str | None) -> DataId:
        """This data ID on sky cell ``skycell`` (validated)."""
        if skycell is not None and (not isinstance(skycell, str) or not _SKYCELL.match(skycell)):
            raise BadValueError(
                "skycell", skycell, "None or 1-64 characters of letters, digits, '_.,+-'"
            )
        return DataId.unchecked(self.instrument, self.detector, self.visit, self.band, skycell)

    def __hash__(self) -> int:
        # Data IDs key the graph's dicts and sets hundreds of thousands of
        # times per build: the hash is computed once per object.
        found = self.__dict__.get("_hash")
        if found is None:
            found = hash((self.instrument, self.detector, self.visit, self.band, self.skycell))
            self.__dict__["_hash"] = found
        return int(found)

    def __getstate__(self) -> dict[str, Any]:
        # The cached hash stays behind: string hashes differ between processes.
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def as_dict(self) -> dict[str, Any]:
        """The parts as a plain dictionary."""
        return {
            "instrument": self.instrument,
            "detector": self.detector,
            "visit": self.visit,
            "band": self.band,
            "skycell": self.skycell,
        }

    def __str__(self) -> str:
        parts = [f"instrument={self.instrument}", f"band={self.band}"]
        if self.skycell is not None:
            parts.append(f"skycell={self.skycell}")
        parts += [f"visit={self.visit}", f"detector={self.detector}"]
        return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class DatasetRef:
    """A registered dataset: what it is and where its file is.

    Attributes
    ----------
    dataset_type : str
        ``raw``, ``calexp``, ``warp``, ``coadd``, ``template``, ``diff``...
    data_id : DataId
        What the dataset is of.
    path : pathlib.Path
        The stored file (absolute when it comes from a :class:`Repository`,
        relative to the repository root when it comes from a registry).
    checksum : str
        Hex SHA-256 of the stored file, recorded when it was written.
    size : int
        Size of the stored file in bytes.
    created : datetime or None
        When the dataset was registered (UTC).
    meta : Mapping
        Extra metadata recorded with the dataset (for raws: the source file's
        name, size and checksum, observation time...).
    """

    dataset_type: str
    data_id: DataId
    path: Path
    checksum: str
    size: int
    created: datetime | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


ProblemKind = Literal["missing", "damaged"]


@dataclass(frozen=True)
class Problem:
    """A registered dataset whose file is missing or does not match its checksum."""

    kind: ProblemKind
    ref: DatasetRef
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.ref.path} ({self.ref.dataset_type} {self.ref.data_id}): " + (
            self.detail
        )


class DatasetNotFoundError(UserError, LookupError):
    """No dataset of the requested type and data ID is registered."""

    def __init__(self, dataset_type: str, data_id: DataId, root: object) -> None:
        self.dataset_type = dataset_type
        self.data_id = data_id
        super().__init__(
            f"{root}: no {dataset_type!r} dataset with data ID {data_id}; "
            "list what is there with Repository.query() or `skydm ingest` it first"
        )
