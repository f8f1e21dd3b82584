"""Following a dataset's provenance back to the raws.

Each output of a pipeline unit records its inputs (type, data ID, checksum),
task, config and run (:mod:`skydm.pipeline.io`); :func:`provenance_chain`
walks those records from one dataset down to datasets that record none (the
ingested raws).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from skydm.errors import BadValueError, UserError
from skydm.repo import DataId, DatasetRef, Repository

_INT_PARTS = ("detector", "visit")
_PARTS = ("instrument", "detector", "visit", "band", "skycell")


@dataclass
class ProvenanceNode:
    """A dataset and the datasets it was made from.

    Attributes
    ----------
    ref : DatasetRef or None
        The registered dataset; ``None`` when it is no longer registered.
    dataset_type, data_id : str, DataId
        What it is.
    checksum : str
        The checksum the consumer recorded (``stale`` tells whether the
        registered dataset still has it).
    record : dict or None
        Its own provenance (run, task, config...); ``None`` for raws.
    inputs : list of ProvenanceNode
    """

    dataset_type: str
    data_id: DataId
    checksum: str
    ref: DatasetRef | None
    record: dict[str, Any] | None
    inputs: list[ProvenanceNode] = field(default_factory=list)

    @property
    def stale(self) -> bool:
        """The registered dataset is not the one that was used (replaced since, or gone)."""
        return self.ref is None or self.ref.checksum != self.checksum

    def walk(self, depth: int = 0) -> Iterator[tuple[int, ProvenanceNode]]:
        """Depth-first (depth, node) pairs, this node first."""
        yield depth, self
        for child in self.inputs:
            yield from child.walk(depth + 1)


def parse_dataset(text: str, repo: Repository) -> DatasetRef:
    """The one dataset named by ``TYPE[:KEY=VALUE,...]`` (e.g. ``coadd:band=r,skycell=c1_2``).

    Raises
    ------
    BadValueError
        For a malformed name or a key that is not a data-ID part.
    UserError
        When no dataset, or more than one, matches.
    """
    dataset_type, _, rest = text.partition(":")
    constraints: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in _PARTS:
            raise BadValueError(
                "DATASET", text, f"TYPE[:KEY=VALUE,...] with keys among {', '.join(_PARTS)}"
            )
        if key in _INT_PARTS:
            try:
                constraints[key] = int(value)
            except ValueError:
                raise BadValueError(key, value, "an integer") from None
        else:
            constraints[key] = value
    refs = repo.query(dataset_type=dataset_type or None, **constraints)
    if len(refs) != 1:
        hint = (
            f"{len(refs)} match; add KEY=VALUE parts (e.g. {refs[0].dataset_type}:"
            f"visit={refs[0].data_id.visit},detector={refs[0].data_id.detector})"
            if refs
            else "none matches; list datasets with `skydm datasets --repo R`"
        )
        raise UserError(f"{repo.root}: DATASET {text!r} must name one dataset: {hint}")
    return refs[0]


def provenance_chain(repo: Repository, ref: DatasetRef) -> ProvenanceNode:
    """The provenance tree of ``ref`` down to the raws."""
    return _node(repo, ref.dataset_type, ref.data_id, ref.checksum, {})


def _node(
    repo: Repository,
    dataset_type: str,
    data_id: DataId,
    checksum: str,
    seen: dict[tuple[str, DataId, str], ProvenanceNode],
) -> ProvenanceNode:
    key = (dataset_type, data_id, checksum)
    if key in seen:
        return seen[key]
    ref = repo.find(dataset_type, data_id)
    record = ref.meta.get("provenance") if ref is not None else None
    node = ProvenanceNode(dataset_type, data_id, checksum, ref, record)
    seen[key] = node
    if isinstance(record, dict) and ref is not None and ref.checksum == checksum:
        for item in record.get("inputs", []):
            parts = item["data_id"]
            child_id = DataId(**{k: parts.get(k) for k in _PARTS})
            node.inputs.append(_node(repo, item["type"], child_id, item["checksum"], seen))
    return node
