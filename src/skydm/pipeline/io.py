"""A unit's window on the repository: verified reads, writes with provenance.

Every dataset a unit writes records, in its registry metadata under
``provenance``, the run id, the task and unit, the task's config (full text
and SHA-256), the skydm version and every input dataset with its checksum.
The graph builder reads it back to decide whether a unit is already done
(:func:`skydm.pipeline.graph.is_done`) and ``skydm provenance`` follows it
back to the raws.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table

from skydm import __version__
from skydm.errors import UserError
from skydm.repo import DatasetRef, Repository

if TYPE_CHECKING:
    from skydm.image import Exposure
    from skydm.pipeline.task import DatasetKey, TaskConfig, WorkUnit


def provenance_record(
    unit: WorkUnit, config: TaskConfig, run_id: str, inputs: Mapping[DatasetKey, str]
) -> dict[str, Any]:
    """The provenance of a unit's outputs (JSON-ready)."""
    return {
        "run": run_id,
        "task": unit.task,
        "unit": unit.id,
        "config": config.to_dict(),
        "config_sha256": config.sha256(),
        "skydm_version": __version__,
        "inputs": [
            {"type": k.dataset_type, "data_id": k.data_id.as_dict(), "checksum": c}
            for k, c in inputs.items()
        ],
    }


class UnitIO:
    """Reads a unit's inputs and writes its outputs, recording provenance.

    Parameters
    ----------
    repo : Repository
        The repository.
    unit : WorkUnit
        The unit being run; only its declared outputs may be written.
    config : TaskConfig
        The task's config (recorded with every output).
    run_id : str
        The run's id.

    Raises
    ------
    UserError
        When a declared input is not in the repository.
    """

    def __init__(self, repo: Repository, unit: WorkUnit, config: TaskConfig, run_id: str) -> None:
        self.repo = repo
        self.unit = unit
        self.inputs: dict[DatasetKey, DatasetRef] = {}
        for key in unit.inputs:
            ref = repo.find(key.dataset_type, key.data_id)
            if ref is None:
                raise UserError(f"input {key} is not in {repo.root}; run the task that makes it")
            self.inputs[key] = ref
        self.provenance = provenance_record(
            unit, config, run_id, {k: r.checksum for k, r in self.inputs.items()}
        )
        self.written: list[DatasetRef] = []

    # -- reading -----------------------------------------------------------
    def exposure(self, key: DatasetKey) -> Exposure:
        """An input read as an Exposure (raws decompressed), checksum verified."""
        self._check_input(key)
        if key.dataset_type == "raw":
            from skydm.archive import read_raw

            # With what the instrument definition read at ingest: the
            # amplifiers' sections, gains, read noise and saturation.
            return read_raw(self.repo, key.data_id)
        return self.repo.get_exposure(key.dataset_type, key.data_id)

    def table(self, key: DatasetKey) -> Table:
        """An input FITS table, checksum verified."""
        self._check_input(key)
        return Table.read(io.BytesIO(self.repo.get_bytes(key.dataset_type, key.data_id)))

    def json(self, key: DatasetKey) -> Any:
        """An input JSON document, checksum verified."""
        self._check_input(key)
        return json.loads(self.repo.get_bytes(key.dataset_type, key.data_id))

    def path(self, key: DatasetKey) -> Any:
        """An input's file path, checksum verified (for readers that memory-map)."""
        self._check_input(key)
        return self.repo.get_path(key.dataset_type, key.data_id)

    def _check_input(self, key: DatasetKey) -> None:
        if key not in self.inputs:
            raise KeyError(f"{key} is not an input of {self.unit.id}")

    # -- writing -----------------------------------------------------------
    def put_exposure(self, key: DatasetKey, exposure: Exposure) -> DatasetRef:
        """Store an output Exposure."""
        self._check_output(key)
        ref = self.repo.put_exposure(
            exposure, key.dataset_type, key.data_id, replace=True, meta=self._meta()
        )
        return self._recorded(ref)

    def put_table(self, key: DatasetKey, table: Table) -> DatasetRef:
        """Store an output table as FITS."""

        def write(fh: BinaryIO) -> None:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                # Long metadata keys become HIERARCH cards, which is what we want.
                warnings.simplefilter("ignore", VerifyWarning)
                table.write(buf, format="fits")
            fh.write(buf.getvalue())

        return self.put_file(key, write)

    def put_json(self, key: DatasetKey, document: Any) -> DatasetRef:
        """Store an output JSON document."""
        data = json.dumps(document, sort_keys=True, indent=1).encode()
        return self.put_file(key, lambda fh: fh.write(data))

    def put_file(self, key: DatasetKey, write: Callable[[BinaryIO], Any]) -> DatasetRef:
        """Store an output written by ``write(fh)``."""
        self._check_output(key)
        ref = self.repo.put_file(
            write, key.dataset_type, key.data_id, replace=True, meta=self._meta()
        )
        return self._recorded(ref)

    def _meta(self) -> dict[str, Any]:
        return {"provenance": self.provenance}

    def _check_output(self, key: DatasetKey) -> None:
        if key not in self.unit.outputs:
            raise KeyError(f"{key} is not an output of {self.unit.id}")

    def _recorded(self, ref: DatasetRef) -> DatasetRef:
        # Identical content already stored keeps its old registration: bring
        # its provenance up to date so that the graph sees this run's inputs.
        if ref.meta.get("provenance") != self.provenance:
            stored = self.repo.registry.find(ref.dataset_type, ref.data_id)
            if stored is not None:
                self.repo.registry.replace(dataclasses.replace(stored, meta=self._meta()))
        self.written.append(ref)
        return ref
