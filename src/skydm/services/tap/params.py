"""Request parameters of TAP queries, validated at the boundary (DALI, TAP 1.1).

Parameter names are case-insensitive (DALI 1.1 §3); values of ``LANG``,
``REQUEST`` and ``RESPONSEFORMAT`` are compared case-insensitively too.  The
query text is checked for size and nesting depth here, before it ever
reaches the ADQL parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from skydm.errors import UserError
from skydm.services.tap.config import TapConfig
from skydm.services.tap.errors import QueryTooDeepError, QueryTooLargeError, TapParameterError
from skydm.services.tap.formats import OutputFormat, find_format

#: Query languages accepted in ``LANG`` (upper case).
LANGUAGES = ("ADQL", "ADQL-2.0", "ADQL-2.1")

Params = Mapping[str, list[str]]


def collect_params(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Gather request parameters under upper-case names, keeping repeated values."""
    params: dict[str, list[str]] = {}
    for key, value in items:
        params.setdefault(key.upper(), []).append(value)
    return params


def single(params: Params, name: str) -> str | None:
    """The one value of parameter ``name`` (upper case), or ``None`` when absent.

    Raises
    ------
    TapParameterError
        When the parameter is given more than once with different values.
    """
    values = params.get(name)
    if not values:
        return None
    if len(set(values)) > 1:
        raise TapParameterError(name, values, "give this parameter once")
    return values[0]


@dataclass(frozen=True)
class QueryRequest:
    """A validated TAP query request.

    Attributes
    ----------
    query : str
        The ADQL text.
    lang : str
        The language as given (one of :data:`LANGUAGES`, any case).
    maxrec : int
        Row limit; more rows than this make the result overflow.
    output : OutputFormat
        The requested output format.
    run_id : str or None
        The client's ``RUNID`` label.
    """

    query: str
    lang: str
    maxrec: int
    output: OutputFormat
    run_id: str | None = None
    uploads: tuple[tuple[str, str], ...] = ()

    def as_parameters(self) -> dict[str, str]:
        """The request as UWS job parameters (lower-case names)."""
        out = {
            "lang": self.lang,
            "query": self.query,
            "maxrec": str(self.maxrec),
            "responseformat": self.output.key,
        }
        if self.run_id is not None:
            out["runid"] = self.run_id
        if self.uploads:
            out["upload"] = ";".join(f"{name},{uri}" for name, uri in self.uploads)
        return out


def check_query_text(query: str, config: TapConfig) -> None:
    """Refuse a query that is too long or nested too deep, before any parsing.

    Raises
    ------
    QueryTooLargeError, QueryTooDeepError
    """
    size = len(query.encode("utf-8", errors="replace"))
    if size > config.max_query_bytes:
        raise QueryTooLargeError(size, config.max_query_bytes)
    if query.count("(") <= config.max_nesting:
        return  # cannot nest deeper than it has parentheses: no need to walk it
    depth = deepest = 0
    quote: str | None = None
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if quote is not None:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "-" and query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c == "(":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > config.max_nesting:
                    raise QueryTooDeepError(deepest, config.max_nesting, i)
        elif c == ")":
            depth -= 1
        i += 1


def parse_maxrec(value: str | None, config: TapConfig) -> int:
    """``MAXREC`` as an integer, the default when absent, capped at the hard limit."""
    if value is None or value.strip() == "":
        return config.default_maxrec
    try:
        maxrec = int(value)
    except ValueError:
        raise TapParameterError("MAXREC", value, "give a non-negative integer") from None
    if maxrec < 0:
        raise TapParameterError("MAXREC", value, "give a non-negative integer")
    if config.max_maxrec is not None:
        maxrec = min(maxrec, config.max_maxrec)
    return maxrec


def parse_format(params: Params) -> OutputFormat:
    """The output format from ``RESPONSEFORMAT`` (TAP 1.1) or ``FORMAT`` (TAP 1.0)."""
    value = single(params, "RESPONSEFORMAT")
    if value is None:
        value = single(params, "FORMAT")
    return find_format(value)


def parse_query_request(
    params: Params, config: TapConfig, *, require_query: bool = True
) -> QueryRequest:
    """Validate the parameters of a TAP query (sync, or an async job's creation).

    Parameters
    ----------
    params : mapping of str to list of str
        Request parameters under upper-case names (see :func:`collect_params`).
    config : TapConfig
        The service settings (limits).
    require_query : bool
        Whether a missing ``QUERY`` is an error.

    Raises
    ------
    TapParameterError, QueryTooLargeError, QueryTooDeepError
    """
    request = single(params, "REQUEST")
    if request is not None and request.lower() != "doquery":
        raise TapParameterError("REQUEST", request, "the only request supported is doQuery")
    lang = single(params, "LANG") or "ADQL"
    if lang.upper() not in LANGUAGES:
        raise TapParameterError("LANG", lang, f"supported languages are {', '.join(LANGUAGES)}")
    query = single(params, "QUERY")
    if query is None or not query.strip():
        if require_query:
            raise TapParameterError("QUERY", query or "", "give an ADQL query in QUERY")
        query = ""
    check_query_text(query, config)
    return QueryRequest(
        query=query,
        lang=lang,
        maxrec=parse_maxrec(single(params, "MAXREC"), config),
        output=parse_format(params),
        run_id=single(params, "RUNID"),
        uploads=tuple(parse_uploads(params.get("UPLOAD", []))),
    )


def parse_uploads(values: list[str]) -> list[tuple[str, str]]:
    """(name, URI) pairs of ``UPLOAD``: inline (``param:NAME``) or http(s) URLs.

    Raises
    ------
    TapParameterError
        For a malformed value, a repeated name or another kind of URI.
    """
    from skydm.catalog.uploads import parse_upload_param

    try:
        pairs = parse_upload_param(values)
    except UserError as exc:
        raise TapParameterError("UPLOAD", values, str(exc)) from None
    for name, uri in pairs:
        inline = uri.startswith("param:") and uri[len("param:") :].strip()
        if not inline and not uri.lower().startswith(("http://", "https://")):
            raise TapParameterError(
                "UPLOAD",
                f"{name},{uri}",
                f"UPLOAD={name},param:PARTNAME with the VOTable sent as multipart file part "
                "PARTNAME, or an http(s) URL of a public host",
            )
    return pairs
