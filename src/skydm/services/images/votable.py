"""VOTable documents of the image services: SIA results, DataLink links, DALI errors, VOSI."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from skydm.catalog.schema import ColumnDef

XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
_VOTABLE_OPEN = (
    '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
)
_INT_NULL = {"int": "-2147483648", "long": "-9223372036854775808", "short": "-32768"}
SIA_STANDARD_ID = "ivo://ivoa.net/std/SIA#query-2.0"
DATALINK_STANDARD_ID = "ivo://ivoa.net/std/DataLink#links-1.0"
SODA_SYNC_ID = "ivo://ivoa.net/std/SODA#sync-1.0"
SODA_ASYNC_ID = "ivo://ivoa.net/std/SODA#async-1.0"


def _field(col: ColumnDef) -> str:
    attrs = [f"name={quoteattr(col.name)}", f"datatype={quoteattr(col.datatype)}"]
    if col.arraysize:
        attrs.append(f"arraysize={quoteattr(col.arraysize)}")
    if col.unit:
        attrs.append(f"unit={quoteattr(col.unit)}")
    if col.ucd:
        attrs.append(f"ucd={quoteattr(col.ucd)}")
    if col.utype:
        attrs.append(f"utype={quoteattr(col.utype)}")
    inner = f"<DESCRIPTION>{escape(col.description)}</DESCRIPTION>" if col.description else ""
    if col.datatype in _INT_NULL:
        inner += f'<VALUES null="{_INT_NULL[col.datatype]}"/>'
    return f"<FIELD {' '.join(attrs)}>{inner}</FIELD>\n"


def _cell(col: ColumnDef, value: Any) -> str:
    if value is None:
        return f"<TD>{_INT_NULL[col.datatype]}</TD>" if col.datatype in _INT_NULL else "<TD/>"
    if col.datatype in ("double", "float"):
        number = float(value)
        return f"<TD>{number!r}</TD>" if math.isfinite(number) else "<TD/>"
    if col.datatype in _INT_NULL:
        return f"<TD>{int(value)}</TD>"
    return f"<TD>{escape(str(value))}</TD>"


def table_document(
    columns: Sequence[ColumnDef],
    rows: Iterable[dict[str, Any]],
    *,
    overflow: bool = False,
    extra_resources: str = "",
) -> bytes:
    """A ``results`` VOTable of ``rows`` (TABLEDATA) with QUERY_STATUS (and OVERFLOW)."""
    body = "".join(
        "<TR>" + "".join(_cell(c, row.get(c.name)) for c in columns) + "</TR>\n" for row in rows
    )
    tail = '<INFO name="QUERY_STATUS" value="OVERFLOW"/>\n' if overflow else ""
    return (
        XML_DECL
        + _VOTABLE_OPEN
        + '<RESOURCE type="results">\n<INFO name="QUERY_STATUS" value="OK"/>\n<TABLE>\n'
        + "".join(_field(c) for c in columns)
        + "<DATA><TABLEDATA>\n"
        + body
        + "</TABLEDATA></DATA>\n</TABLE>\n"
        + tail
        + "</RESOURCE>\n"
        + extra_resources
        + "</VOTABLE>\n"
    ).encode()


def error_document(message: str) -> bytes:
    """A DALI error document: QUERY_STATUS ERROR with ``message``."""
    return (
        XML_DECL
        + _VOTABLE_OPEN
        + '<RESOURCE type="results">\n'
        + f'<INFO name="QUERY_STATUS" value="ERROR">{escape(message)}</INFO>\n'
        + "</RESOURCE>\n</VOTABLE>\n"
    ).encode()


@dataclass(frozen=True)
class InputParam:
    """A PARAM of a service descriptor's ``inputParams`` group."""

    name: str
    datatype: str
    ucd: str
    description: str
    arraysize: str | None = "*"
    unit: str = ""
    xtype: str = ""
    value: str = ""
    ref: str = ""


def _char_param(name: str, value: str) -> str:
    return f'<PARAM name="{name}" datatype="char" arraysize="*" value={quoteattr(value)}/>\n'


def service_descriptor(
    ident: str, standard_id: str, access_url: str, params: Sequence[InputParam]
) -> str:
    """A DataLink service descriptor (``RESOURCE type="meta" utype="adhoc:service"``)."""
    out = [
        f'<RESOURCE type="meta" utype="adhoc:service" ID={quoteattr(ident)}>\n',
        _char_param("standardID", standard_id),
        _char_param("accessURL", access_url),
        '<GROUP name="inputParams">\n',
    ]
    for p in params:
        attrs = [f"name={quoteattr(p.name)}", f"datatype={quoteattr(p.datatype)}"]
        if p.arraysize:
            attrs.append(f"arraysize={quoteattr(p.arraysize)}")
        if p.unit:
            attrs.append(f"unit={quoteattr(p.unit)}")
        if p.ucd:
            attrs.append(f"ucd={quoteattr(p.ucd)}")
        if p.xtype:
            attrs.append(f"xtype={quoteattr(p.xtype)}")
        if p.ref:
            attrs.append(f"ref={quoteattr(p.ref)}")
        attrs.append(f"value={quoteattr(p.value)}")
        out.append(
            f"<PARAM {' '.join(attrs)}><DESCRIPTION>{escape(p.description)}</DESCRIPTION></PARAM>\n"
        )
    out.append("</GROUP>\n</RESOURCE>\n")
    return "".join(out)


def capabilities_document(entries: Sequence[tuple[str, str]]) -> bytes:
    """A VOSI capabilities document: ``(standardID, access URL)`` pairs, ParamHTTP interfaces."""
    caps = "".join(
        f"<capability standardID={quoteattr(std)}>"
        f'<interface xsi:type="vs:ParamHTTP" role="std">'
        f'<accessURL use="base">{escape(url)}</accessURL></interface></capability>\n'
        for std, url in entries
    )
    return (
        XML_DECL + '<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1">\n' + caps + "</vosi:capabilities>\n"
    ).encode()


def availability_document(note: str = "service is accepting requests") -> bytes:
    """A VOSI availability document saying the service is up."""
    return (
        XML_DECL + '<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">'
        f"<vosi:available>true</vosi:available><vosi:note>{escape(note)}</vosi:note>"
        "</vosi:availability>\n"
    ).encode()
