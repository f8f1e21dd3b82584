"""The raw archive: ingest raw FITS losslessly compressed, with header translation.

>>> from skydm.repo import Repository
>>> from skydm.archive import ingest_files, restore
>>> repo = Repository.open("skydm-repo")                          # doctest: +SKIP
>>> report = ingest_files(repo, ["raw1.fits", "raw2.fits"])       # doctest: +SKIP
>>> report.ok, report.ratio                                       # doctest: +SKIP
>>> hdul = restore(repo, report.results[0].data_id)               # doctest: +SKIP

See ``docs/archive.md``.
"""

from skydm.archive.container import check_lossless, codec_for, encode, restore_bytes
from skydm.archive.ingest import FileResult, IngestReport, ingest_file, ingest_files
from skydm.archive.instrument_file import (
    load_instrument,
    parse_instrument,
    register_instrument,
    repository_instruments,
)
from skydm.archive.instruments import (
    Amplifier,
    InstrumentDefinition,
    Section,
    Translation,
    builtin,
    get_instrument,
    instrument_for,
)
from skydm.archive.restore import read_raw, restore, restore_raw_bytes, restore_to
from skydm.archive.retrieve import RetrieveReport, plan_retrieval, retrieve, select_datasets

__all__ = [
    "Amplifier",
    "FileResult",
    "IngestReport",
    "InstrumentDefinition",
    "RetrieveReport",
    "Section",
    "Translation",
    "builtin",
    "check_lossless",
    "codec_for",
    "encode",
    "get_instrument",
    "ingest_file",
    "ingest_files",
    "instrument_for",
    "load_instrument",
    "parse_instrument",
    "plan_retrieval",
    "read_raw",
    "register_instrument",
    "repository_instruments",
    "restore",
    "restore_bytes",
    "restore_raw_bytes",
    "restore_to",
    "retrieve",
    "select_datasets",
]
