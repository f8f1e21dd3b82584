"""TAP_SCHEMA: the metadata of every queryable table, itself queryable.

:class:`TapSchema` holds the definitions of the loaded tables plus the five
TAP 1.1 ``TAP_SCHEMA`` tables, resolves table names the way ADQL does
(unquoted names case-insensitively, quoted names exactly) and renders the
``TAP_SCHEMA`` contents as Arrow tables that each engine stores.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from skydm.catalog.schema import CATALOG_SCHEMA, TAP_SCHEMA_NAME, ColumnDef, TableDef


def _c(
    name: str,
    datatype: str,
    description: str,
    *,
    principal: bool = True,
    arraysize: str | None = None,
) -> ColumnDef:
    if datatype == "char" and arraysize is None:
        arraysize = "*"
    return ColumnDef(
        name, datatype, "", "", description, arraysize=arraysize, principal=principal, std=True
    )


# The TAP 1.1 (section 4) TAP_SCHEMA tables, with their standard columns.
TAP_SCHEMA_TABLES: tuple[TableDef, ...] = tuple(
    TableDef(name, description, columns, ra_col=None, dec_col=None)
    for name, description, columns in (
        (
            "schemas",
            "Schemas in this service",
            (
                _c("schema_name", "char", "Schema name, as used in queries"),
                _c("utype", "char", "UType of the schema", principal=False),
                _c("description", "char", "Description of the schema"),
                _c("schema_index", "int", "Recommended sort order", principal=False),
            ),
        ),
        (
            "tables",
            "Tables in this service",
            (
                _c("schema_name", "char", "Schema the table belongs to"),
                _c("table_name", "char", "Table name, as used in queries"),
                _c("table_type", "char", "table or view"),
                _c("utype", "char", "UType of the table", principal=False),
                _c("description", "char", "Description of the table"),
                _c("table_index", "int", "Recommended sort order", principal=False),
            ),
        ),
        (
            "columns",
            "Columns of every table in this service",
            (
                _c("table_name", "char", "Table the column belongs to"),
                _c("column_name", "char", "Column name, as used in queries"),
                _c("utype", "char", "UType of the column", principal=False),
                _c("ucd", "char", "UCD of the column"),
                _c("unit", "char", "Unit (VOUnit) of the column"),
                _c("description", "char", "Description of the column"),
                _c("datatype", "char", "VOTable datatype"),
                _c("arraysize", "char", "VOTable arraysize", principal=False),
                _c("xtype", "char", "VOTable xtype", principal=False),
                _c(
                    "size", "int", "Length of variable-length columns (deprecated)", principal=False
                ),
                _c("principal", "int", "1 if the column is of primary interest"),
                _c("indexed", "int", "1 if the column is indexed"),
                _c("std", "int", "1 if the column is defined by a standard"),
                _c("column_index", "int", "Recommended sort order", principal=False),
            ),
        ),
        (
            "keys",
            "Foreign keys between tables",
            (
                _c("key_id", "char", "Unique key identifier"),
                _c("from_table", "char", "Table with the foreign key"),
                _c("target_table", "char", "Table with the primary key"),
                _c("description", "char", "Description of the key"),
                _c("utype", "char", "UType of the key", principal=False),
            ),
        ),
        (
            "key_columns",
            "Columns of the foreign keys",
            (
                _c("key_id", "char", "Key identifier (keys.key_id)"),
                _c("from_column", "char", "Column in from_table"),
                _c("target_column", "char", "Column in target_table"),
            ),
        ),
    )
)


@dataclass(frozen=True)
class TableRef:
    """A resolved table: its schema, its definition and the name TAP_SCHEMA gives it."""

    schema: str
    table: TableDef

    @property
    def tap_name(self) -> str:
        """The ``table_name`` in ``TAP_SCHEMA.tables``."""
        if self.schema == TAP_SCHEMA_NAME:
            return f"{TAP_SCHEMA_NAME}.{self.table.name}"
        return self.table.name


class TapSchema:
    """Metadata of the queryable tables: the loaded catalog tables plus TAP_SCHEMA.

    Parameters
    ----------
    tables : iterable of TableDef
        The loaded catalog tables (schema ``skydm``).
    """

    def __init__(self, tables: Iterable[TableDef]) -> None:
        self.refs: list[TableRef] = [TableRef(CATALOG_SCHEMA, t) for t in tables]
        self.refs += [TableRef(TAP_SCHEMA_NAME, t) for t in TAP_SCHEMA_TABLES]

    def __iter__(self) -> Iterator[TableRef]:
        return iter(self.refs)

    @property
    def catalog_tables(self) -> list[TableDef]:
        """The loaded catalog tables (not TAP_SCHEMA)."""
        return [r.table for r in self.refs if r.schema == CATALOG_SCHEMA]

    def resolve(
        self,
        name: str,
        schema: str | None = None,
        *,
        quoted: bool = False,
        schema_quoted: bool = False,
    ) -> TableRef | None:
        """The table an ADQL table reference names, or None.

        Unquoted names match case-insensitively, quoted names exactly (ADQL 2.1
        section 2.1.3).  A table of the catalog schema may be named with or
        without its schema.
        """

        def same(a: str, b: str, exact: bool) -> bool:
            return a == b if exact else a.lower() == b.lower()

        for ref in self.refs:
            if schema is None and ref.schema != CATALOG_SCHEMA:
                continue
            if schema is not None and not same(schema, ref.schema, schema_quoted):
                continue
            if same(name, ref.table.name, quoted):
                return ref
        return None

    # --- TAP_SCHEMA contents ---------------------------------------------------------

    def tap_tables(self) -> dict[str, pa.Table]:
        """The rows of the five TAP_SCHEMA tables, keyed by table name."""
        schemas = [
            (TAP_SCHEMA_NAME, "Metadata of the tables in this service (TAP 1.1)", 1),
            (CATALOG_SCHEMA, "Survey catalogs served by skydm", 0),
        ]
        out: dict[str, dict[str, list[object]]] = {
            t.name: {c.name: [] for c in t.columns} for t in TAP_SCHEMA_TABLES
        }

        def add(table: str, **row: object) -> None:
            for col, values in out[table].items():
                values.append(row.get(col))

        for name, desc, index in schemas:
            add("schemas", schema_name=name, description=desc, schema_index=index)
        for t_index, ref in enumerate(self.refs):
            t = ref.table
            add(
                "tables",
                schema_name=ref.schema,
                table_name=ref.tap_name,
                table_type="table",
                description=t.description,
                table_index=t_index,
            )
            for c_index, c in enumerate(t.columns):
                add(
                    "columns",
                    table_name=ref.tap_name,
                    column_name=c.name,
                    ucd=c.ucd or None,
                    unit=c.unit or None,
                    description=c.description,
                    datatype=c.datatype,
                    arraysize=c.arraysize,
                    xtype=c.xtype,
                    size=None,
                    principal=int(c.principal),
                    indexed=int(c.indexed),
                    std=int(c.std),
                    column_index=c_index,
                )
        present = {r.table.name for r in self.refs if r.schema == CATALOG_SCHEMA}
        for t in self.catalog_tables:
            for fk in t.foreign_keys:
                if fk.target not in present:
                    continue  # the target table is not loaded: no key to advertise
                key_id = f"{t.name}_{'_'.join(fk.columns)}_{fk.target}"
                add(
                    "keys",
                    key_id=key_id,
                    from_table=t.name,
                    target_table=fk.target,
                    description=fk.description,
                )
                for a, b in zip(fk.columns, fk.target_columns, strict=True):
                    add("key_columns", key_id=key_id, from_column=a, target_column=b)
        result: dict[str, pa.Table] = {}
        for t in TAP_SCHEMA_TABLES:
            fields = [pa.field(c.name, c.arrow_type()) for c in t.columns]
            result[t.name] = pa.table(out[t.name], schema=pa.schema(fields))
        return result
