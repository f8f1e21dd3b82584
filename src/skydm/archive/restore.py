"""Getting archived raws back exactly as they were ingested."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from astropy.io import fits

from skydm.archive.container import restore_bytes
from skydm.repo import DataId, Repository
from skydm.repo.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from skydm.image.exposure import Exposure

RAW = "raw"
#: Visit metadata recorded at ingest (by the instrument definition) -> VisitInfo field.
_INFO_FIELDS = ("mjd", "exptime", "airmass", "seeing", "gain", "read_noise", "saturation")


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


def read_raw(repo: Repository, data_id: DataId) -> Exposure:
    """An archived raw as an Exposure, with the visit metadata its instrument definition read.

    The pixels and header come from the restored source (for a detector of a
    multi-extension raw: the primary and that detector's extension).  The
    data ID, and the observation time, exposure time, airmass, gain, read
    noise and saturation that the instrument definition translated at ingest
    (the mean gain and read noise and the lowest saturation of the
    amplifiers), are set on ``exposure.info``, overriding the generic
    header reading; each amplifier's values are in ``exposure.meta`` as
    ``AMPn...`` cards (``AMPnNAME``, ``AMPnGAIN``, ``AMPnRDN``, ``AMPnSAT``,
    ``AMPnDSEC``, ``AMPnBSEC``).  Its variance plane is NaN (unknown):
    the pixels still hold the bias, and calibration makes the variance from
    the CCD equation after ISR.

    Raises
    ------
    DatasetNotFoundError
        When no raw with that data ID is archived.
    DataCorruptionError
        When the stored file is damaged.
    """
    from skydm.image import exposure_from_hdulist

    ref = repo.get_ref(RAW, data_id)
    with restore(repo, data_id) as hdul:
        # No variance estimate: a raw's pixels hold the bias, and ISR and
        # calibration make the variance plane from the CCD equation.
        exposure = exposure_from_hdulist(
            hdul, source=f"raw {data_id} ({ref.path})", estimate_variance=False
        )
    info = exposure.info
    info.instrument, info.detector = data_id.instrument, data_id.detector
    info.visit, info.band = data_id.visit, data_id.band
    for name in _INFO_FIELDS:
        value = ref.meta.get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            setattr(info, name, float(value))
    for i, amp in enumerate(ref.meta.get("amplifiers") or [], start=1):
        for suffix, key in (("NAME", "name"), ("GAIN", "gain"), ("RDN", "read_noise"),
                            ("SAT", "saturation"), ("DSEC", "data_section"),
                            ("BSEC", "bias_section")):  # fmt: skip
            if amp.get(key) is not None:
                exposure.meta[f"AMP{i}{suffix}"] = amp[key]
    return exposure
