"""Getting archived raws back exactly as they were ingested."""

from __future__ import annotations

import io
from pathlib import Path

from astropy.io import fits

from skydm.archive.container import restore_bytes
from skydm.repo import DataId, Repository
from skydm.repo.atomic import atomic_write_bytes

RAW = "raw"


def restore_raw_bytes(repo: Repository, data_id: DataId) -> bytes:
    """The ingested source file of raw ``data_id``, byte for byte.

    The stored container is checked against its recorded checksum, and the
    rebuilt file against the source's SHA-256 recorded at ingest.

    Raises
    ------
    DatasetNotFoundError
        When no raw with that data ID is archived.
    DataCorruptionError
        When the stored file is damaged.
    """
    ref = repo.get_ref(RAW, data_id)
    return restore_bytes(repo.get_bytes(RAW, data_id), name=ref.path)


def restore(repo: Repository, data_id: DataId) -> fits.HDUList:
    """The ingested raw as an in-memory ``HDUList`` (original headers and pixels).

    Pixel values are scaled by BZERO/BSCALE as astropy does on any read;
    open with ``do_not_scale_image_data`` semantics via :func:`restore_raw_bytes`
    to see the stored integers.
    """
    return fits.open(io.BytesIO(restore_raw_bytes(repo, data_id)), memmap=False)


def restore_to(repo: Repository, data_id: DataId, dest: str | Path) -> Path:
    """Write the ingested raw back to ``dest`` (atomically), identical to the source."""
    return atomic_write_bytes(Path(dest), restore_raw_bytes(repo, data_id))
