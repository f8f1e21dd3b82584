"""Multi-extension raws: one image HDU per detector, split into one raw per detector.

DECam, HSC and LSST write an exposure as one FITS file: a primary HDU with
the exposure's cards and no pixels, then one image extension per detector.
Ingest archives each detector as its own ``raw`` dataset; what is stored for
a detector is the *detector file*: the source's primary HDU followed by that
detector's extension, exactly as they were in the source (any non-image
extensions ride with the detector extension before them; the trailing bytes
with the last detector).  Each detector file is a valid FITS file on its own,
and since the detector files partition the source after the primary, the
source is their concatenation with the primary once: :func:`join_mef`
rebuilds it byte for byte, checked against the SHA-256 recorded at ingest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from astropy.io import fits

from skydm.archive.container import _layout, _parse
from skydm.errors import DataCorruptionError


@dataclass(frozen=True)
class DetectorPart:
    """One detector of a multi-extension raw.

    Attributes
    ----------
    part : int
        Position among the file's detectors (0-based, in file order).
    hdu : int
        Index of the detector's image extension in the source.
    data : bytes
        The detector file: the source's primary HDU and this part's HDUs.
    """

    part: int
    hdu: int
    data: bytes


@dataclass(frozen=True)
class MefSplit:
    """A multi-extension raw cut into detector files."""

    name: str
    size: int
    sha256: str
    primary_size: int
    parts: tuple[DetectorPart, ...]
    _pixels: tuple[memoryview, ...]

    @cached_property
    def pixel_sha256(self) -> str:
        """SHA-256 of every detector's pixel bytes in file order (one per exposure)."""
        digest = hashlib.sha256()
        for view in self._pixels:
            digest.update(view)
        return digest.hexdigest()

    def meta(self, part: DetectorPart) -> dict[str, object]:
        """What a detector's raw records to rebuild the source (see :func:`join_mef`)."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "parts": len(self.parts),
            "part": part.part,
            "hdu": part.hdu,
            "primary_size": self.primary_size,
        }


def _is_detector(hdu: fits.hdu.base._BaseHDU) -> bool:
    return (
        isinstance(hdu, fits.ImageHDU)
        and int(hdu.header.get("NAXIS", 0)) == 2
        and all(int(hdu.header.get(f"NAXIS{k}", 0)) > 0 for k in (1, 2))
    )


def split_mef(data: bytes, name: str) -> MefSplit | None:
    """Cut a multi-extension raw into detector files, or ``None`` if it is not one.

    A file is split when its primary HDU holds no pixels and at least two
    extensions hold 2-d images; anything else is archived whole.

    Raises
    ------
    BadFileError
        When the file is not readable FITS (the same checks as ingest's).
    """
    hdul = _parse(data, name)
    if int(hdul[0].header.get("NAXIS", 0)) != 0:
        return None
    detectors = [i for i, h in enumerate(hdul) if i > 0 and _is_detector(h)]
    if len(detectors) < 2:
        return None
    spans = _layout(hdul, len(data), name)
    primary_end = spans[0][2]
    primary = data[:primary_end]
    # Part k runs from its image HDU (or the primary's end, for the first) to
    # the next image HDU (or the end of the file, for the last).
    starts = [primary_end] + [spans[i][0] for i in detectors[1:]]
    ends = [*starts[1:], len(data)]
    parts = tuple(
        DetectorPart(k, hdu, primary + data[a:b])
        for k, (hdu, a, b) in enumerate(zip(detectors, starts, ends, strict=True))
    )
    view = memoryview(data)
    pixels = []
    for i in detectors:
        h = hdul[i].header
        nbytes = abs(int(h["BITPIX"])) // 8 * int(np.prod([int(h[f"NAXIS{k}"]) for k in (1, 2)]))
        pixels.append(view[spans[i][1] : spans[i][1] + nbytes])
    return MefSplit(
        name=name.rsplit("/", 1)[-1],
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        primary_size=primary_end,
        parts=parts,
        _pixels=tuple(pixels),
    )


def join_mef(
    detector_files: Sequence[bytes], *, primary_size: int, sha256: str, name: object
) -> bytes:
    """The source file from all its detector files, in part order.

    Raises
    ------
    DataCorruptionError
        When the result does not match the source's SHA-256.
    """
    out = bytearray(detector_files[0])
    for part in detector_files[1:]:
        out += part[primary_size:]
    actual = hashlib.sha256(out).hexdigest()
    if actual != sha256:
        raise DataCorruptionError(name, sha256, actual)
    return bytes(out)
