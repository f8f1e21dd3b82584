"""Loading Object tables into the catalog (served over TAP)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from astropy.table import Table

from skydm.catalog import TableInfo, load_table
from skydm.errors import BadValueError


def load_objects(
    catalog_dir: Path | str,
    table: Table,
    *,
    mode: Literal["create", "replace", "append"] = "append",
) -> TableInfo:
    """Load one sky cell's Object table into the catalog's standard ``Object`` table.

    The catalog partitions Object by ``ra``/``dec``; they are copies of
    ``coord_ra``/``coord_dec`` (Rubin's DP0.2 names, which queries may use).

    Parameters
    ----------
    catalog_dir : Path or str
        The catalog directory (``<repo>/catalog``).
    table : astropy.table.Table
        From :func:`skydm.drp.measure_objects` (with ids made unique by
        :func:`skydm.drp.assign_object_ids` when cells are combined).
    mode : {"create", "replace", "append"}
        As :func:`skydm.catalog.load_table`; ``"append"`` creates the table
        when it does not exist.

    Raises
    ------
    BadValueError
        When ``table`` lacks ``coord_ra``/``coord_dec``.
    """
    for name in ("objectId", "coord_ra", "coord_dec"):
        if name not in table.colnames:
            raise BadValueError(
                "table", f"columns {table.colnames[:6]}...", f"an Object table with {name}"
            )
    out = table.copy(copy_data=False)
    out.meta = {}
    out["ra"] = out["coord_ra"]
    out["dec"] = out["coord_dec"]
    if mode == "append" and not (Path(catalog_dir) / "Object" / "_table.json").exists():
        mode = "create"
    return load_table(catalog_dir, "Object", out, mode=mode)
