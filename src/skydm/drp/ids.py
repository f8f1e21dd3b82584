"""Object identifiers that are unique across sky cells.

An ``objectId`` is ``(cell index << 24) | n``: ``n`` is the object's running
number in its cell (1 to 2**24 - 1, the order of detection), and the cell
index comes from the cell's place on the sky grid, ``(j << 20) | i`` for
cell ``"c<i>_<j>"`` (ring ``j``, index ``i`` in right ascension).  The id
thus fits a signed 64-bit integer (a ring index below 2**19, a cell index
below 2**20 within its ring), and the cell and running number are read back
with :func:`split_object_id`.
"""

from __future__ import annotations

import re

import numpy as np
from astropy.table import Table

from skydm.errors import BadValueError

#: Bits of the running number within a cell.
NUMBER_BITS = 24
_CELL_BITS_I = 20
_CELL_BITS_J = 19
_CELL_ID = re.compile(r"^c(\d+)_(\d+)$")


def skycell_index(skycell: str | int) -> int:
    """The integer index of a sky cell: ``(j << 20) | i`` for ``"c<i>_<j>"``.

    An integer is taken as an index already (ad-hoc cells not on a grid).

    Raises
    ------
    BadValueError
        For a cell id of another form or indexes out of range.
    """
    if isinstance(skycell, int | np.integer):
        index = int(skycell)
        if not 0 <= index < 1 << (_CELL_BITS_I + _CELL_BITS_J):
            raise BadValueError(
                "skycell", skycell, f"an index in [0, 2**{_CELL_BITS_I + _CELL_BITS_J})"
            )
        return index
    m = _CELL_ID.match(str(skycell))
    if not m:
        raise BadValueError("skycell", skycell, 'a sky-cell id like "c12_34" or an integer index')
    i, j = int(m.group(1)), int(m.group(2))
    if i >= 1 << _CELL_BITS_I or j >= 1 << _CELL_BITS_J:
        raise BadValueError("skycell", skycell, "cell indexes below 2**20 (i) and 2**19 (j)")
    return (j << _CELL_BITS_I) | i


def object_ids(skycell: str | int, numbers: np.ndarray) -> np.ndarray:
    """objectIds of the objects numbered ``numbers`` (1, 2, ...) in a sky cell.

    Raises
    ------
    BadValueError
        When a number is outside [1, 2**24 - 1] (a cell of more objects
        needs a wider field).
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.size and (numbers.min() < 1 or numbers.max() >= 1 << NUMBER_BITS):
        raise BadValueError(
            "object number", int(numbers.max()), f"running numbers in [1, 2**{NUMBER_BITS} - 1]"
        )
    return (np.int64(skycell_index(skycell)) << np.int64(NUMBER_BITS)) | numbers


def split_object_id(object_id: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(sky-cell index, running number) of objectIds."""
    ids = np.asarray(object_id, dtype=np.int64)
    return ids >> NUMBER_BITS, ids & ((1 << NUMBER_BITS) - 1)


def assign_object_ids(table: Table, skycell: str | int) -> Table:
    """Give the objects of one cell's Object table their unique ids, in place.

    Rows are numbered 1, 2, ... in table order (the order of detection).
    Returns ``table``.
    """
    table["objectId"] = object_ids(skycell, np.arange(1, len(table) + 1))
    return table
