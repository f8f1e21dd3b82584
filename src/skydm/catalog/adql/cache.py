"""A cache of translations keyed by query *shape*: geometry constants lifted out.

Parsing and validating ADQL with sqlglot costs milliseconds of pure Python,
more than a cone search itself takes in DuckDB.  Services mostly see the same
query shapes with different positions (``CONTAINS(POINT(ra, dec),
CIRCLE(10.2, -3.1, 0.01)) = 1``), so the cache keys a query by its text with
the numbers inside ``CONTAINS``/``INTERSECTS``/``DISTANCE`` calls replaced by
a marker.  The first query of a shape is compiled in full; what is kept is the
generated SQL with placeholders for its geometry, and a copy of each geometry
call.  A later query of that shape only substitutes its numbers into copies of
those calls and recomputes their SQL (which re-validates the values and
recomputes the HEALPix ranges), then splices it in.

Numbers are matched to the parsed tree by their offsets in the text, so a
shape is cached only when every lifted number is a literal of a geometry call
and every literal of those calls is a lifted number; anything else (numbers
the compiler moved elsewhere, as ``COORD1(POINT(1, 2))`` does) is compiled in
full every time.  Error messages on a cached shape come from a full compile,
so they carry the right positions.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from sqlglot import exp

from skydm.catalog.adql.compiler import compile_template
from skydm.catalog.adql.errors import AdqlError
from skydm.catalog.adql.functions import Dialect, adql_name
from skydm.catalog.adql.geometry import Circle, shape
from skydm.catalog.adql.translation import (
    GeometryKind,
    Template,
    Translation,
    geometry_sql,
    splice,
)
from skydm.catalog.tapschema import TapSchema

_TOKEN = re.compile(
    r"""('(?:[^']|'')*'?"""  # string literal (unterminated: sqlglot reports it)
    r"""|"(?:[^"]|"")*"?"""  # delimited identifier
    r"|--[^\n]*"  # comment
    r"|[A-Za-z_][A-Za-z0-9_$]*"  # word
    r"|(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"  # number (group 2)
    r"|\s+|.)"  # the token is group 1...
    r"(\s*)",  # ...and the whitespace after it group 3: half the iterations of the loop
    re.S,
)
_ZONES = frozenset({"CONTAINS", "INTERSECTS", "DISTANCE"})
_MARK = "\x00"


def lift(adql: str) -> tuple[str, list[tuple[int, str]]]:
    """The query's shape and the numbers lifted out of its geometry calls.

    Returns
    -------
    key : str
        The text with each number inside a CONTAINS/INTERSECTS/DISTANCE call
        replaced by a marker.
    numbers : list of (int, str)
        Offset and text of each lifted number, in order.
    """
    parts: list[str] = []
    numbers: list[tuple[int, str]] = []
    depth = 0
    zone: int | None = None  # depth at which the current geometry call opened
    pending = False  # a geometry function name was just seen
    for m in _TOKEN.finditer(adql):
        text, number, space = m.group(1, 2, 3)
        if number is not None and zone is not None:
            numbers.append((m.start(), text))
            parts.append(_MARK + space)
            pending = False
            continue
        parts.append(m.group(0))
        if text == "(":
            depth += 1
            if pending and zone is None:
                zone = depth
            pending = False
        elif text == ")":
            if zone == depth:
                zone = None
            depth -= 1
            pending = False
        elif text.upper() in _ZONES:
            pending = True
        elif not text.isspace():
            pending = False
    return "".join(parts), numbers


@dataclass
class _Piece:
    node: exp.Expr  # never mutated: copied for each use
    kind: GeometryKind
    slots: list[int]  # lifted-number index of each numeric literal of node, in walk order


@dataclass
class _Entry:
    schema: TapSchema
    sql: str
    token: str
    raw: list[str]
    pieces: list[_Piece | None]
    translation: Translation
    cone_piece: int | None = None
    # (slot, sign) of the cone's ra, dec and radius among the lifted numbers.
    cone_slots: tuple[tuple[int, float], ...] | None = None


def _clone(node: exp.Expr) -> exp.Expr:
    """A copy of a tree whose ``meta`` dicts are copied shallowly.

    sqlglot's ``copy()`` deep-copies ``meta``, which holds the compiler's
    column definitions: ten times slower, for values that are never changed.
    """
    root = node.__class__()
    stack = [(node, root)]
    while stack:
        old, new = stack.pop()
        if old._meta is not None:
            new._meta = dict(old._meta)
        for key, value in old.args.items():
            if isinstance(value, exp.Expr):
                child = value.__class__()
                stack.append((value, child))
                new.set(key, child)
            elif type(value) is list:
                items: list[object] = []
                for v in value:
                    if isinstance(v, exp.Expr):
                        child = v.__class__()
                        stack.append((v, child))
                        items.append(child)
                    else:
                        items.append(v)
                new.set(key, items)
            else:
                new.args[key] = value
    return root


def _numeric_literals(node: exp.Expr) -> list[exp.Literal]:
    return [n for n in node.walk() if isinstance(n, exp.Literal) and not n.is_string]


def _entry(schema: TapSchema, template: Template, numbers: list[tuple[int, str]]) -> _Entry | None:
    """What to keep of a full compile, or None when the shape cannot be re-used."""
    index = {start: (k, text) for k, (start, text) in enumerate(numbers)}
    used: list[int] = []
    pieces: list[_Piece | None] = []
    for piece in template.pieces:
        if piece is None:
            pieces.append(None)
            continue
        node, kind = piece
        slots = []
        for lit in _numeric_literals(node):
            found = index.get(lit.meta.get("start", -1))
            if found is None or found[1] != lit.this:
                return None  # a literal the text scan did not see: compile in full
            slots.append(found[0])
        used += slots
        pieces.append(_Piece(_clone(node), kind, slots))
    if sorted(used) != list(range(len(numbers))):
        return None  # a lifted number went elsewhere in the SQL
    cone_piece = template.cone_piece
    cone_slots = None
    if cone_piece is not None and template.translation.cone is not None:
        kept = pieces[cone_piece]
        assert kept is not None
        cone_slots = _circle_slots(kept)
    return _Entry(
        schema,
        template.sql,
        template.token,
        template.raw,
        pieces,
        template.translation,
        cone_piece,
        cone_slots,
    )


def _circle_slots(piece: _Piece) -> tuple[tuple[int, float], ...] | None:
    """(slot, sign) of the circle's ra, dec and radius, when each is a plain number.

    Then a later query of the shape gets its cone from its lifted numbers
    directly, without copying and walking the geometry call.
    """
    node = piece.node
    args = [node.this, node.expression] if isinstance(node, exp.Contains) else node.expressions
    circles = [a for a in args if adql_name(a) == "CIRCLE"]
    if len(circles) != 1:
        return None
    circle = shape(circles[0])
    if not isinstance(circle, Circle):
        return None
    where = {id(lit): k for k, lit in enumerate(_numeric_literals(node))}
    out = []
    for value in (circle.centre.ra, circle.centre.dec, circle.radius):
        sign = 1.0
        if isinstance(value, exp.Neg):
            value, sign = value.this, -1.0
        if not isinstance(value, exp.Literal) or id(value) not in where:
            return None
        out.append((piece.slots[where[id(value)]], sign))
    return tuple(out)


class TranslationCache:
    """Translations of recent query shapes (LRU), shared by the threads of one engine.

    Parameters
    ----------
    size : int
        Shapes kept.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[object, ...], _Entry | None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def compile(
        self,
        adql: str,
        *,
        dialect: Dialect,
        schema: TapSchema,
        maxrec: int | None = None,
        partition_orders: dict[str, int] | None = None,
    ) -> Translation:
        """The translation of ``adql`` (as :func:`compile_query` gives it)."""
        found = self.lookup(
            adql, dialect=dialect, schema=schema, maxrec=maxrec, partition_orders=partition_orders
        )
        if found is not None:
            return found
        orders = partition_orders or {}
        text, numbers = lift(adql)
        key = (text, dialect, maxrec, tuple(sorted(orders.items())))
        self.misses += 1
        template = compile_template(
            adql, dialect=dialect, schema=schema, maxrec=maxrec, partition_orders=orders
        )
        new = _entry(schema, template, numbers)
        with self._lock:
            self._entries[key] = new
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return template.translation

    def lookup(
        self,
        adql: str,
        *,
        dialect: Dialect,
        schema: TapSchema,
        maxrec: int | None = None,
        partition_orders: dict[str, int] | None = None,
    ) -> Translation | None:
        """The translation of ``adql`` when its shape is cached (cheap), else None."""
        orders = partition_orders or {}
        text, numbers = lift(adql)
        key = (text, dialect, maxrec, tuple(sorted(orders.items())))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is not None and entry.schema is schema:
            try:
                translation = self._reuse(entry, [t for _, t in numbers], dialect)
                self.hits += 1
                return translation
            except AdqlError:
                pass  # compiled in full by compile(), for an error with its position
        return None

    @staticmethod
    def _reuse(entry: _Entry, values: list[str], dialect: Dialect) -> Translation:
        old = entry.translation

        def make_sql() -> str:
            raw = list(entry.raw)
            for i, piece in enumerate(entry.pieces):
                if piece is None:
                    continue
                node = _clone(piece.node)
                for lit, k in zip(_numeric_literals(node), piece.slots, strict=True):
                    lit.set("this", values[k])
                raw[i] = geometry_sql(node, piece.kind, dialect)
            return splice(entry.sql, entry.token, raw)

        if entry.cone_slots is not None and old.cone is not None:
            ra, dec, radius = (sign * float(values[k]) for k, sign in entry.cone_slots)
            if 0 < radius < 180:
                # The SQL is made only if the engine needs it: no geometry call of
                # this shape can fail on other numbers (see conescan.circle_of).
                cone = replace(old.cone, ra=ra, dec=dec, radius=radius)
                return Translation(make_sql, old.columns, old.limit, old.maxrec, cone)
        return Translation(make_sql(), old.columns, old.limit, old.maxrec)
