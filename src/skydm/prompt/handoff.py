"""A detector's datasets handed between its tasks in memory, written after its alerts.

Rubin's Prompt Processing runs a detector's pipeline against a local
in-memory butler and exports the outputs to the central repository
afterwards; this is the same for one worker: :class:`HandoffIO` gives each
task its inputs from memory when an earlier task of the same detector made
them (the template from the worker's cache), and keeps every output in
memory as an :class:`Export`.  :meth:`Handoff.export` writes them, in the
order they were made, once the alerts are acknowledged, each with the
provenance ``skydm run ap`` records (the inputs' checksums are those of the
files just written, so an output is registered only after its inputs).

Tables and JSON documents are held as the bytes that would be written, and
read back from those bytes, so a task downstream sees exactly what it would
have read from the repository.  Exposures are held as objects (the lossy
encoding is what export costs; the tasks downstream used the in-memory
exposure before, too).

A worker killed before the export loses nothing that was registered: the
retry computes the detector again (the APDB keeps its association single,
the outbox its alerts) and exports it.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from astropy.table import Table

from skydm.errors import UserError
from skydm.pipeline.io import UnitIO

if TYPE_CHECKING:
    from skydm.image import Exposure
    from skydm.pipeline.task import DatasetKey, TaskConfig, WorkUnit
    from skydm.repo import DatasetRef, Repository


@dataclass(frozen=True)
class Export:
    """One output held in memory until the detector's export.

    Attributes
    ----------
    key : DatasetKey
        The dataset.
    payload : Exposure or bytes
        The Exposure, or the file's bytes (tables, JSON).
    unit : WorkUnit
        The unit that made it (its inputs give the provenance).
    config : TaskConfig
        That unit's task config.
    run_id : str
        The run.
    """

    key: DatasetKey
    payload: Any
    unit: WorkUnit
    config: TaskConfig
    run_id: str


@dataclass
class Handoff:
    """What a detector's tasks made, in memory, and what export will write.

    Attributes
    ----------
    objects : dict
        Exposures (and the template) by dataset; the bytes of tables and
        JSON documents.
    exports : list of Export
        Outputs to write, in the order made.
    skip : frozenset of str
        Dataset types handed over but never written (the ``diff_template``:
        only ``ap`` reads it, from memory here).
    """

    objects: dict[DatasetKey, Any] = field(default_factory=dict)
    exports: list[Export] = field(default_factory=list)
    skip: frozenset[str] = frozenset()

    def held(self, key: DatasetKey) -> bool:
        """Whether ``key`` was made by an earlier task of this detector (not yet written)."""
        return any(e.key == key for e in self.exports)

    def bytes_of(self, key: DatasetKey) -> bytes:
        """The held bytes of a table or JSON document."""
        found = self.objects[key]
        if not isinstance(found, bytes):
            raise TypeError(f"{key} is held as {type(found).__name__}, not bytes")
        return found

    def release(self) -> None:
        """Keep only what :meth:`export` writes (a deferred export: the worker goes on).

        The objects handed between tasks and the outputs never written (the
        ``diff_template``, 200 MB at 4096², and the cached template) are
        dropped; the outputs to write keep their payloads.
        """
        self.objects.clear()
        self.exports = [e for e in self.exports if e.key.dataset_type not in self.skip]

    def export(self, repo: Repository) -> list[DatasetRef]:
        """Write every held output (except :attr:`skip`) with its provenance; returns the refs.

        The outputs go in the order they were made, so each one's inputs are
        registered (and their checksums known) before it.
        """
        refs: list[DatasetRef] = []
        for item in self.exports:
            if item.key.dataset_type in self.skip:
                continue
            # An input never written (the diff_template) is left out of the
            # provenance: it records what the repository holds.
            inputs = tuple(k for k in item.unit.inputs if k.dataset_type not in self.skip)
            unit = dataclasses.replace(item.unit, inputs=inputs)
            unit_io = UnitIO(repo, unit, item.config, item.run_id)
            if isinstance(item.payload, bytes):
                refs.append(unit_io.put_file(item.key, functools.partial(_write, item.payload)))
            else:
                refs.append(unit_io.put_exposure(item.key, item.payload))
        return refs


def _write(data: bytes, fh: BinaryIO) -> None:
    fh.write(data)


class HandoffIO(UnitIO):
    """A :class:`UnitIO` whose inputs may come from memory and whose outputs stay there.

    Inputs made by an earlier task of the same detector, or given in
    ``handoff.objects`` (the preloaded template), are returned without a
    read; others are read from the repository (the raw).  Outputs are added
    to the handoff for :meth:`Handoff.export`.  Provenance is made at
    export, when every input has its file and checksum.
    """

    def __init__(
        self,
        repo: Repository,
        unit: WorkUnit,
        config: TaskConfig,
        run_id: str,
        handoff: Handoff,
    ) -> None:
        # Not UnitIO.__init__: it requires every input registered already.
        self.repo = repo
        self.unit = unit
        self.config = config
        self.run_id = run_id
        self.handoff = handoff
        self.inputs = {}
        for key in unit.inputs:
            if key in handoff.objects or handoff.held(key):
                continue
            ref = repo.find(key.dataset_type, key.data_id)
            if ref is None:
                raise UserError(f"input {key} is not in {repo.root}; run the task that makes it")
            self.inputs[key] = ref
        self.provenance = {}
        self.written = []

    def _check_input(self, key: DatasetKey) -> None:
        if key not in self.unit.inputs:
            raise KeyError(f"{key} is not an input of {self.unit.id}")

    # -- reading -----------------------------------------------------------
    def exposure(self, key: DatasetKey) -> Exposure:
        """An input Exposure, from memory when this detector holds it.

        Its visit metadata is completed from the data ID, as
        :meth:`Repository.get_exposure` does when it reads one back (a raw's
        header may lack the detector number that ingest translated).
        """
        self._check_input(key)
        found = self.handoff.objects.get(key)
        if found is None:
            return super().exposure(key)
        info, d = found.info, key.data_id
        info.instrument, info.detector, info.visit, info.band = (
            d.instrument, d.detector, d.visit, d.band,
        )  # fmt: skip
        return found  # type: ignore[no-any-return]

    def table(self, key: DatasetKey) -> Table:
        """An input table, read from the bytes held (as from its file) or from the repository."""
        self._check_input(key)
        if key in self.handoff.objects:
            return Table.read(io.BytesIO(self.handoff.bytes_of(key)))
        return super().table(key)

    def json(self, key: DatasetKey) -> Any:
        """An input JSON document, from the bytes held or from the repository."""
        self._check_input(key)
        if key in self.handoff.objects:
            return json.loads(self.handoff.bytes_of(key))
        return super().json(key)

    def path(self, key: DatasetKey) -> Any:
        """An input's file path: not available for what is held in memory."""
        if key in self.handoff.objects:
            raise KeyError(f"{key} is held in memory until the detector's export; it has no path")
        return super().path(key)

    # -- writing -----------------------------------------------------------
    def put_exposure(self, key: DatasetKey, exposure: Exposure) -> DatasetRef | None:  # type: ignore[override]
        """Hold an output Exposure for the export (returns nothing: it is not stored yet)."""
        self._check_output(key)
        self.handoff.objects[key] = exposure
        self.handoff.exports.append(Export(key, exposure, self.unit, self.config, self.run_id))
        return None

    # put_table and put_json are UnitIO's: they serialise exactly as for a
    # file and hand the bytes to put_file below, which holds them.

    def put_file(self, key: DatasetKey, write: Callable[[BinaryIO], Any]) -> DatasetRef | None:  # type: ignore[override]
        """Hold an output written by ``write(fh)``."""
        buf = io.BytesIO()
        write(buf)
        self._hold(key, buf.getvalue())
        return None

    def _hold(self, key: DatasetKey, data: bytes) -> None:
        self._check_output(key)
        self.handoff.objects[key] = data
        self.handoff.exports.append(Export(key, data, self.unit, self.config, self.run_id))
