"""Ingest raw FITS files into a repository, losslessly compressed.

Each file is read, checked, translated by its instrument definition,
compressed into the container of :mod:`skydm.archive.container`, proven to
restore byte for byte, written atomically and only then registered.  Files
are independent: a bad one is reported with its reason and the others go on.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from astropy.io import fits

from skydm.archive.container import check_lossless, encode, translation_header
from skydm.archive.instrument_file import repository_instruments
from skydm.archive.instruments import InstrumentDefinition, Translation, instrument_for
from skydm.archive.mef import DetectorPart, MefSplit, split_mef
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
    hdu : int or None
        For a detector of a multi-extension raw, its HDU in the file.
    """

    path: Path
    status: Status
    message: str
    data_id: DataId | None = None
    ref: DatasetRef | None = None
    source_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    hdu: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the file is in the archive now."""
        return self.status != "error"

    def line(self) -> str:
        """One line for humans, naming the file (and the HDU of a detector)."""
        where = f"{self.path} [HDU {self.hdu}]" if self.hdu is not None else str(self.path)
        return f"{self.status}: {where}: {self.message}"


@dataclass
class IngestReport:
    """The results of :func:`ingest_files`, one per file, in input order."""

    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    hdu: int | None = None

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
        """One line: how many files (and raws) ingested, present, failed, and the ratio."""
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        parts = [f"{n} {status}" for status, n in counts.items()]
        ratio = f", compression {self.ratio:.2f}x" if self.written else ""
        n_files = len({r.path for r in self.results})
        # A multi-extension file gives one raw per detector: say so when it happened.
        raws = f" ({len(self.results)} raws)" if n_files != len(self.results) else ""
        return f"{n_files} files{raws}: {', '.join(parts) or 'none'}{ratio}"


def _read(path: Path) -> bytes:
    if path.is_dir():
        raise BadFileError(path, "is a directory; give the FITS files in it")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadFileError(path, "no such file; check the path") from None
    except OSError as exc:
        raise BadFileError(path, f"cannot be read ({exc.strerror})") from exc


def _definition(
    header: fits.Header,
    instrument: str | InstrumentDefinition | None,
    known: Mapping[str, InstrumentDefinition],
) -> InstrumentDefinition:
    if isinstance(instrument, InstrumentDefinition):
        return instrument
    return instrument_for(header, instrument, known)


def _error(path: Path, exc: BaseException) -> str:
    if isinstance(exc, BadFileError):
        return exc.problem if exc.path == str(path) else str(exc)
    if isinstance(exc, SkydmError | OSError):
        return str(exc)
    return f"failed unexpectedly ({type(exc).__name__}: {exc}); please report this"


def ingest_file(
    repo: Repository,
    path: str | Path,
    *,
    instrument: str | InstrumentDefinition | None = None,
    instruments: Mapping[str, InstrumentDefinition] | None = None,
    replace: bool = False,
    codec: str = "RICE_1",
) -> list[FileResult]:
    """Ingest one raw file; errors are returned as results, never raised.

    A multi-extension raw (no pixels in the primary, two or more image
    extensions) gives one result per detector (see :mod:`skydm.archive.mef`);
    any other file one result.  See :func:`ingest_files` for the parameters.
    """
    path = Path(path)
    start = time.perf_counter()
    known = dict(instruments or {})
    try:
        data = _read(path)
        split = split_mef(data, str(path))
        if split is None:
            return [_ingest_one(repo, path, data, instrument, known, replace, codec, start)]
        planned = _plan_parts(path, split, instrument, known)
    except Exception as exc:  # one odd file must not stop the others
        return [FileResult(path, "error", _error(path, exc), seconds=time.perf_counter() - start)]
    results = []
    for part, (definition, translation) in zip(split.parts, planned, strict=True):
        t0 = time.perf_counter()
        results.append(
            _ingest_one(
                repo, path, part.data, definition, known, replace, codec, t0,
                mef=(split, part, translation),
            )
        )  # fmt: skip
    return results


def _plan_parts(
    path: Path,
    split: MefSplit,
    instrument: str | InstrumentDefinition | None,
    known: Mapping[str, InstrumentDefinition],
) -> list[tuple[InstrumentDefinition, Translation]]:
    """Translate every detector of a multi-extension raw before anything is written."""
    hdul = fits.open(io.BytesIO(split.parts[0].data), memmap=False, do_not_scale_image_data=True)
    primary = hdul[0].header
    planned: list[tuple[InstrumentDefinition, Translation]] = []
    seen: dict[DataId, int] = {}
    for part in split.parts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ext = fits.open(io.BytesIO(part.data), memmap=False, do_not_scale_image_data=True)[1]
            header = translation_header(primary, ext.header)
        definition = _definition(header, instrument, known)
        shape = (int(ext.header["NAXIS2"]), int(ext.header["NAXIS1"]))
        where = f"{path} [HDU {part.hdu}]"
        translation = definition.translate(
            header, pixel_sha256=lambda: split.pixel_sha256, path=where, shape=shape
        )
        if translation.data_id in seen:
            raise BadFileError(
                path,
                f"HDUs {seen[translation.data_id]} and {part.hdu} both translate to data ID "
                f"{translation.data_id}; the {definition.name} instrument definition "
                f"({definition.source}) must read the detector from a card that differs "
                "between extensions (data_id.detector.cards, e.g. CCDNUM, DETECTOR or EXTVER)",
            )
        seen[translation.data_id] = part.hdu
        planned.append((definition, translation))
    return planned


def _ingest_one(
    repo: Repository,
    path: Path,
    data: bytes,
    instrument: str | InstrumentDefinition | None,
    known: Mapping[str, InstrumentDefinition],
    replace: bool,
    codec: str,
    start: float,
    *,
    mef: tuple[MefSplit, DetectorPart, Translation] | None = None,
) -> FileResult:
    """Archive one raw (a whole file, or one detector file of a multi-extension raw)."""
    hdu = mef[1].hdu if mef is not None else None

    def result(status: Status, message: str, **kw: object) -> FileResult:
        return FileResult(path, status, message, seconds=time.perf_counter() - start, hdu=hdu, **kw)  # type: ignore[arg-type]

    data_id: DataId | None = None
    try:
        container, info = encode(path, codec=codec, data=data)
        definition = _definition(info.header, instrument, known)
        if mef is not None:
            translation = mef[2]
        else:
            translation = definition.translate(
                info.header,
                pixel_sha256=lambda: info.pixel_sha256,
                path=path,
                shape=info.shapes[0] if info.shapes else None,
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
            "instrument_source": definition.source,
            "codec": codec,
            **translation.metadata,
        }
        if mef is not None:
            meta["mef"] = mef[0].meta(mef[1])

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
    except Exception as exc:  # one odd file must not stop the others
        return result("error", _error(path, exc), data_id=data_id)


def ingest_files(
    repo: Repository,
    paths: Iterable[str | Path],
    *,
    instrument: str | InstrumentDefinition | None = None,
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
        Raw FITS files (any BITPIX, single- or multi-extension; a
        multi-extension raw becomes one raw per detector).
    instrument : str or InstrumentDefinition, optional
        Instrument definition to use for every file: a name (one registered
        in the repository, or ``generic``, ``skysim``) or a definition loaded
        with :func:`~skydm.archive.load_instrument`.  By default each header
        is matched against the repository's definitions, then the built-in
        ones, falling back to ``generic``.
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
        One result per raw (per detector of a multi-extension file), in
        input order; ``report.ok`` is false if any failed.

    Raises
    ------
    BadFileError
        When a definition registered in the repository is invalid.
    """
    start = time.perf_counter()
    report = IngestReport()
    known = repository_instruments(repo.root)
    for path in paths:
        for res in ingest_file(
            repo, path, instrument=instrument, instruments=known, replace=replace, codec=codec
        ):
            report.results.append(res)
            if on_result is not None:
                on_result(res)
        if progress is not None:
            progress.advance(note=Path(path).name)
    report.seconds = time.perf_counter() - start
    return report
