"""Giving datasets back as files: archived raws byte for byte, processed datasets as FITS.

:func:`plan_retrieval` decides, before anything is written, which file each
selected dataset becomes:

* a raw ingested from a single-image file → that file, under its original name;
* every detector of a multi-extension raw selected → the original file,
  rebuilt byte for byte from the detector files (:func:`~skydm.archive.mef.join_mef`);
* only some detectors → each detector file (the source's primary HDU and the
  detector's extension), named ``<stem>.hdu<N>.fits``;
* any other dataset → its stored FITS file, named from its type and data ID.

:func:`retrieve` then checks that no target exists (unless ``overwrite``)
and writes each file atomically, verifying every stored file's checksum and
every rebuilt raw's SHA-256 on the way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Literal

from skydm.archive.container import restore_bytes
from skydm.archive.mef import join_mef
from skydm.errors import BadValueError, ConflictError
from skydm.progress import Progress
from skydm.repo import DatasetRef, Repository
from skydm.repo.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from skydm.repo.where import WhereExpr

RAW = "raw"
Kind = Literal["raw", "mef", "detector", "dataset"]


@dataclass(frozen=True)
class Retrieval:
    """One file to write: what it is made of and where it goes.

    Attributes
    ----------
    name : str
        File name under the output directory.
    kind : str
        ``raw`` (a whole ingested file), ``mef`` (a multi-extension raw rebuilt
        from all its detectors), ``detector`` (one detector's file), or
        ``dataset`` (a processed dataset's stored FITS file).
    refs : tuple of DatasetRef
        The datasets it is made of (the detectors in file order for ``mef``).
    """

    name: str
    kind: Kind
    refs: tuple[DatasetRef, ...]


@dataclass
class RetrieveReport:
    """What :func:`retrieve` wrote."""

    written: list[tuple[Path, Retrieval]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Total size of the files written."""
        return sum(path.stat().st_size for path, _ in self.written)


def select_datasets(
    repo: Repository,
    *,
    dataset_type: str | None = None,
    where: str | WhereExpr | None = None,
) -> list[DatasetRef]:
    """Registered datasets of ``dataset_type`` (any when ``None``) whose data ID matches ``where``.

    Raises
    ------
    WhereError
        When ``where`` is not a valid expression (the bad token is named).
    BadValueError
        When ``dataset_type`` is not a valid dataset type name.
    """
    from skydm.repo.where import select

    refs = repo.query(dataset_type=dataset_type)
    return select(refs, where)


def _stem(name: str) -> tuple[str, str]:
    for suffix in (".fits.fz", ".fits", ".fit", ".fts", ".fz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ".fits"


def _dataset_name(ref: DatasetRef) -> str:
    d = ref.data_id
    cell = f"_{d.skycell}" if d.skycell is not None else ""
    return f"{ref.dataset_type}_{d.instrument}_{d.band}{cell}_{d.visit}_{d.detector}.fits"


def plan_retrieval(refs: Sequence[DatasetRef]) -> list[Retrieval]:
    """The files that give back ``refs`` (see the module docstring), names made unique."""
    plan: list[Retrieval] = []
    groups: dict[str, list[DatasetRef]] = defaultdict(list)
    for ref in refs:
        mef = ref.meta.get("mef") if ref.dataset_type == RAW else None
        if isinstance(mef, dict):
            groups[str(mef["sha256"])].append(ref)
        elif ref.dataset_type == RAW:
            plan.append(
                Retrieval(str(ref.meta.get("source_name", _dataset_name(ref))), "raw", (ref,))
            )
        else:
            plan.append(Retrieval(_dataset_name(ref), "dataset", (ref,)))
    for members in groups.values():
        members.sort(key=lambda r: int(r.meta["mef"]["part"]))
        mef = members[0].meta["mef"]
        parts = {int(r.meta["mef"]["part"]) for r in members}
        if parts == set(range(int(mef["parts"]))):
            plan.append(Retrieval(str(mef["name"]), "mef", tuple(members)))
            continue
        stem, suffix = _stem(str(mef["name"]))
        for r in members:
            name = f"{stem}.hdu{int(r.meta['mef']['hdu'])}{suffix}"
            plan.append(Retrieval(name, "detector", (r,)))
    # Two sources of the same name (from different directories): keep both,
    # the later ones named after their data ID.
    seen: set[str] = set()
    unique = []
    for item in sorted(plan, key=lambda p: (p.name, p.refs[0].data_id)):
        name = PurePath(item.name).name
        if name in seen:
            stem, suffix = _stem(name)
            d = item.refs[0].data_id
            name = f"{stem}.{d.instrument}_{d.visit}_{d.detector}{suffix}"
        seen.add(name)
        unique.append(Retrieval(name, item.kind, item.refs))
    return unique


def _content(repo: Repository, item: Retrieval) -> bytes:
    if item.kind == "dataset":
        ref = item.refs[0]
        return repo.get_bytes(ref.dataset_type, ref.data_id)
    files = [restore_bytes(repo.get_bytes(RAW, r.data_id), name=r.path) for r in item.refs]
    if item.kind != "mef":
        return files[0]
    mef = item.refs[0].meta["mef"]
    return join_mef(
        files, primary_size=int(mef["primary_size"]), sha256=str(mef["sha256"]), name=item.name
    )


def retrieve(
    repo: Repository,
    out_dir: str | Path,
    *,
    dataset_type: str | None = None,
    where: str | WhereExpr | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RetrieveReport:
    """Write the selected datasets as files in ``out_dir``.

    Parameters
    ----------
    repo : Repository
        Where they are archived.
    out_dir : str or pathlib.Path
        Output directory (created).
    dataset_type : str, optional
        Dataset type; ``raw`` when ``None``.
    where : str or WhereExpr, optional
        Data-ID expression (``"band = 'r' AND visit >= 10"``); every dataset
        of the type when ``None``.
    overwrite : bool
        Replace files that exist in ``out_dir``; otherwise any existing
        target is refused before anything is written.
    progress : Progress, optional
        Advanced once per file written.

    Returns
    -------
    RetrieveReport
        The files written, each with what it was made of.

    Raises
    ------
    BadValueError
        When nothing matches the selection, or ``out_dir`` is a file.
    ConflictError
        When a target file exists and ``overwrite`` is false.
    DataCorruptionError
        When a stored file is damaged (nothing is written for it).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadValueError("--out", str(out), "a directory (this is a file); choose another --out")
    kind = dataset_type or RAW
    refs = select_datasets(repo, dataset_type=kind, where=where)
    if not refs:
        text = where if isinstance(where, str) or where is None else where.text
        raise BadValueError(
            "where",
            text or "",
            f"no {kind!r} dataset in {repo.root} matches; list them with `skydm datasets`",
        )
    plan = plan_retrieval(refs)
    if not overwrite:
        existing = [out / item.name for item in plan if (out / item.name).exists()]
        if existing:
            more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
            raise ConflictError(
                f"{existing[0]}{more} already exist; pass --overwrite to replace them "
                "or choose another --out"
            )
    if progress is not None and progress.total is None:
        progress.total = len(plan)
    report = RetrieveReport()
    for item in plan:
        path = atomic_write_bytes(out / item.name, _content(repo, item))
        report.written.append((path, item))
        if progress is not None:
            progress.advance(note=item.name)
    return report
