"""Ingest raw FITS files into a repository, losslessly compressed.

Each file is read, checked, translated by its instrument definition,
compressed into the container of :mod:`skydm.archive.container`, proven to
restore byte for byte, written atomically and only then registered.  Files
are independent: a bad one is reported with its reason and the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from skydm.archive.container import check_lossless, encode
from skydm.archive.instruments import instrument_for
from skydm.errors import BadFileError, ConflictError, SkydmError
from skydm.progress import Progress
from skydm.repo import DataId, DatasetRef, Repository

RAW = "raw"
Status = Literal["ingested", "present", "replaced", "repaired", "error"]


@dataclass(frozen=True)
class FileResult:
    """What happened to one file.

    Attributes
    ----------
    path : pathlib.Path
        The source file.
    status : str
        ``ingested``, ``present`` (the same file was already archived),
        ``replaced`` (``replace=True`` and a different raw had this data ID),
        ``repaired`` (the archived copy was damaged or missing and was
        rewritten), or ``error``.
    message : str
        For errors the problem and what to do; otherwise where it is stored.
    data_id : DataId or None
        The raw's data ID, when the header could be translated.
    ref : DatasetRef or None
        The registered dataset, when there is one.
    source_bytes, stored_bytes : int
        Sizes of the source file and of the stored container (0 if none).
    seconds : float
        Time spent on this file.
    """

    path: Path
    status: Status
    message: str
    data_id: DataId | None = None
    ref: DatasetRef | None = None
    source_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the file is in the archive now."""
        return self.status != "error"

    def line(self) -> str:
        """One line for humans, naming the file."""
        if self.status == "error":
            return f"error: {self.path}: {self.message}"
        return f"{self.status}: {self.path}: {self.message}"


@dataclass
class IngestReport:
    """The results of :func:`ingest_files`, one per file, in input order."""

    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every file is in the archive."""
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        """The files that could not be ingested."""
        return [r for r in self.results if not r.ok]

    @property
    def written(self) -> list[FileResult]:
        """The files compressed and stored by this call."""
        return [r for r in self.results if r.status in ("ingested", "replaced", "repaired")]

    @property
    def source_bytes(self) -> int:
        """Total size of the sources written by this call."""
        return sum(r.source_bytes for r in self.written)

    @property
    def stored_bytes(self) -> int:
        """Total size of their compressed containers."""
        return sum(r.stored_bytes for r in self.written)

    @property
    def ratio(self) -> float:
        """Compression ratio (source bytes / stored bytes) of what was written; NaN if none."""
        return self.source_bytes / self.stored_bytes if self.stored_bytes else math.nan

    def summary(self) -> str:
        """One line: how many files ingested, present, failed, and the ratio."""
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        parts = [f"{n} {status}" for status, n in counts.items()]
        ratio = f", compression {self.ratio:.2f}x" if self.written else ""
        return f"{len(self.results)} files: {', '.join(parts) or 'none'}{ratio}"


def ingest_file(
    repo: Repository,
    path: str | Path,
    *,
    instrument: str | None = None,
    replace: bool = False,
    codec: str = "RICE_1",
) -> FileResult:
    """Ingest one raw file; errors are returned as a result, never raised.

    See :func:`ingest_files` for the parameters.
    """
    path = Path(path)
    start = time.perf_counter()

    def result(status: Status, message: str, **kw: object) -> FileResult:
        return FileResult(path, status, message, seconds=time.perf_counter() - start, **kw)  # type: ignore[arg-type]

    data_id: DataId | None = None
    try:
        if path.is_dir():
            raise BadFileError(path, "is a directory; give the FITS files in it")
        container, info = encode(path, codec=codec)
        definition = instrument_for(info.header, instrument)
        translation = definition.translate(
            info.header, pixel_sha256=lambda: info.pixel_sha256, path=path
        )
        data_id = translation.data_id
        existing = repo.find(RAW, data_id)
        status: Status = "ingested"
        if existing is not None:
            same = existing.meta.get("source_sha256") == info.sha256
            intact = repo.datastore.check(existing.path, existing.checksum, existing.size) is None
            if same and intact:
                return result(
                    "present",
                    f"already archived as raw {data_id} ({existing.path})",
                    data_id=data_id,
                    ref=existing,
                    source_bytes=info.size,
                )
            if not same and not replace:
                was = existing.meta.get("source_name", "another file")
                raise ConflictError(
                    f"a different raw with data ID {data_id} is already archived "
                    f"(from {was}); pass --replace (replace=True) to replace it"
                )
            status = "repaired" if same else "replaced"
        meta = {
            "source_name": info.name,
            "source_sha256": info.sha256,
            "source_size": info.size,
            "bitpix": list(info.bitpix),
            "n_hdus": info.n_hdus,
            "instrument_definition": definition.name,
            "codec": codec,
            **translation.metadata,
        }

        def write(fh: BinaryIO) -> None:
            fh.write(container)

        ref = repo.put_file(
            write,
            RAW,
            data_id,
            replace=existing is not None,
            meta=meta,
            check=lambda tmp: check_lossless(tmp, info.sha256),
        )
        return result(
            status,
            f"raw {data_id} -> {ref.path} ({info.size / ref.size:.2f}x)",
            data_id=data_id,
            ref=ref,
            source_bytes=info.size,
            stored_bytes=ref.size,
        )
    except BadFileError as exc:
        message = exc.problem if exc.path == str(path) else str(exc)
        return result("error", message, data_id=data_id)
    except (SkydmError, OSError) as exc:
        return result("error", str(exc), data_id=data_id)
    except Exception as exc:  # one odd file must not stop the others
        return result(
            "error",
            f"failed unexpectedly ({type(exc).__name__}: {exc}); please report this",
            data_id=data_id,
        )


def ingest_files(
    repo: Repository,
    paths: Iterable[str | Path],
    *,
    instrument: str | None = None,
    replace: bool = False,
    progress: Progress | None = None,
    codec: str = "RICE_1",
    on_result: Callable[[FileResult], None] | None = None,
) -> IngestReport:
    """Ingest raw FITS files into ``repo`` as losslessly compressed ``raw`` datasets.

    Parameters
    ----------
    repo : Repository
        Where to archive them.
    paths : iterable of str or pathlib.Path
        Raw FITS files (any BITPIX, single- or multi-extension).
    instrument : str, optional
        Instrument definition to use for every file (``generic``,
        ``skysim``); by default chosen from each header's ``INSTRUME``.
    replace : bool
        Replace a different raw already archived with the same data ID
        (otherwise that file is an error).
    progress : Progress, optional
        Advanced once per file.
    codec : str
        Codec for integer pixels (``RICE_1``, ``GZIP_2``...); float pixels
        always use lossless ``GZIP_2``.
    on_result : callable, optional
        Called with each :class:`FileResult` as soon as it is known.

    Returns
    -------
    IngestReport
        One result per file; ``report.ok`` is false if any file failed.
    """
    start = time.perf_counter()
    report = IngestReport()
    for path in paths:
        res = ingest_file(repo, path, instrument=instrument, replace=replace, codec=codec)
        report.results.append(res)
        if on_result is not None:
            on_result(res)
        if progress is not None:
            progress.advance(note=Path(path).name)
    report.seconds = time.perf_counter() - start
    return report
