"""Tasks: a stage declared by its inputs and outputs, a validated config and a ``run``.

A :class:`Task` names the dataset types it reads and writes (its
:class:`Connection` s, each with the data-ID dimensions it carries), says how
its work units follow from the datasets available (:meth:`Task.units`) and
does one unit's work (:meth:`Task.run`) through a :class:`UnitIO`, which
reads inputs from the repository and writes outputs with their provenance.
The graph builder and the executors know nothing else about a task.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from skydm.errors import BadValueError
from skydm.repo import DataId, DatasetRef

if TYPE_CHECKING:
    from skydm.pipeline.io import UnitIO
    from skydm.pipeline.regions import RegionIndex

#: The dimensions a data ID carries (those of :class:`skydm.repo.DataId`).
DIMENSIONS = ("instrument", "detector", "visit", "band", "skycell")


@dataclass(frozen=True)
class Connection:
    """A dataset type a task reads or writes, with the dimensions of its data IDs."""

    dataset_type: str
    dimensions: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = set(self.dimensions) - set(DIMENSIONS)
        if unknown:
            raise BadValueError(
                "dimensions", sorted(unknown), f"dimensions among {', '.join(DIMENSIONS)}"
            )


@dataclass(frozen=True, order=True)
class DatasetKey:
    """A dataset by type and data ID, existing or still to be made."""

    dataset_type: str
    data_id: DataId

    def __str__(self) -> str:
        return f"{self.dataset_type} {self.data_id}"


@dataclass(frozen=True)
class WorkUnit:
    """One unit of work (a quantum): a task applied to one data ID.

    Attributes
    ----------
    task : str
        Label of the task in its pipeline.
    data_id : DataId
        What the unit is of (a detector-visit, a sky cell and band, ...).
    inputs : tuple of DatasetKey
        Datasets it reads, in a fixed order (the result must not depend on it).
    outputs : tuple of DatasetKey
        Datasets it writes.
    """

    task: str
    data_id: DataId
    inputs: tuple[DatasetKey, ...]
    outputs: tuple[DatasetKey, ...]

    @cached_property
    def id(self) -> str:
        """A unique, readable name: ``task{data id}`` (formatted once: graphs ask it often)."""
        return f"{self.task}{self.data_id}"


@dataclass(frozen=True)
class TaskConfig:
    """Base of task configs: frozen dataclasses validated on construction.

    Subclasses add fields with defaults and override :meth:`validate`.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`BadValueError` naming the field when a value is not allowed."""

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (a fresh copy)."""
        return json.loads(self.text())

    def text(self) -> str:
        """The full config as canonical JSON (sorted keys), as recorded in provenance."""
        # A frozen config never changes: formatted once, not once per unit.
        found = self.__dict__.get("_text")
        if found is None:
            found = json.dumps(dataclasses.asdict(self), default=list, sort_keys=True)
            self.__dict__["_text"] = found
        return str(found)

    def sha256(self) -> str:
        """Hex SHA-256 of :meth:`text`."""
        found = self.__dict__.get("_sha256")
        if found is None:
            found = self.__dict__["_sha256"] = hashlib.sha256(self.text().encode()).hexdigest()
        return str(found)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None, *, where: str) -> TaskConfig:
        """A config with ``overrides`` applied to the defaults.

        Parameters
        ----------
        overrides : mapping, optional
            Field name -> value.
        where : str
            Where the overrides come from (for messages: a file and task).

        Raises
        ------
        BadValueError
            For an unknown field or a value of the wrong type or range.
        """
        names = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in (overrides or {}).items():
            if key not in names:
                raise BadValueError(
                    f"{where}: config field {key!r}", value, f"fields {', '.join(sorted(names))}"
                )
            default = getattr(cls(), key)
            values[key] = _coerce(f"{where}: {key}", value, default)
        return cls(**values)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (YAML gives lists for tuples, ints for floats)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise BadValueError(name, value, "true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValueError(name, value, "an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadValueError(name, value, "a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise BadValueError(name, value, "a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise BadValueError(name, value, "a list")
        return tuple(value)
    if default is None:
        return value
    raise BadValueError(name, value, f"a value like {default!r}")


@dataclass
class GraphContext:
    """What a task sees while its units are built.

    Attributes
    ----------
    available : dict
        Dataset type -> data IDs that exist in the repository or that an
        earlier task of the pipeline will make.
    refs : dict
        Dataset type -> data ID -> registered dataset (paths relative to the root).
    regions : RegionIndex
        Sky footprints of visit images (for sky-cell overlaps).
    skipped : dict
        Reason -> count of units a task could not form (e.g. no template).
    """

    available: dict[str, set[DataId]]
    refs: dict[str, dict[DataId, DatasetRef]]
    regions: RegionIndex
    skipped: dict[str, int] = field(default_factory=dict)

    def ids(self, dataset_type: str) -> list[DataId]:
        """The available data IDs of a type, sorted."""
        found = self.available.get(dataset_type, ())
        try:
            # The same order as _sort_key's, with the key made in C: a
            # type's data IDs all have a sky cell or none (None ties with None).
            return sorted(found, key=_FAST_KEY)
        except TypeError:  # sky cells and None mixed within one type
            return sorted(found, key=_sort_key)

    def raw_ref(self, data_id: DataId) -> DatasetRef | None:
        """The registered raw of a detector-visit (its footprint places the visit's products)."""
        key = data_id if data_id.skycell is None else data_id.with_skycell(None)
        return self.refs.get("raw", {}).get(key)

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` units left out for ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + n


_FAST_KEY = operator.attrgetter("instrument", "band", "skycell", "visit", "detector")


def _sort_key(d: DataId) -> tuple[str, str, str, int, int]:
    return (d.instrument, d.band, d.skycell or "", d.visit, d.detector)


class Task(abc.ABC):
    """A pipeline stage.

    Subclasses set :attr:`name`, :attr:`config_class`, :attr:`inputs` and
    :attr:`outputs` and implement :meth:`units` and :meth:`run`.
    """

    name: ClassVar[str]
    #: Dimensions of the task's units (a ``--where`` using others leaves them all in).
    dimensions: ClassVar[tuple[str, ...]]
    #: Units run one at a time in data-ID order (they share state, as the APDB).
    serial: ClassVar[bool] = False
    config_class: ClassVar[type[TaskConfig]]
    inputs: ClassVar[tuple[Connection, ...]]
    outputs: ClassVar[tuple[Connection, ...]]

    def __init__(self, config: TaskConfig | None = None) -> None:
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise BadValueError(
                f"{self.name} config", type(config).__name__, self.config_class.__name__
            )
        self.config = config

    @abc.abstractmethod
    def units(self, context: GraphContext) -> Iterable[WorkUnit]:
        """The units of this task given the datasets available."""

    @abc.abstractmethod
    def run(self, unit: WorkUnit, io: UnitIO) -> None:
        """Do one unit: read its inputs through ``io`` and write every output."""

    def unit(
        self, data_id: DataId, inputs: Iterable[DatasetKey], outputs: Iterable[DatasetKey]
    ) -> WorkUnit:
        """A :class:`WorkUnit` of this task."""
        return WorkUnit(self.name, data_id, tuple(inputs), tuple(outputs))
