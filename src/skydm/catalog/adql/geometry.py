"""ADQL geometry (POINT, CIRCLE, BOX, POLYGON, CONTAINS, INTERSECTS, DISTANCE) as engine SQL.

A point-in-shape test whose point is a table's own position columns becomes
index-using SQL: on DuckDB, ``_healpix`` ranges covering the shape (plus the
``_npix`` partitions, which prunes whole files) AND an exact test; on
PostgreSQL, q3c's ``q3c_radial_query`` / ``q3c_join`` / ``q3c_poly_query``.

The exact tests are the haversine formula for circles (the form q3c uses) and,
for polygons, a crossing-number test in the gnomonic projection centred on the
polygon, where great-circle edges are straight lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlglot import exp

from skydm.catalog import healpix
from skydm.catalog.adql.errors import AdqlError, error_at
from skydm.catalog.adql.functions import Dialect, adql_name

#: ``meta`` key set by the compiler on a resolved table position column:
#: ("ra" | "dec", SQL alias of its table, partition order).
POS_META = "skydm_pos"
#: ``meta`` key set on a column of an uploaded table: (its Arrow table, column name).
UPLOAD_META = "skydm_upload"
#: Largest uploaded list whose cones become catalog-side index ranges, and most ranges.
MAX_XMATCH_ROWS = 20_000
MAX_XMATCH_RANGES = 2_000
_COORDSYS = {"", "ICRS", "ICRS GEOCENTER", "ICRS BARYCENTER", "ICRS TOPOCENTER", "UNKNOWNFRAME"}


@dataclass
class Point:
    ra: exp.Expr
    dec: exp.Expr


@dataclass
class Circle:
    centre: Point
    radius: exp.Expr


@dataclass
class Polygon:
    vertices: list[tuple[float, float]]


Shape = Point | Circle | Polygon


def const(node: exp.Expr) -> float | None:
    """The value of a constant numeric expression, or None if it is not constant."""
    if isinstance(node, exp.Literal) and not node.is_string:
        return float(node.this)
    if isinstance(node, exp.Paren):
        return const(node.this)
    if isinstance(node, exp.Neg):
        v = const(node.this)
        return None if v is None else -v
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        a, b = const(node.this), const(node.expression)
        if a is None or b is None:
            return None
        if isinstance(node, exp.Add):
            return a + b
        if isinstance(node, exp.Sub):
            return a - b
        if isinstance(node, exp.Mul):
            return a * b
        return a / b if b != 0 else None
    return None


def _sql(node: exp.Expr, dialect: Dialect) -> str:
    if not isinstance(node, exp.Column):
        return f"({node.sql(dialect=dialect)})"
    # A column's SQL never changes; the translation cache re-uses the node (its
    # meta is copied), and sqlglot's generator copies the node on every call.
    key = f"skydm_sql_{dialect}"
    text = node.meta.get(key)
    if text is None:
        text = node.meta[key] = f"({node.sql(dialect=dialect)})"
    return str(text)


def _num(v: float) -> str:
    return repr(float(v))


def _args_without_coordsys(node: exp.Expr) -> list[exp.Expr]:
    args = list(node.expressions)
    if args and isinstance(args[0], exp.Literal) and args[0].is_string:
        if str(args[0].this).strip().upper() not in _COORDSYS:
            raise error_at(
                args[0],
                f"coordinate system {args[0].this!r} is not supported; "
                "positions are ICRS (give 'ICRS' or leave it out)",
            )
        args = args[1:]
    return args


def shape(node: exp.Expr) -> Shape:
    """The shape a POINT/CIRCLE/BOX/POLYGON call (arguments already rewritten) describes."""
    name = adql_name(node)
    if not isinstance(node, exp.Anonymous) or name not in ("POINT", "CIRCLE", "BOX", "POLYGON"):
        raise error_at(node, "expected a geometry: POINT, CIRCLE, BOX or POLYGON")
    args = _args_without_coordsys(node)
    points: list[Point] = []
    numbers: list[exp.Expr] = []
    for a in args:
        if adql_name(a) == "POINT":
            p = shape(a)
            assert isinstance(p, Point)
            points.append(p)
        else:
            numbers.append(a)
    if name == "POINT":
        if points or len(numbers) != 2:
            raise error_at(node, "POINT takes two numbers: POINT(ra, dec)")
        return Point(numbers[0], numbers[1])
    if name == "CIRCLE":
        if points and len(points) == 1 and len(numbers) == 1:
            return _circle(node, points[0], numbers[0])
        if not points and len(numbers) == 3:
            return _circle(node, Point(numbers[0], numbers[1]), numbers[2])
        raise error_at(node, "CIRCLE takes CIRCLE(ra, dec, radius) or CIRCLE(POINT(...), radius)")
    values = [const(n) for n in numbers]
    for p in points:
        values += [const(p.ra), const(p.dec)]
    if any(v is None for v in values):
        raise error_at(node, f"{name} needs constant coordinates (numbers in degrees)")
    nums = [float(v) for v in values if v is not None]
    if name == "BOX":
        if len(nums) != 4:
            raise error_at(node, "BOX takes BOX(ra, dec, width, height)")
        return Polygon(_box_vertices(*nums))
    if len(nums) < 6 or len(nums) % 2:
        raise error_at(
            node,
            "POLYGON takes at least three vertices: POLYGON(ra1, dec1, ra2, dec2, ra3, dec3, ...)",
        )
    return Polygon([(nums[i], nums[i + 1]) for i in range(0, len(nums), 2)])


def _circle(node: exp.Expr, centre: Point, radius: exp.Expr) -> Circle:
    """A CIRCLE, its constant radius and declination checked (a bad one would match nothing)."""
    r, dec = const(radius), const(centre.dec)
    if r is not None and not 0 <= float(r) <= 180:
        raise error_at(node, f"CIRCLE radius must be between 0 and 180 degrees, not {float(r):g}")
    if dec is not None and not -90 <= float(dec) <= 90:
        raise error_at(
            node,
            f"CIRCLE centre declination must be between -90 and 90 degrees, not {float(dec):g}",
        )
    return Circle(centre, radius)


def _box_vertices(ra: float, dec: float, width: float, height: float) -> list[tuple[float, float]]:
    # The sides are great circles whose midpoints lie width/2 and height/2 from the
    # centre along the east and north directions: the corners of a rectangle in
    # the gnomonic projection at the centre.
    if not (0 < width < 180 and 0 < height < 180):
        raise AdqlError(
            f"BOX width and height must be between 0 and 180 degrees, not {width} and {height}"
        )
    c, e, n = _frame(ra, dec)
    tx, ty = math.tan(math.radians(width / 2)), math.tan(math.radians(height / 2))
    out = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        out.append(healpix.vector_to_lonlat(c + sx * tx * e + sy * ty * n))
    return out


def _frame(ra: float, dec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, d = math.radians(ra), math.radians(dec)
    c = healpix.unit_vector(ra, dec)
    e = np.array([-math.sin(a), math.cos(a), 0.0])
    n = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    return c, e, n


def _pos_source(p: Point) -> tuple[str, int] | None:
    """(table alias, partition order) when the point is one table's ra, dec columns."""
    ra, dec = p.ra.meta.get(POS_META), p.dec.meta.get(POS_META)
    if ra and dec and ra[0] == "ra" and dec[0] == "dec" and ra[1] == dec[1]:
        return str(ra[1]), int(ra[2])
    return None


def _range_sql(p: Point, ranges: list[tuple[int, int]]) -> str:
    src = _pos_source(p)
    if src is None or not ranges:
        return ""
    alias, order = src
    parts = healpix.ranges_partitions(ranges, order)
    terms = " OR ".join(f'{alias}."_healpix" BETWEEN {lo} AND {hi}' for lo, hi in ranges)
    return f'{alias}."_npix" IN ({", ".join(str(x) for x in parts)}) AND ({terms}) AND '


def point_in_circle(p: Point, c: Circle, dialect: Dialect) -> str:
    """SQL condition: point p lies in circle c."""
    ra0, dec0, r = const(c.centre.ra), const(c.centre.dec), const(c.radius)
    pra, pdec = _sql(p.ra, dialect), _sql(p.dec, dialect)
    if dialect == "postgres":
        if ra0 is not None and dec0 is not None and r is not None:
            return f"q3c_radial_query({pra}, {pdec}, {_num(ra0)}, {_num(dec0)}, {_num(r)})"
        cra, cdec, cr = (_sql(x, dialect) for x in (c.centre.ra, c.centre.dec, c.radius))
        return f"q3c_join({cra}, {cdec}, {pra}, {pdec}, {cr})"
    if ra0 is not None and dec0 is not None and r is not None:
        if r >= 180:
            return f"({pra} IS NOT NULL AND {pdec} IS NOT NULL)"
        limit = math.sin(math.radians(r) / 2) ** 2
        cos0 = math.cos(math.radians(dec0))
        test = (
            f"POWER(SIN(RADIANS({pdec} - {_num(dec0)}) / 2), 2) + COS(RADIANS({pdec})) * "
            f"{_num(cos0)} * POWER(SIN(RADIANS({pra} - {_num(ra0)}) / 2), 2) <= {_num(limit)}"
        )
        ranges = healpix.cone_ranges(ra0, dec0, r) if _pos_source(p) else []
        return f"({_range_sql(p, ranges)}{test})"
    cra, cdec, cr = (_sql(x, dialect) for x in (c.centre.ra, c.centre.dec, c.radius))
    test = (
        f"POWER(SIN(RADIANS({pdec} - {cdec}) / 2), 2) + COS(RADIANS({pdec})) * "
        f"COS(RADIANS({cdec})) * POWER(SIN(RADIANS({pra} - {cra}) / 2), 2) "
        f"<= POWER(SIN(RADIANS(LEAST({cr}, 180.0)) / 2), 2)"
    )
    ranges = _uploaded_cones_ranges(c) if _pos_source(p) else []
    return f"({_range_sql(p, ranges)}{test})"


def _uploaded_cones_ranges(c: Circle) -> list[tuple[int, int]]:
    """``_healpix`` ranges covering every circle of an uploaded table (cross-match).

    When the circle's centre (and radius, unless constant) are columns of one
    uploaded table, the cones are known before the query runs: the union of
    their coverages is a constant filter on the catalog side, which the
    Parquet scan answers from row-group statistics, so that a cross-match of
    a short list reads only the catalog near its positions.  Long lists
    (whose coverage would need too many ranges) get none.
    """
    ra, dec = c.centre.ra.meta.get(UPLOAD_META), c.centre.dec.meta.get(UPLOAD_META)
    radius = const(c.radius)
    r_meta = c.radius.meta.get(UPLOAD_META) if radius is None else None
    if ra is None or dec is None or ra[0] is not dec[0] or (radius is None and r_meta is None):
        return []
    data = ra[0]
    if data.num_rows == 0 or data.num_rows > MAX_XMATCH_ROWS:
        return []
    ras = np.asarray(data.column(ra[1]).to_numpy(zero_copy_only=False), dtype=float)
    decs = np.asarray(data.column(dec[1]).to_numpy(zero_copy_only=False), dtype=float)
    if r_meta is not None:
        if r_meta[0] is not data:
            return []
        radii = np.asarray(data.column(r_meta[1]).to_numpy(zero_copy_only=False), dtype=float)
    else:
        radii = np.full(len(ras), float(radius))  # type: ignore[arg-type]
    ok = np.isfinite(ras) & np.isfinite(decs) & np.isfinite(radii) & (radii >= 0)
    if not ok.any():
        return []
    return healpix.cones_ranges(ras[ok], decs[ok], radii[ok], max_ranges=MAX_XMATCH_RANGES)


def point_in_polygon(p: Point, poly: Polygon, dialect: Dialect) -> str:
    """SQL condition: point p lies in the polygon (great-circle edges)."""
    pra, pdec = _sql(p.ra, dialect), _sql(p.dec, dialect)
    if dialect == "postgres":
        flat = ", ".join(_num(v) for vertex in poly.vertices for v in vertex)
        return f"q3c_poly_query({pra}, {pdec}, ARRAY[{flat}])"
    ra0, dec0, radius = healpix.bounding_cone(poly.vertices)
    if radius >= 90:
        raise AdqlError(
            "polygons must fit within a hemisphere (all vertices within 90 degrees "
            "of their mean position)"
        )
    c, e, n = _frame(ra0, dec0)
    xs, ys = [], []
    for ra, dec in poly.vertices:
        v = healpix.unit_vector(ra, dec)
        xs.append(float(v @ e) / float(v @ c))
        ys.append(float(v @ n) / float(v @ c))
    cd, sd = f"COS(RADIANS({pdec}))", f"SIN(RADIANS({pdec}))"
    ca, sa = f"COS(RADIANS({pra}))", f"SIN(RADIANS({pra}))"

    def dot(vec: Any) -> str:
        return (
            f"({cd} * {ca} * {_num(vec[0])} + {cd} * {sa} * {_num(vec[1])} + {sd} * {_num(vec[2])})"
        )

    z, x, y = dot(c), f"({dot(e)} / {dot(c)})", f"({dot(n)} / {dot(c)})"
    crossings = []
    k = len(xs)
    for i in range(k):
        j = (i + 1) % k
        if ys[i] == ys[j]:
            continue  # a horizontal edge is never crossed by a horizontal ray
        slope = (xs[j] - xs[i]) / (ys[j] - ys[i])
        crossings.append(
            f"CASE WHEN (({y} > {_num(ys[i])}) <> ({y} > {_num(ys[j])})) AND "
            f"({x} < {_num(slope)} * ({y} - {_num(ys[i])}) + {_num(xs[i])}) THEN 1 ELSE 0 END"
        )
    inside = f"(({' + '.join(crossings) or '0'}) % 2 = 1)"
    ranges = healpix.cone_ranges(ra0, dec0, radius) if _pos_source(p) else []
    return f"({_range_sql(p, ranges)}{z} > 0 AND {inside})"


def distance(p: Point, q: Point, dialect: Dialect) -> str:
    """SQL for the angular distance in degrees between two points."""
    r1, d1, r2, d2 = (_sql(x, dialect) for x in (p.ra, p.dec, q.ra, q.dec))
    if dialect == "postgres":
        return f"q3c_dist({r1}, {d1}, {r2}, {d2})"
    hav = (
        f"POWER(SIN(RADIANS({d2} - {d1}) / 2), 2) + COS(RADIANS({d1})) * COS(RADIANS({d2}))"
        f" * POWER(SIN(RADIANS({r2} - {r1}) / 2), 2)"
    )
    return f"DEGREES(2 * ASIN(LEAST(1.0, SQRT({hav}))))"


def predicate(node: exp.Expr, dialect: Dialect) -> str:
    """SQL condition for CONTAINS(a, b) or INTERSECTS(a, b) (arguments already rewritten)."""
    name = adql_name(node)
    if isinstance(node, exp.Contains):
        a, b = node.this, node.expression
    else:
        if len(node.expressions) != 2:
            raise error_at(node, f"{name} takes two geometries")
        a, b = node.expressions
    sa, sb = shape(a), shape(b)
    if name == "INTERSECTS" and isinstance(sb, Point):
        sa, sb = sb, sa
    if isinstance(sa, Point):
        if isinstance(sb, Circle):
            return point_in_circle(sa, sb, dialect)
        if isinstance(sb, Polygon):
            return point_in_polygon(sa, sb, dialect)
        raise error_at(
            node, f"{name}(POINT, POINT) is not meaningful; compare DISTANCE with a radius instead"
        )
    if isinstance(sa, Circle) and isinstance(sb, Circle):
        d = distance(sa.centre, sb.centre, dialect)
        ra, rb = _sql(sa.radius, dialect), _sql(sb.radius, dialect)
        op = f"<= {rb} - {ra}" if name == "CONTAINS" else f"<= {ra} + {rb}"
        return f"({d} {op})"
    raise error_at(
        node, f"{name} is supported for a POINT in a CIRCLE, BOX or POLYGON and between two CIRCLEs"
    )
