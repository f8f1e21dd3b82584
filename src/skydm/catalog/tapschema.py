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

# ADQL 2.0 reserved words (section 2.1.2: ADQL keywords and the SQL-92 reserved words);
# a column so named is listed delimited ("size") in TAP_SCHEMA.columns.
_RESERVED_WORDS = """
ABS ACOS AREA ASIN ATAN ATAN2 BOX CEILING CENTROID CIRCLE CONTAINS COORD1 COORD2 COORDSYS COS COT
DEGREES DISTANCE EXP FLOOR INTERSECTS LOG LOG10 MOD PI POINT POLYGON POWER RADIANS REGION RAND
ROUND SIN SQRT TAN TOP TRUNCATE ABSOLUTE ACTION ADD ALL ALLOCATE ALTER AND ANY ARE AS ASC
ASSERTION AT AUTHORIZATION AVG BEGIN BETWEEN BIT BIT_LENGTH BOTH BY CASCADE CASCADED CASE CAST
CATALOG CHAR CHARACTER CHAR_LENGTH CHARACTER_LENGTH CHECK CLOSE COALESCE COLLATE COLLATION COLUMN
COMMIT CONNECT CONNECTION CONSTRAINT CONSTRAINTS CONTINUE CONVERT CORRESPONDING COUNT CREATE CROSS
CURRENT CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURSOR DATE DAY DEALLOCATE
DECIMAL DECLARE DEFAULT DEFERRABLE DEFERRED DELETE DESC DESCRIBE DESCRIPTOR DIAGNOSTICS DISCONNECT
DISTINCT DOMAIN DOUBLE DROP ELSE END END-EXEC ESCAPE EXCEPT EXCEPTION EXEC EXECUTE EXISTS EXTERNAL
EXTRACT FALSE FETCH FIRST FLOAT FOR FOREIGN FOUND FROM FULL GET GLOBAL GO GOTO GRANT GROUP HAVING
HOUR IDENTITY IMMEDIATE IN INDICATOR INITIALLY INNER INPUT INSENSITIVE INSERT INT INTEGER INTERSECT
INTERVAL INTO IS ISOLATION JOIN KEY LANGUAGE LAST LEADING LEFT LEVEL LIKE LOCAL LOWER MATCH MAX MIN
MINUTE MODULE MONTH NAMES NATIONAL NATURAL NCHAR NEXT NO NOT NULL NULLIF NUMERIC OCTET_LENGTH OF ON
ONLY OPEN OPTION OR ORDER OUTER OUTPUT OVERLAPS PAD PARTIAL POSITION PRECISION PREPARE PRESERVE
PRIMARY PRIOR PRIVILEGES PROCEDURE PUBLIC READ REAL REFERENCES RELATIVE RESTRICT REVOKE RIGHT
ROLLBACK ROWS SCHEMA SCROLL SECOND SECTION SELECT SESSION SESSION_USER SET SIZE SMALLINT SOME SPACE
SQL SQLCODE SQLERROR SQLSTATE SUBSTRING SUM SYSTEM_USER TABLE TEMPORARY THEN TIME TIMESTAMP
TIMEZONE_HOUR TIMEZONE_MINUTE TO TRAILING TRANSACTION TRANSLATE TRANSLATION TRIM TRUE UNION UNIQUE
UNKNOWN UPDATE UPPER USAGE USER USING VALUE VALUES VARCHAR VARYING VIEW WHEN WHENEVER WHERE WITH
WORK WRITE YEAR ZONE
"""
_RESERVED = frozenset(_RESERVED_WORDS.split())


def adql_column_name(name: str) -> str:
    """``name`` as ADQL must write it: delimited if reserved or not a regular identifier."""
    regular = name[:1].isalpha() and all(ch.isalnum() or ch == "_" for ch in name)
    if regular and name.upper() not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


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


_TS = TAP_SCHEMA_NAME
# The foreign keys between the TAP_SCHEMA tables themselves (TAP 1.1 section 4).
_TAP_SCHEMA_KEYS = {
    "tap_schema_tables_schema": (f"{_TS}.tables", "schema_name", f"{_TS}.schemas", "schema_name"),
    "tap_schema_columns_table": (f"{_TS}.columns", "table_name", f"{_TS}.tables", "table_name"),
    "tap_schema_keys_from": (f"{_TS}.keys", "from_table", f"{_TS}.tables", "table_name"),
    "tap_schema_keys_target": (f"{_TS}.keys", "target_table", f"{_TS}.tables", "table_name"),
    "tap_schema_key_columns_key": (f"{_TS}.key_columns", "key_id", f"{_TS}.keys", "key_id"),
}


#: Schema of tables uploaded with a query (TAP 1.1 section 3.5).
UPLOAD_SCHEMA = "TAP_UPLOAD"
_SCHEMA_DESCRIPTIONS = {
    TAP_SCHEMA_NAME: "Metadata of the tables in this service (TAP 1.1)",
    CATALOG_SCHEMA: "Survey catalogs served by skydm",
    "ivoa": "IVOA standard tables (ObsLocTAP: observations of this repository)",
}


@dataclass(frozen=True)
class TableRef:
    """A resolved table: its schema, its definition and the name TAP_SCHEMA gives it.

    ``physical`` is the (schema or None, name) the engine SQL uses when it
    differs from (schema, table name): uploaded tables live under engine names
    of their own for the length of one query.
    """

    schema: str
    table: TableDef
    physical: tuple[str | None, str] | None = None

    @property
    def tap_name(self) -> str:
        """The ``table_name`` in ``TAP_SCHEMA.tables``."""
        if self.schema == CATALOG_SCHEMA:
            return self.table.name
        return f"{self.schema}.{self.table.name}"


class TapSchema:
    """Metadata of the queryable tables: the loaded catalog tables plus TAP_SCHEMA.

    Parameters
    ----------
    tables : iterable of TableDef
        The loaded catalog tables (schema ``skydm``).
    """

    def __init__(self, tables: Iterable[TableDef]) -> None:
        self.refs: list[TableRef] = [TableRef(t.schema, t) for t in tables]
        self.refs += [TableRef(TAP_SCHEMA_NAME, t) for t in TAP_SCHEMA_TABLES]
        self._listed = list(self.refs)  # what TAP_SCHEMA describes (never uploads)

    def with_uploads(self, uploads: Iterable[TableRef]) -> TapSchema:
        """This schema plus tables uploaded for one query (not listed in TAP_SCHEMA)."""
        out = TapSchema([])
        out.refs = [*self.refs, *uploads]
        out._listed = self._listed
        return out

    def __iter__(self) -> Iterator[TableRef]:
        return iter(self.refs)

    @property
    def catalog_tables(self) -> list[TableDef]:
        """The loaded catalog tables (not TAP_SCHEMA)."""
        return [r.table for r in self._listed if r.schema != TAP_SCHEMA_NAME]

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
        names = [CATALOG_SCHEMA, TAP_SCHEMA_NAME]
        names += sorted({r.schema for r in self._listed} - set(names))
        schemas = [(n, _SCHEMA_DESCRIPTIONS.get(n, ""), i) for i, n in enumerate(names)]
        out: dict[str, dict[str, list[object]]] = {
            t.name: {c.name: [] for c in t.columns} for t in TAP_SCHEMA_TABLES
        }

        def add(table: str, **row: object) -> None:
            for col, values in out[table].items():
                values.append(row.get(col))

        for name, desc, index in schemas:
            add("schemas", schema_name=name, description=desc, schema_index=index)
        for t_index, ref in enumerate(self._listed):
            t = ref.table
            add(
                "tables",
                schema_name=ref.schema,
                table_name=ref.tap_name,
                table_type="table",
                utype=t.utype,
                description=t.description,
                table_index=t_index,
            )
            for c_index, c in enumerate(t.columns):
                add(
                    "columns",
                    table_name=ref.tap_name,
                    column_name=adql_column_name(c.name),
                    utype=c.utype,
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
        for key_id, (frm, fcol, tgt, tcol) in _TAP_SCHEMA_KEYS.items():
            add(
                "keys",
                key_id=key_id,
                from_table=frm,
                target_table=tgt,
                description="TAP_SCHEMA structure (TAP 1.1 section 4)",
            )
            add("key_columns", key_id=key_id, from_column=fcol, target_column=tcol)
        present = {r.table.name for r in self._listed if r.schema == CATALOG_SCHEMA}
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
