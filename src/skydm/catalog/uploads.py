"""Tables uploaded with a query (TAP 1.1 ``UPLOAD``): read, checked and described.

An upload is a VOTable sent with the query; it becomes the table
``TAP_UPLOAD.<name>``, which that query alone can read (the engines register
it under a private name for the query's connection).  Uploads are checked at
the boundary: the name must be an ADQL regular identifier, the document at
most ``max_bytes`` long and a readable VOTable with at most ``max_rows`` rows
of scalar columns.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pyarrow as pa

from skydm.catalog.schema import ColumnDef, TableDef
from skydm.catalog.storage import votable_type
from skydm.errors import BadValueError, UserError

#: Default limits of one uploaded table.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_UPLOAD_ROWS = 1_000_000
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class UploadError(UserError):
    """An uploaded table cannot be used (bad name, too large, not a VOTable...)."""


@dataclass(frozen=True)
class UploadedTable:
    """One uploaded table: its definition (schema ``TAP_UPLOAD``) and its rows."""

    definition: TableDef
    data: pa.Table


def check_upload_name(name: str) -> str:
    """``name`` if it can name an uploaded table (an ADQL regular identifier).

    Raises
    ------
    UploadError
    """
    if not _NAME.match(name):
        raise UploadError(
            f"UPLOAD table name {name!r} is not usable: give a letter followed by "
            "letters, digits or _ (at most 64 characters)"
        )
    return name


def _datatype(t: pa.DataType) -> tuple[str, str | None]:
    # An uploaded column that is all null is typed as text; otherwise the
    # catalog's own mapping applies.
    if pa.types.is_null(t):
        return "char", "*"
    return votable_type(t)


def _arrow_for(datatype: str) -> pa.DataType:
    return {
        "boolean": pa.bool_(),
        "short": pa.int16(),
        "int": pa.int32(),
        "long": pa.int64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "char": pa.string(),
    }[datatype]


def read_upload(
    name: str,
    content: bytes,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_rows: int = MAX_UPLOAD_ROWS,
) -> UploadedTable:
    """Read an uploaded VOTable as the table ``TAP_UPLOAD.<name>``.

    Parameters
    ----------
    name : str
        The table name given in ``UPLOAD=name,URI``.
    content : bytes
        The VOTable document.
    max_bytes, max_rows : int
        Limits on the document and on its rows.

    Returns
    -------
    UploadedTable
        Column names as the VOTable's FIELD names, types from its datatypes,
        units, UCDs and descriptions kept.

    Raises
    ------
    UploadError
        For a bad name, a document over the limits, one that is not a
        VOTable, or array-valued columns.
    """
    from astropy.io.votable import parse

    from skydm.catalog.readers import _from_astropy

    check_upload_name(name)
    if len(content) > max_bytes:
        raise UploadError(
            f"uploaded table {name} is {len(content)} bytes; the limit is {max_bytes} bytes"
        )
    try:
        votable = parse(io.BytesIO(content), verify="ignore")
        first = votable.get_first_table()
        xtypes = {(f.name or f.ID): f.xtype for f in first.fields}
        table = first.to_table(use_names_over_ids=True)
    except Exception as exc:  # astropy raises many kinds for malformed documents
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UploadError(
            f"uploaded table {name} is not a readable VOTable ({first}); send a VOTable document"
        ) from None
    if len(table) > max_rows:
        raise UploadError(
            f"uploaded table {name} has {len(table)} rows; the limit is {max_rows} rows"
        )
    try:
        data, meta = _from_astropy(table, f"uploaded table {name}")
    except UserError as exc:
        raise UploadError(str(exc)) from None
    seen: set[str] = set()
    columns = []
    arrays = []
    for field, array in zip(data.schema, data.columns, strict=True):
        if not field.name or '"' in field.name or field.name.lower() in seen:
            raise UploadError(
                f"uploaded table {name}: column name {field.name!r} is empty, has a double "
                "quote or repeats another (ignoring case); rename it"
            )
        seen.add(field.name.lower())
        try:
            datatype, arraysize = _datatype(field.type)
        except TypeError:
            raise UploadError(
                f"uploaded table {name}: column {field.name!r} has type {field.type}, "
                "which cannot be queried; send numbers, booleans or strings"
            ) from None
        m = meta.get(field.name, {})
        columns.append(
            ColumnDef(
                field.name,
                datatype,
                m.get("unit", ""),
                m.get("ucd", ""),
                m.get("description", ""),
                arraysize=arraysize,
                principal=True,
                xtype=xtypes.get(field.name) or None,
            )
        )
        arrays.append(array.cast(_arrow_for(datatype)))
    if not columns:
        raise UploadError(f"uploaded table {name} has no columns")
    definition = TableDef(
        name,
        "Table uploaded with the query",
        tuple(columns),
        ra_col=None,
        dec_col=None,
        schema="TAP_UPLOAD",
    )
    return UploadedTable(definition, pa.table(arrays, names=[c.name for c in columns]))


def parse_upload_param(values: list[str]) -> list[tuple[str, str]]:
    """(name, URI) pairs of ``UPLOAD`` values (``name,URI``, several joined by ``;``).

    Raises
    ------
    BadValueError
        For a value that is not ``name,URI``, or one name given twice.
    """
    pairs: list[tuple[str, str]] = []
    for value in values:
        for item in value.split(";"):
            if not item.strip():
                continue
            name, sep, uri = item.partition(",")
            if not sep or not name.strip() or not uri.strip():
                raise BadValueError("UPLOAD", item, "name,URI (e.g. UPLOAD=mylist,param:file1)")
            pairs.append((check_upload_name(name.strip()), uri.strip()))
    names = [n.lower() for n, _ in pairs]
    if len(set(names)) != len(names):
        raise BadValueError("UPLOAD", values, "each table name once")
    return pairs


def fetch_upload(
    url: str,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    timeout: float = 30.0,
    allow_private: bool = False,
) -> bytes:
    """Fetch an upload given as an http(s) URL, refusing to reach private addresses.

    A service that fetches URLs for its clients can be made to request
    addresses only it can reach (SSRF).  The host is therefore resolved first,
    every address it resolves to must be public (not loopback, private,
    link-local, multicast or reserved) unless ``allow_private``, and the
    request goes to the address checked (the ``Host`` header and TLS name
    stay those of the URL), so a second DNS answer cannot redirect it.
    Redirects are not followed.

    Raises
    ------
    UploadError
        For another scheme, a private address, a failed request, a status
        other than 200, or more than ``max_bytes`` bytes.
    """
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UploadError(f"upload URL {url!r}: give an http:// or https:// URL, or upload inline")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UploadError(f"upload URL {url!r}: cannot resolve {parts.hostname} ({exc})") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not allow_private and not ip.is_global:
            raise UploadError(
                f"upload URL {url!r}: {parts.hostname} is a non-public address ({address}); "
                "this service fetches uploads from public hosts only: upload the table inline"
            )
    target = addresses[0]
    host = f"[{target}]" if ":" in target else target
    direct = parts._replace(netloc=f"{host}:{port}").geturl()
    headers = {"Host": parts.netloc.rpartition("@")[2]}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            request = client.build_request("GET", direct, headers=headers, extensions=extensions)
            response = client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise UploadError(
                        f"upload URL {url!r} answered HTTP {response.status_code}; "
                        "give a URL that returns the VOTable itself (redirects are not followed)"
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadError(
                            f"upload URL {url!r} returned more than {max_bytes} bytes, the limit"
                        )
                    chunks.append(chunk)
            finally:
                response.close()
    except httpx.HTTPError as exc:
        raise UploadError(f"upload URL {url!r} could not be fetched: {exc}") from None
    return b"".join(chunks)
