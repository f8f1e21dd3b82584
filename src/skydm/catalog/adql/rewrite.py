"""Resolve a parsed ADQL query against TAP_SCHEMA and rewrite it for the engine.

Every table must be in TAP_SCHEMA and every column in its table (or in a
subquery's result).  Identifiers are re-emitted from TAP_SCHEMA (quoted,
canonical case) and tables get generated aliases, so that nothing the user
typed reaches the engine except literals, which sqlglot re-quotes.  ADQL
functions are rewritten by :mod:`skydm.catalog.adql.functions`; geometry calls
become placeholders whose SQL :mod:`skydm.catalog.adql.translation` splices in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pyarrow as pa
from sqlglot import exp

from skydm.catalog.adql import functions, geometry
from skydm.catalog.adql.errors import error_at
from skydm.catalog.adql.functions import Dialect
from skydm.catalog.adql.translation import GeometryKind, OutputColumn, geometry_sql, splice
from skydm.catalog.tapschema import UPLOAD_SCHEMA, TableRef, TapSchema

# Meta key set on every column the rewriter made: the compiler checks afterwards
# that no column of the tree escaped resolution.
MADE = "skydm_resolved"


@dataclass
class _Source:
    name: str  # what qualifiers match: the alias, else the table name
    exact: bool  # the alias was quoted (matched case-sensitively)
    schema: str | None
    alias: str  # generated SQL alias
    columns: list[OutputColumn]
    ref: TableRef | None = None


@dataclass
class _Scope:
    sources: list[_Source] = field(default_factory=list)


def _same(typed: str, quoted: bool, name: str) -> bool:
    return typed == name if quoted else typed.lower() == name.lower()


def _ident(node: exp.Expr, key: str) -> tuple[str, bool] | None:
    value = node.args.get(key)
    if value is None:
        return None
    if not isinstance(value, exp.Identifier):
        raise error_at(node, "this kind of name is not allowed here")
    return str(value.this), bool(value.quoted)


class Rewriter:
    """Resolves and rewrites one query tree in place (one instance per query).

    Parameters
    ----------
    dialect : {"duckdb", "postgres"}
        The engine SQL to write.
    schema : TapSchema
        The queryable tables.
    partition_orders : dict
        Table name -> HEALPix order of its ``_npix`` column, for the tables stored
        with one (see :func:`skydm.catalog.adql.compiler.compile_query`).
    """

    def __init__(
        self, dialect: Dialect, schema: TapSchema, partition_orders: dict[str, int]
    ) -> None:
        self.dialect = dialect
        self.schema = schema
        self.partition_orders = partition_orders
        self.upload_data: dict[str, pa.Table] = {}
        self.n_alias = 0
        # Geometry SQL is spliced in as text after generation (re-parsing it would
        # cost milliseconds); the placeholder carries a random token no query can guess.
        self.token = f"__SKYDM_{uuid.uuid4().hex.upper()}_"
        self.raw: list[str] = []
        # For each raw piece, the geometry call it came from (None: fixed text).
        self.pieces: list[tuple[exp.Expr, GeometryKind] | None] = []

    def _raw(self, sql: str) -> exp.Expr:
        self.raw.append(sql)
        self.pieces.append(None)
        return exp.Anonymous(this=f"{self.token}{len(self.raw) - 1}", expressions=[])

    def _geometry_sql(self, node: exp.Expr, kind: GeometryKind) -> exp.Expr:
        """SQL of a geometry call, kept re-computable for the translation cache."""
        placeholder = self._raw(geometry_sql(node, kind, self.dialect))
        self.pieces[-1] = (node, kind)
        return placeholder

    def splice(self, sql: str) -> str:
        """Replace the geometry placeholders in generated SQL by their text."""
        return splice(sql, self.token, self.raw)

    # --- queries ---------------------------------------------------------------------

    def query(self, node: exp.Expr, outer: list[_Scope]) -> list[OutputColumn]:
        if isinstance(node, exp.Subquery):
            return self.query(node.this, outer)
        if isinstance(node, exp.Union | exp.Except | exp.Intersect):
            left = self.query(node.this, outer)
            right = self.query(node.expression, outer)
            if len(left) != len(right):
                raise error_at(
                    node,
                    f"the two sides of {type(node).__name__.upper()} have "
                    f"{len(left)} and {len(right)} columns; they must match",
                )
            self._order_by(node, _Scope(), outer, left)
            self._limits(node)
            return left
        if not isinstance(node, exp.Select):
            raise error_at(node, "only SELECT queries are allowed")
        return self.select(node, outer)

    def select(self, node: exp.Select, outer: list[_Scope]) -> list[OutputColumn]:
        scope = _Scope()
        from_ = node.args.get("from_")
        if from_ is not None:
            from_.set("this", self._source(from_.this, scope, outer))
        for join in node.args.get("joins") or []:
            join.set("this", self._source(join.this, scope, outer))
        scopes = [scope, *outer]
        for join in node.args.get("joins") or []:
            self._join_condition(join, scope, scopes)
        items = self._expand_stars(node.expressions, scope)
        out: list[OutputColumn] = []
        new_items: list[exp.Expr] = []
        taken: set[str] = set()
        for i, item in enumerate(items, start=1):
            name = _output_name(item, i)
            body = item.this if isinstance(item, exp.Alias) else item
            if geometry_value(body):
                raise error_at(
                    body,
                    "geometry values cannot be returned; select the "
                    "coordinates (e.g. ra, dec) instead",
                )
            body = self.expr(body, scopes)
            unique = name
            k = 2
            while unique.lower() in taken:
                unique, k = f"{name}_{k}", k + 1
            taken.add(unique.lower())
            meta = body.meta.get("skydm_def") if isinstance(body, exp.Column) else None
            out.append(OutputColumn(unique, meta))
            new_items.append(exp.Alias(this=body, alias=exp.Identifier(this=unique, quoted=True)))
        node.set("expressions", new_items)
        for key in ("where", "having"):
            clause = node.args.get(key)
            if clause is not None:
                clause.set("this", self.expr(clause.this, scopes))
        group = node.args.get("group")
        if group is not None:
            group.set(
                "expressions",
                [self._by_item(e, scopes, out, prefer_alias=False) for e in group.expressions],
            )
        self._order_by(node, scope, outer, out)
        self._limits(node)
        return out

    def _limits(self, node: exp.Expr) -> None:
        for key in ("limit", "offset"):
            clause = node.args.get(key)
            if clause is None:
                continue
            value = clause.args.get("expression")
            if not (
                isinstance(value, exp.Literal) and not value.is_string and str(value.this).isdigit()
            ):
                raise error_at(
                    clause, f"{'TOP' if key == 'limit' else 'OFFSET'} needs a non-negative integer"
                )

    def _order_by(
        self, node: exp.Expr, scope: _Scope, outer: list[_Scope], out: list[OutputColumn]
    ) -> None:
        order = node.args.get("order")
        if order is None:
            return
        scopes = [scope, *outer] if scope.sources else []
        for ordered in order.expressions:
            ordered.set("this", self._by_item(ordered.this, scopes, out, prefer_alias=True))

    def _by_item(
        self,
        item: exp.Expr,
        scopes: list[_Scope],
        out: list[OutputColumn],
        *,
        prefer_alias: bool,
    ) -> exp.Expr:
        if isinstance(item, exp.Literal) and not item.is_string:
            if not str(item.this).isdigit() or not 1 <= int(item.this) <= len(out):
                raise error_at(item, f"column position {item.this} is not between 1 and {len(out)}")
            return item
        if isinstance(item, exp.Column) and item.args.get("table") is None:
            typed, quoted = _ident(item, "this") or ("", False)
            alias = next((c.name for c in out if _same(typed, quoted, c.name)), None)
            in_source = scopes and self._find_column(item, scopes, required=False) is not None
            if alias is not None and (prefer_alias or not in_source):
                made = exp.Column(this=exp.Identifier(this=alias, quoted=True))
                made.meta[MADE] = True
                return made
        if not scopes:
            raise error_at(
                item,
                "ORDER BY of a UNION/EXCEPT/INTERSECT must name a result "
                f"column: {', '.join(c.name for c in out)}",
            )
        return self.expr(item, scopes)

    # --- FROM ------------------------------------------------------------------------

    def _new_alias(self) -> str:
        self.n_alias += 1
        return f"t{self.n_alias}"

    def _source(self, node: exp.Expr, scope: _Scope, outer: list[_Scope]) -> exp.Expr:
        alias_info = None
        alias_node = node.args.get("alias")
        if isinstance(alias_node, exp.TableAlias):
            if alias_node.args.get("columns"):
                raise error_at(alias_node, "column aliases on a table are not supported")
            alias_info = _ident(alias_node, "this")
        sql_alias = self._new_alias()
        if isinstance(node, exp.Table):
            if not isinstance(node.this, exp.Identifier):
                raise error_at(node, "only tables listed in TAP_SCHEMA can be queried")
            if node.args.get("catalog") is not None or node.args.get("joins"):
                raise error_at(node, "table names have at most two parts: schema.table")
            name, quoted = _ident(node, "this") or ("", False)
            schema_part = _ident(node, "db")
            ref = self.schema.resolve(
                name,
                schema_part[0] if schema_part else None,
                quoted=quoted,
                schema_quoted=bool(schema_part and schema_part[1]),
            )
            if ref is None:
                known = ", ".join(r.tap_name for r in self.schema)
                raise error_at(
                    node,
                    f"table {node.sql(dialect='tsql')} is not in TAP_SCHEMA; tables are: {known}",
                )
            match_name, exact = alias_info or (ref.table.name, False)
            scope.sources.append(
                _Source(
                    match_name,
                    exact,
                    None if alias_info else ref.schema,
                    sql_alias,
                    [OutputColumn(c.name, c) for c in ref.table.columns],
                    ref,
                )
            )
            db, table_name = ref.physical or (ref.schema, ref.table.name)
            return exp.Table(
                this=exp.Identifier(this=table_name, quoted=True),
                db=exp.Identifier(this=db, quoted=True) if db is not None else None,
                alias=exp.TableAlias(this=exp.Identifier(this=sql_alias)),
            )
        if isinstance(node, exp.Subquery):
            if alias_info is None:
                raise error_at(node, "a subquery in FROM needs a name: (SELECT ...) AS name")
            cols = self.query(node.this, outer)
            scope.sources.append(_Source(alias_info[0], alias_info[1], None, sql_alias, cols))
            node.set("alias", exp.TableAlias(this=exp.Identifier(this=sql_alias)))
            return node
        raise error_at(node, "only tables listed in TAP_SCHEMA and subqueries can be in FROM")

    def _join_condition(self, join: exp.Join, scope: _Scope, scopes: list[_Scope]) -> None:
        if join.args.get("method"):  # NATURAL: spell out the common columns
            left = {c.name.lower() for s in scope.sources[:-1] for c in s.columns}
            common = [c.name for c in scope.sources[-1].columns if c.name.lower() in left]
            join.set("method", None)
            join.set("using", [exp.Identifier(this=c) for c in common])
        using = join.args.get("using")
        if using:
            right = scope.sources[-1]
            conds: list[exp.Expr] = []
            for ident in using:
                col = exp.Column(this=ident.copy())
                r = self._resolve_in(col, [right])
                others = _Scope(scope.sources[:-1])
                lft = self._find_column(col, [others], required=True)
                assert r is not None and lft is not None
                conds.append(exp.EQ(this=lft, expression=r))
            join.set("using", None)
            cond: exp.Expr = conds[0]
            for c in conds[1:]:
                cond = exp.And(this=cond, expression=c)
            join.set("on", cond)
            return
        on = join.args.get("on")
        if on is not None:
            join.set("on", self.expr(on, scopes))

    def _expand_stars(self, items: list[exp.Expr], scope: _Scope) -> list[exp.Expr]:
        out: list[exp.Expr] = []
        for item in items:
            if isinstance(item, exp.Star):
                if not scope.sources:
                    raise error_at(item, "SELECT * needs a FROM clause")
                sources = scope.sources
            elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                typed = _ident(item, "table")
                assert typed is not None
                sources = [s for s in scope.sources if _same(typed[0], typed[1] or s.exact, s.name)]
                if not sources:
                    raise error_at(item, f"{typed[0]}.* names no table of the FROM clause")
            else:
                out.append(item)
                continue
            for s in sources:
                for c in s.columns:
                    col = exp.Column(
                        this=exp.Identifier(this=c.name, quoted=True),
                        table=exp.Identifier(this=s.name, quoted=True),
                    )
                    col.meta["skydm_source"] = s
                    out.append(col)
        return out

    # --- expressions -----------------------------------------------------------------

    def _resolve_in(self, col: exp.Column, sources: list[_Source]) -> exp.Column | None:
        typed, quoted = _ident(col, "this") or ("", False)
        table = _ident(col, "table")
        schema_part = _ident(col, "db")
        pinned = col.meta.get("skydm_source")
        found: list[tuple[_Source, OutputColumn]] = []
        for s in sources:
            if pinned is not None and s is not pinned:
                continue
            if table is not None and not _same(table[0], table[1] or s.exact, s.name):
                continue
            if schema_part is not None and (s.schema is None or not _same(*schema_part, s.schema)):
                continue
            found += [(s, c) for c in s.columns if _same(typed, quoted, c.name)]
        if not found:
            return None
        if len(found) > 1 and len({id(s) for s, _ in found}) > 1:
            tables = ", ".join(s.name for s, _ in found)
            raise error_at(col, f"column {typed} is ambiguous (it is in {tables}); qualify it")
        s, c = found[0]
        out = exp.Column(
            this=exp.Identifier(this=c.name, quoted=True), table=exp.Identifier(this=s.alias)
        )
        out.meta["skydm_def"] = c.column
        out.meta[MADE] = True
        if s.ref is not None and s.ref.schema == UPLOAD_SCHEMA:
            data = self.upload_data.get(s.ref.table.name)
            if data is not None:
                out.meta[geometry.UPLOAD_META] = (data, c.name)
        order = self.partition_orders.get(s.ref.tap_name) if s.ref is not None else None
        if s.ref is not None and c.column is not None and order is not None:
            t = s.ref.table
            if c.name == t.ra_col:
                out.meta[geometry.POS_META] = ("ra", s.alias, order)
            elif c.name == t.dec_col:
                out.meta[geometry.POS_META] = ("dec", s.alias, order)
        return out

    def _find_column(
        self, col: exp.Column, scopes: list[_Scope], *, required: bool
    ) -> exp.Column | None:
        for scope in scopes:
            found = self._resolve_in(col, scope.sources)
            if found is not None:
                return found
        if not required:
            return None
        typed = col.sql(dialect="tsql")
        names = sorted({c.name for sc in scopes[:1] for s in sc.sources for c in s.columns})
        hint = f"; columns here are: {', '.join(names)}" if names else ""
        raise error_at(col, f"column {typed} does not exist in the tables of the query{hint}")

    def expr(self, node: exp.Expr, scopes: list[_Scope]) -> exp.Expr:
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                raise error_at(node, "table.* is allowed only in the SELECT list")
            found = self._find_column(node, scopes, required=True)
            assert found is not None
            return found
        if isinstance(node, exp.Select | exp.Union | exp.Except | exp.Intersect):
            self.query(node, scopes)
            return node
        if isinstance(node, exp.EQ | exp.NEQ | exp.LT | exp.LTE | exp.GT | exp.GTE):
            special = self._geometry_comparison(node, scopes)
            if special is not None:
                return special
        name = functions.adql_name(node)
        self._children(node, scopes)
        if name is None:
            return node
        if name in ("CONTAINS", "INTERSECTS"):
            cond = self._geometry_sql(node, "predicate")
            return exp.Case(
                ifs=[exp.If(this=cond, true=exp.Literal.number(1))], default=exp.Literal.number(0)
            )
        if name in functions.GEOMETRY_FUNCTIONS:
            return self._geometry_value(node, name)
        return functions.rewrite_scalar(node, self.dialect)

    def _children(self, node: exp.Expr, scopes: list[_Scope]) -> None:
        for key, value in list(node.args.items()):
            if isinstance(value, exp.Expr) and not isinstance(value, exp.Identifier):
                node.set(key, self.expr(value, scopes))
            elif isinstance(value, list):
                node.set(
                    key,
                    [
                        self.expr(v, scopes)
                        if isinstance(v, exp.Expr) and not isinstance(v, exp.Identifier)
                        else v
                        for v in value
                    ],
                )

    def _geometry_value(self, node: exp.Expr, name: str) -> exp.Expr:
        if name == "DISTANCE":
            return self._geometry_sql(node, "distance")
        if name in ("COORD1", "COORD2"):
            s = geometry.shape(node.expressions[0]) if len(node.expressions) == 1 else None
            if not isinstance(s, geometry.Point):
                raise error_at(node, f"{name} takes one POINT")
            return exp.Paren(this=s.ra if name == "COORD1" else s.dec)
        if name == "COORDSYS":
            return exp.Literal.string("ICRS")
        if name in ("POINT", "CIRCLE", "BOX", "POLYGON"):
            return node  # consumed by the enclosing CONTAINS/INTERSECTS/DISTANCE
        raise error_at(node, f"{name} is not supported by this service")

    def _geometry_comparison(self, node: exp.Expr, scopes: list[_Scope]) -> exp.Expr | None:
        a, b = node.this, node.expression
        if functions.adql_name(b) in ("CONTAINS", "INTERSECTS"):
            a, b = b, a
        if functions.adql_name(a) in ("CONTAINS", "INTERSECTS") and isinstance(
            node, exp.EQ | exp.NEQ
        ):
            v = geometry.const(b)
            if v not in (0.0, 1.0):
                return None
            self._children(a, scopes)
            cond = self._geometry_sql(a, "predicate")
            truth = (v == 1.0) == isinstance(node, exp.EQ)
            return cond if truth else exp.Not(this=cond)
        return None


def geometry_value(node: exp.Expr) -> bool:
    """Whether ``node`` is a geometry (which cannot be a result column)."""
    return functions.adql_name(node) in ("POINT", "CIRCLE", "BOX", "POLYGON", "CENTROID", "REGION")


def _output_name(item: exp.Expr, index: int) -> str:
    if isinstance(item, exp.Alias):
        return str(item.alias)
    if isinstance(item, exp.Column):
        return str(item.this.this) if isinstance(item.this, exp.Identifier) else f"col{index}"
    name = functions.adql_name(item)
    return name.lower() if name else f"col{index}"
