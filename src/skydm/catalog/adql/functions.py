"""The ADQL functions this service offers, and their spelling in each engine's SQL.

Only functions listed here can appear in a query: anything else (``pg_sleep``,
``read_csv``, ``current_setting``...) is refused before any SQL is written.
"""

from __future__ import annotations

from typing import Literal

from sqlglot import exp

from skydm.catalog.adql.errors import error_at

Dialect = Literal["duckdb", "postgres"]

#: Schema of the helper SQL functions created on PostgreSQL (see engines.postgres).
PG_HELPER_SCHEMA = "skydm_fn"

GEOMETRY_FUNCTIONS = frozenset(
    {
        "POINT",
        "CIRCLE",
        "BOX",
        "POLYGON",
        "CONTAINS",
        "INTERSECTS",
        "DISTANCE",
        "COORD1",
        "COORD2",
        "COORDSYS",
        "AREA",
        "CENTROID",
        "REGION",
    }
)

# sqlglot's class for each function -> the ADQL name it stands for.
_CLASS_NAMES: dict[type[exp.Expr], str] = {
    exp.Abs: "ABS",
    exp.Ceil: "CEILING",
    exp.Degrees: "DEGREES",
    exp.Exp: "EXP",
    exp.Floor: "FLOOR",
    exp.Ln: "LOG",
    exp.Log: "LOG10",
    exp.Mod: "MOD",
    exp.Pi: "PI",
    exp.Pow: "POWER",
    exp.Radians: "RADIANS",
    exp.Sqrt: "SQRT",
    exp.Rand: "RAND",
    exp.Round: "ROUND",
    exp.Trunc: "TRUNCATE",
    exp.Sin: "SIN",
    exp.Cos: "COS",
    exp.Tan: "TAN",
    exp.Cot: "COT",
    exp.Asin: "ASIN",
    exp.Acos: "ACOS",
    exp.Atan: "ATAN",
    exp.Atan2: "ATAN2",
    exp.Count: "COUNT",
    exp.Sum: "SUM",
    exp.Avg: "AVG",
    exp.Min: "MIN",
    exp.Max: "MAX",
    exp.Lower: "LOWER",
    exp.Upper: "UPPER",
    exp.Coalesce: "COALESCE",
    exp.Cast: "CAST",
    exp.Contains: "CONTAINS",
    exp.Case: "CASE",
    exp.If: "CASE",
}

# ADQL name -> (min args, max args, DuckDB name, PostgreSQL name); None keeps sqlglot's node.
_SCALAR: dict[str, tuple[int, int, str | None, str | None]] = {
    "ABS": (1, 1, "abs", "abs"),
    "CEILING": (1, 1, "ceil", "ceil"),
    "DEGREES": (1, 1, "degrees", "degrees"),
    "EXP": (1, 1, "exp", "exp"),
    "FLOOR": (1, 1, "floor", "floor"),
    "LOG": (1, 1, "ln", "ln"),
    "LOG10": (1, 1, "log10", "log10"),
    "MOD": (2, 2, None, f"{PG_HELPER_SCHEMA}.mod"),
    "PI": (0, 0, "pi", "pi"),
    "POWER": (2, 2, "power", "power"),
    "RADIANS": (1, 1, "radians", "radians"),
    "SQRT": (1, 1, "sqrt", "sqrt"),
    "RAND": (0, 0, "random", "random"),
    "ROUND": (1, 2, "round", f"{PG_HELPER_SCHEMA}.round"),
    "TRUNCATE": (1, 2, "trunc", f"{PG_HELPER_SCHEMA}.truncate"),
    "SIN": (1, 1, "sin", "sin"),
    "COS": (1, 1, "cos", "cos"),
    "TAN": (1, 1, "tan", "tan"),
    "COT": (1, 1, "cot", "cot"),
    "ASIN": (1, 1, "asin", "asin"),
    "ACOS": (1, 1, "acos", "acos"),
    "ATAN": (1, 1, "atan", "atan"),
    "ATAN2": (2, 2, "atan2", "atan2"),
}
_KEPT = frozenset(
    {"COUNT", "SUM", "AVG", "MIN", "MAX", "LOWER", "UPPER", "COALESCE", "CAST", "CASE"}
)
ALLOWED = frozenset(_SCALAR) | _KEPT | GEOMETRY_FUNCTIONS

_CAST_TYPES = {
    exp.DataType.Type.SMALLINT,
    exp.DataType.Type.INT,
    exp.DataType.Type.BIGINT,
    exp.DataType.Type.FLOAT,
    exp.DataType.Type.DOUBLE,
    exp.DataType.Type.CHAR,
    exp.DataType.Type.VARCHAR,
    exp.DataType.Type.NCHAR,
    exp.DataType.Type.NVARCHAR,
    exp.DataType.Type.TEXT,
    exp.DataType.Type.TIMESTAMP,
}


def adql_name(node: exp.Expr) -> str | None:
    """The ADQL function name of a function node, or None if it is not a function."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()
    mapped = _CLASS_NAMES.get(type(node))
    if mapped is not None:
        return mapped
    if isinstance(node, exp.Func) and not isinstance(node, exp.Connector | exp.Exists):
        return str(node.sql_name()).upper()
    return None


def check_allowed(node: exp.Expr) -> None:
    """Refuse a function outside the allow-list (raises AdqlError pointing at it)."""
    name = adql_name(node)
    if name is None or name in ALLOWED:
        if isinstance(node, exp.Log) and not _is_base10(node):
            raise error_at(
                node, "LOG takes one argument (natural logarithm); use LOG10 for base 10"
            )
        return
    raise error_at(
        node,
        f"function {name} is not available; ADQL functions offered are "
        f"{', '.join(sorted(ALLOWED - {'CASE'}))}",
    )


def _is_base10(node: exp.Log) -> bool:
    base = node.this
    return isinstance(base, exp.Literal) and not base.is_string and base.this == "10"


def arguments(node: exp.Expr) -> list[exp.Expr]:
    """The arguments of a function node, in call order."""
    if isinstance(node, exp.Log):
        return [node.expression]
    if isinstance(node, exp.Anonymous):
        return list(node.expressions)
    args: list[exp.Expr] = []
    for key in ("this", "expression", "decimals"):
        value = node.args.get(key)
        if isinstance(value, exp.Expr):
            args.append(value)
    args += [e for e in node.expressions if isinstance(e, exp.Expr)]
    return args


def rewrite_scalar(node: exp.Expr, dialect: Dialect) -> exp.Expr:
    """The engine's SQL for an ADQL scalar function whose arguments are already rewritten."""
    name = adql_name(node)
    assert name is not None
    if name in _KEPT:
        if isinstance(node, exp.Cast):
            return _rewrite_cast(node)
        return node
    lo, hi, duck, pg = _SCALAR[name]
    args = arguments(node)
    if not lo <= len(args) <= hi:
        want = f"{lo}" if lo == hi else f"{lo} or {hi}"
        raise error_at(node, f"{name} takes {want} argument(s), not {len(args)}")
    if name == "MOD" and dialect == "duckdb":
        return exp.Paren(
            this=exp.Mod(this=exp.Paren(this=args[0]), expression=exp.Paren(this=args[1]))
        )
    fname = duck if dialect == "duckdb" else pg
    assert fname is not None
    return exp.Anonymous(this=fname, expressions=args)


def _rewrite_cast(node: exp.Cast) -> exp.Expr:
    to = node.args.get("to")
    if not isinstance(to, exp.DataType) or to.this not in _CAST_TYPES:
        raise error_at(
            node,
            "CAST can convert only to SMALLINT, INTEGER, BIGINT, REAL, "
            "DOUBLE PRECISION, CHAR(n), VARCHAR(n) or TIMESTAMP",
        )
    if to.this in (
        exp.DataType.Type.CHAR,
        exp.DataType.Type.NCHAR,
        exp.DataType.Type.NVARCHAR,
        exp.DataType.Type.TEXT,
        exp.DataType.Type.VARCHAR,
    ):
        # Both engines return the same text for VARCHAR; fixed-width padding is dropped.
        node.set("to", exp.DataType.build("VARCHAR"))
    return node
