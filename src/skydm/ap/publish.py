"""What the APDB publishes in the catalog (``DiaObject``, ``DiaSource`` over TAP).

The APDB's ``DiaObject`` rows hold running sums from which association
updates an object cheaply (``sumX/Y/Z`` of unit vectors, per band ``n``,
``sw``, ``swf``, ``sf``, ``sf2``...).  They mean nothing to a user, so the
published table has the standard columns computed from them instead
(:func:`skydm.ap.association.object_summary`: weighted mean fluxes, their
errors and scatter), each with its unit and description from
:mod:`skydm.catalog.schema`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from astropy.table import Table

from skydm.ap.apdb import Apdb
from skydm.ap.association import object_summary


def catalog_tables(apdb: Apdb) -> dict[str, Table]:
    """The ``DiaObject`` and ``DiaSource`` tables to load into the catalog (empty ones left out).

    ``DiaObject`` keeps the standard columns only; ``DiaSource`` every column
    but the cached Avro encodings.  Columns no row has a value in (bands no
    visit observed) carry no type a catalog can hold and are left out too.
    """
    from skydm.catalog.schema import STANDARD_TABLES

    published = {c.name for c in STANDARD_TABLES["DiaObject"].columns}
    out: dict[str, Table] = {}
    for name, table in (("DiaObject", apdb.objects), ("DiaSource", apdb.sources)):
        with apdb.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
        if not rows:
            continue
        if name == "DiaObject":
            rows = [{k: v for k, v in object_summary(r).items() if k in published} for r in rows]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        data: dict[str, Any] = {
            k: [r.get(k) for r in rows]
            for k in keys
            if any(r.get(k) is not None for r in rows)
            and not any(isinstance(r.get(k), bytes) for r in rows)
        }
        out[name] = Table(data)
    return out
