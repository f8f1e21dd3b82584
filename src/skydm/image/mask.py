"""Mask planes: named bits in a ``uint32`` plane.

The names follow Rubin's afw mask planes so that users recognise them; the
FITS header of a mask extension records each bit as ``MSKBnn = '<NAME>'``
(``nn`` the bit number), which keeps the cards within 8 characters.
"""

from __future__ import annotations

import enum
import re

import numpy as np
from astropy.io import fits


class Mask(enum.IntFlag):
    """Bits of the mask plane."""

    BAD = 1 << 0  #: bad column or pixel from the detector defect map
    SAT = 1 << 1  #: at or above saturation
    CR = 1 << 2  #: cosmic ray
    EDGE = 1 << 3  #: too close to the edge for full measurement
    DETECTED = 1 << 4  #: part of a positive detection footprint
    DETECTED_NEGATIVE = 1 << 5  #: part of a negative detection footprint
    NO_DATA = 1 << 6  #: no input data (outside the footprint of a warp)
    INTRP = 1 << 7  #: value interpolated
    SUSPECT = 1 << 8  #: nonlinear regime or otherwise suspect
    CLIPPED = 1 << 9  #: rejected as an artefact when coadding
    STREAK = 1 << 10  #: satellite or aircraft trail
    INJECTED = 1 << 11  #: a fake source was injected here


#: Bits that make a pixel unusable for fitting and measurement.
UNUSABLE = Mask.BAD | Mask.SAT | Mask.CR | Mask.NO_DATA | Mask.SUSPECT


def mask_to_header(header: fits.Header) -> None:
    """Record the bit assignment in ``header`` as ``MSKBnn = '<NAME>'`` cards."""
    for member in Mask:
        header[f"MSKB{int(member).bit_length() - 1:02d}"] = (member.name, "mask plane bit")


def mask_from_header(header: fits.Header, plane: np.ndarray) -> np.ndarray:
    """Remap a mask plane written with another bit assignment onto :class:`Mask`.

    Files written by skydm map one-to-one; planes with no ``MSKBnn`` cards
    are taken as they are.  Bits with names skydm does not know are dropped.
    """
    names = {int(k[4:]): str(v) for k, v in header.items() if re.fullmatch(r"MSKB\d\d", k)}
    plane = plane.astype(np.uint32)
    if not names:
        return plane
    out = np.zeros(plane.shape, dtype=np.uint32)
    for bit, name in names.items():
        if name in Mask.__members__:
            out[(plane & (np.uint32(1) << np.uint32(bit))) != 0] |= np.uint32(Mask[name])
    return out


def mask_names(value: int) -> list[str]:
    """The names of the bits set in ``value``."""
    return [m.name for m in Mask if value & m and m.name is not None]
