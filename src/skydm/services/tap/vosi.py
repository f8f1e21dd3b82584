"""VOSI documents: capabilities (with TAPRegExt), tables and availability.

The table set is read from ``TAP_SCHEMA`` through the engine's own ADQL
``execute()``, so ``/tables`` and ``TAP_SCHEMA`` can never disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from skydm.services.tap.config import TapConfig
from skydm.services.tap.formats import FORMATS
from skydm.services.tap.votable import _ADQL_TYPES

XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
XSI = "http://www.w3.org/2001/XMLSchema-instance"
VS = "http://www.ivoa.net/xml/VODataService/v1.1"
TR = "ivo://ivoa.net/std/TAPRegExt"

#: ADQL 2.1 optional features offered when the engine does not list its own,
#: as (TAPRegExt feature type, form).
DEFAULT_FEATURES: tuple[tuple[str, str], ...] = (
    *(
        (f"{TR}#features-adqlgeo", form)
        for form in (
            "POINT",
            "CIRCLE",
            "BOX",
            "POLYGON",
            "CONTAINS",
            "INTERSECTS",
            "DISTANCE",
            "AREA",
            "COORD1",
            "COORD2",
        )
    ),
    (f"{TR}#features-adql-string", "LOWER"),
    (f"{TR}#features-adql-string", "ILIKE"),
    (f"{TR}#features-adql-offset", "OFFSET"),
    (f"{TR}#features-adql-type", "CAST"),
    (f"{TR}#features-adql-sets", "UNION"),
    (f"{TR}#features-adql-sets", "EXCEPT"),
    (f"{TR}#features-adql-sets", "INTERSECT"),
    (f"{TR}#features-adql-common-table", "WITH"),
)

_STANDARD_OUTPUT_IDS = {
    "votable": f"{TR}#output-votable-binary2",
    "votable/td": f"{TR}#output-votable-td",
}


def _data_models(config: TapConfig) -> list[str]:
    """TAPRegExt ``dataModel`` elements: ObsCore 1.1 when ``ivoa.ObsCore`` is published."""
    from skydm.catalog.obscore import OBSCORE, OBSCORE_DM

    if (config.catalog_dir / OBSCORE.qualified).exists():
        return [f'<dataModel ivo-id="{OBSCORE_DM}">ObsCore-1.1</dataModel>\n']
    return []


def capabilities(base_url: str, config: TapConfig, features: Iterable[tuple[str, str]]) -> bytes:
    """The VOSI capabilities document of the TAP service at ``base_url``.

    Parameters
    ----------
    base_url : str
        The TAP service's root URL (``.../tap``), without a trailing slash.
    config : TapConfig
        Limits to declare (output, execution duration, retention).
    features : iterable of (str, str)
        ADQL optional features offered, as (feature type URI, form).
    """
    by_type: dict[str, list[str]] = defaultdict(list)
    for ftype, form in features:
        by_type[ftype].append(form)
    out = [
        XML_DECL,
        '<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0" '
        f'xmlns:xsi="{XSI}" xmlns:vr="http://www.ivoa.net/xml/VOResource/v1.0" '
        f'xmlns:vs="{VS}" xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">\n',
        '<capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">\n',
        '<interface role="std" version="1.1" xsi:type="vs:ParamHTTP">'
        f'<accessURL use="base">{escape(base_url)}</accessURL></interface>\n',
        *_data_models(config),
        "<language><name>ADQL</name>"
        '<version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version>'
        '<version ivo-id="ivo://ivoa.net/std/ADQL#v2.1">2.1</version>'
        "<description>Astronomical Data Query Language</description>\n",
    ]
    for ftype, forms in by_type.items():
        out.append(f"<languageFeatures type={quoteattr(ftype)}>")
        out.extend(f"<feature><form>{escape(form)}</form></feature>" for form in forms)
        out.append("</languageFeatures>\n")
    out.append("</language>\n")
    for fmt in FORMATS:
        ivo_id = _STANDARD_OUTPUT_IDS.get(fmt.key)
        attr = f" ivo-id={quoteattr(ivo_id)}" if ivo_id else ""
        aliases = "".join(f"<alias>{escape(a)}</alias>" for a in (fmt.key,))
        out.append(f"<outputFormat{attr}><mime>{escape(fmt.mime)}</mime>{aliases}</outputFormat>\n")
    # URLs are fetched from public hosts only (see skydm.catalog.uploads.fetch_upload).
    out.extend(
        f'<uploadMethod ivo-id="{TR}#upload-{kind}"/>\n' for kind in ("inline", "http", "https")
    )
    out.append(
        f"<retentionPeriod><default>{config.default_retention}</default>"
        f"<hard>{config.max_retention}</hard></retentionPeriod>\n"
        f"<executionDuration><default>{config.default_execution_duration}</default>"
        f"<hard>{config.max_execution_duration}</hard></executionDuration>\n"
        f'<outputLimit><default unit="row">{config.default_maxrec}</default>'
    )
    if config.max_maxrec is not None:
        out.append(f'<hard unit="row">{config.max_maxrec}</hard>')
    out.append(
        "</outputLimit>\n"
        f'<uploadLimit><default unit="byte">{config.max_upload_bytes}</default>'
        f'<hard unit="byte">{config.max_upload_bytes}</hard></uploadLimit>\n'
        "</capability>\n"
    )
    for std, path in (
        ("ivo://ivoa.net/std/VOSI#capabilities", "capabilities"),
        ("ivo://ivoa.net/std/VOSI#availability", "availability"),
        ("ivo://ivoa.net/std/VOSI#tables-1.1", "tables"),
        ("ivo://ivoa.net/std/DALI#examples", "examples"),
    ):
        out.append(
            f'<capability standardID="{std}"><interface xsi:type="vs:ParamHTTP">'
            f'<accessURL use="full">{escape(base_url)}/{path}</accessURL></interface>'
            "</capability>\n"
        )
    out.append("</vosi:capabilities>\n")
    return "".join(out).encode()


def availability(available: bool, note: str) -> bytes:
    """The VOSI availability document."""
    return (
        f'{XML_DECL}<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">'
        f"<vosi:available>{'true' if available else 'false'}</vosi:available>"
        f"<vosi:note>{escape(note)}</vosi:note></vosi:availability>\n"
    ).encode()


@dataclass
class TableInfo:
    """One table of the table set, read from ``TAP_SCHEMA``."""

    name: str
    schema: str
    table_type: str | None
    description: str | None
    columns: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TableSet:
    """Schemas and their tables, read from ``TAP_SCHEMA``."""

    schemas: dict[str, str | None]
    tables: dict[str, TableInfo]

    def find(self, name: str) -> TableInfo | None:
        """The table called ``name`` (case-insensitive), or ``None``."""
        for table in self.tables.values():
            if table.name.lower() == name.lower():
                return table
        return None


def _rows(engine: Any, adql: str) -> list[dict[str, Any]]:
    table = engine.execute(adql).table
    return [{k.lower(): v for k, v in row.items()} for row in table.to_pylist()]


def read_tableset(engine: Any) -> TableSet:
    """Read the table set from the engine's ``TAP_SCHEMA`` tables."""
    schemas = {
        r["schema_name"]: r.get("description")
        for r in _rows(engine, "SELECT * FROM TAP_SCHEMA.schemas")
    }
    tables: dict[str, TableInfo] = {}
    for r in _rows(engine, "SELECT * FROM TAP_SCHEMA.tables"):
        tables[r["table_name"]] = TableInfo(
            r["table_name"], r["schema_name"], r.get("table_type"), r.get("description")
        )
        schemas.setdefault(r["schema_name"], None)
    columns = _rows(engine, "SELECT * FROM TAP_SCHEMA.columns")
    columns.sort(key=lambda r: (r.get("column_index") is None, r.get("column_index") or 0))
    for r in columns:
        if r["table_name"] in tables:
            tables[r["table_name"]].columns.append(r)
    key_columns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in _rows(engine, "SELECT * FROM TAP_SCHEMA.key_columns"):
        key_columns[r["key_id"]].append(r)
    for r in _rows(engine, "SELECT * FROM TAP_SCHEMA.keys"):
        if r["from_table"] in tables:
            tables[r["from_table"]].keys.append({**r, "columns": key_columns[r["key_id"]]})
    return TableSet(schemas, tables)


def _opt(tag: str, value: Any) -> str:
    return f"<{tag}>{escape(str(value))}</{tag}>" if value not in (None, "") else ""


def _column_xml(col: dict[str, Any]) -> str:
    datatype, arraysize, xtype = col.get("datatype"), col.get("arraysize"), col.get("xtype")
    if isinstance(datatype, str) and datatype.lower().startswith("adql:"):
        datatype, adql_size, adql_xtype = _ADQL_TYPES.get(datatype[5:].upper(), ("char", "*", None))
        arraysize, xtype = arraysize or adql_size, xtype or adql_xtype
    attrs = ""
    if arraysize not in (None, ""):
        attrs += f" arraysize={quoteattr(str(arraysize))}"
    if xtype:
        attrs += f" extendedType={quoteattr(str(xtype))}"
    flags = "".join(
        f"<flag>{flag}</flag>"
        for flag, key in (("indexed", "indexed"), ("principal", "principal"), ("std", "std"))
        if col.get(key)
    )
    return (
        "<column>"
        + _opt("name", col["column_name"])
        + _opt("description", col.get("description"))
        + _opt("unit", col.get("unit"))
        + _opt("ucd", col.get("ucd"))
        + _opt("utype", col.get("utype"))
        + f'<dataType xsi:type="vs:VOTableType"{attrs}>{escape(str(datatype or "char"))}</dataType>'
        + flags
        + "</column>\n"
    )


def table_xml(table: TableInfo, *, detail: bool = True, root: bool = False) -> str:
    """The VODataService ``table`` element (the document root when ``root``)."""
    if root:
        open_tag = (
            f'<vosi:table xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
            f'xmlns:vs="{VS}" xmlns:xsi="{XSI}"'
        )
        close_tag = "</vosi:table>\n"
    else:
        open_tag, close_tag = "<table", "</table>\n"
    kind = table.table_type if table.table_type in ("table", "view", "output") else "table"
    out = [
        f'{open_tag} type="{kind}">',
        _opt("name", table.name),
        _opt("description", table.description),
    ]
    if detail:
        out.append("\n")
        out.extend(_column_xml(col) for col in table.columns)
        for key in table.keys:
            pairs = "".join(
                f"<fkColumn>{_opt('fromColumn', kc['from_column'])}"
                f"{_opt('targetColumn', kc['target_column'])}</fkColumn>"
                for kc in key["columns"]
            )
            out.append(
                f"<foreignKey>{_opt('targetTable', key['target_table'])}{pairs}"
                f"{_opt('description', key.get('description'))}</foreignKey>\n"
            )
    out.append(close_tag)
    return "".join(out)


def tableset_xml(tableset: TableSet, *, detail: bool = True) -> bytes:
    """The VOSI ``tableset`` document; ``detail=False`` leaves columns out (VOSI 1.1)."""
    out = [
        XML_DECL,
        f'<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" xmlns:vs="{VS}" '
        f'xmlns:xsi="{XSI}">\n',
    ]
    for schema, description in sorted(tableset.schemas.items(), key=lambda kv: kv[0].lower()):
        out.append(f"<schema>{_opt('name', schema)}{_opt('description', description)}\n")
        for table in tableset.tables.values():
            if table.schema == schema:
                out.append(table_xml(table, detail=detail))
        out.append("</schema>\n")
    out.append("</vosi:tableset>\n")
    return "".join(out).encode()
