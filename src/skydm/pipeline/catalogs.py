"""Loading pipeline tables into the repository's catalog (``<repo>/catalog``), for TAP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astropy.table import Table


def load_apdb_tables(apdb_url: str | Path, catalog_dir: Path) -> dict[str, int]:
    """Replace the catalog's DiaObject and DiaSource tables with the APDB's.

    Returns
    -------
    dict
        Table name -> rows loaded.
    """
    import sqlalchemy as sa

    from skydm.ap.apdb import Apdb
    from skydm.catalog import load_table

    loaded: dict[str, int] = {}
    apdb = Apdb(apdb_url)
    try:
        for name, table in (("DiaObject", apdb.objects), ("DiaSource", apdb.sources)):
            with apdb.engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
            if not rows:
                continue
            # Columns no visit has filled yet (other bands' statistics) carry
            # no type a catalog can hold, and the APDB's cached Avro encodings
            # are internal: both are left out.
            data: dict[str, Any] = {
                k: [r[k] for r in rows]
                for k in rows[0]
                if any(r[k] is not None for r in rows)
                and not any(isinstance(r[k], bytes) for r in rows)
            }
            info = load_table(catalog_dir, name, Table(data), mode="replace")
            loaded[name] = int(info.rows)
    finally:
        apdb.close()
    return loaded


def load_object_table(table: Table, catalog_dir: Path) -> int:
    """Replace the catalog's Object table (:func:`skydm.drp.load_objects`); returns its rows."""
    from skydm.drp import load_objects

    info = load_objects(catalog_dir, table, mode="replace")
    return int(info.rows)
