"""The ``--where`` language: parsing, validation against the dimensions, evaluation."""

from __future__ import annotations

import itertools

import pytest

from skydm.errors import UserError
from skydm.repo.dataid import DataId
from skydm.repo.where import MAX_DEPTH, WhereError, parse_where

IDS = [
    DataId("skysim", detector, visit, band)
    for detector, visit, band in itertools.product(range(4), range(1, 21), ("g", "r"))
] + [DataId("skysim", 0, 0, band, skycell="3,4") for band in ("g", "r")]


def _pick(text: str) -> set[DataId]:
    expr = parse_where(text)
    return {d for d in IDS if expr.matches(d)}


@pytest.mark.parametrize(
    ("text", "predicate"),
    [
        ("", lambda d: True),
        ("band = 'r' AND visit >= 10", lambda d: d.band == "r" and d.visit >= 10),
        ("band='r' and visit>=10", lambda d: d.band == "r" and d.visit >= 10),
        ("10 <= visit", lambda d: d.visit >= 10),
        ("detector IN (0, 2) OR NOT band = 'g'", lambda d: d.detector in (0, 2) or d.band != "g"),
        ("detector NOT IN (0, 2)", lambda d: d.detector not in (0, 2)),
        ("visit BETWEEN 5 AND 7", lambda d: 5 <= d.visit <= 7),
        ("skycell IS NOT NULL", lambda d: d.skycell is not None),
        ("skycell IS NULL AND visit < 3", lambda d: d.skycell is None and d.visit < 3),
        ("skycell = '3,4'", lambda d: d.skycell == "3,4"),
        ("skycell != '3,4'", lambda d: d.skycell is not None and d.skycell != "3,4"),
        (
            "(band = 'g' OR band = 'r') AND NOT (detector = 1 OR visit <> 4)",
            lambda d: d.detector != 1 and d.visit == 4,
        ),
        ("instrument = 'other'", lambda d: False),
    ],
)
def test_expressions_select_what_python_would(text: str, predicate: object) -> None:
    assert callable(predicate)
    assert _pick(text) == {d for d in IDS if predicate(d)}
    picked = parse_where(text).select(IDS)  # vectorised, as graphs use it
    assert {d for d, keep in zip(IDS, picked, strict=True) if keep} == _pick(text)


def test_dimensions_used_are_reported() -> None:
    assert parse_where("band = 'r' AND (visit > 2 OR detector = 1)").dimensions == {
        "band",
        "visit",
        "detector",
    }


def test_and_binds_tighter_than_or() -> None:
    assert _pick("detector = 0 OR detector = 1 AND band = 'g'") == {
        d for d in IDS if d.detector == 0 or (d.detector == 1 and d.band == "g")
    }


@pytest.mark.parametrize(
    ("text", "token", "words"),
    [
        ("filter = 'r'", "filter", "unknown dimension"),
        ("visit = 'ten'", "'ten'", "integer"),
        ("band = 2", "2", "quote it"),
        ("band = 'r'; DROP TABLE dataset", ";", "unexpected character"),
        ("visit = 1 -- comment", "-", "unexpected character"),
        ("band = 'r' OR 1=1 --", "1", "expected a dimension"),
        ("visit >=", "", "expected a value"),
        ("band = 'r", "'r", "unterminated string"),
        ("visit 10", "10", "expected an operator"),
        ("(band = 'r'", "", "expected ')'"),
        ("band = 'r')", ")", "expected AND, OR or the end"),
        ("visit IN ()", ")", "expected a value"),
        ("visit BETWEEN 1 OR 2", "OR", "AND in BETWEEN"),
        ("band = 'r' AND", "", "expected a dimension"),
        ("band IS 'r'", "'r'", "NULL after IS"),
    ],
)
def test_bad_expressions_name_the_token(text: str, token: str, words: str) -> None:
    with pytest.raises(WhereError) as info:
        parse_where(text)
    err = info.value
    assert isinstance(err, UserError)
    assert words in str(err)
    assert text[err.position :].startswith(token)
    # The caret line points at the same column as the position.
    lines = str(err).splitlines()
    assert lines[2].index("^") - 2 == min(err.position, len(text))


def test_hostile_sizes_are_refused_cleanly() -> None:
    with pytest.raises(WhereError, match="nested more than"):
        parse_where("(" * (MAX_DEPTH + 5) + "visit = 1" + ")" * (MAX_DEPTH + 5))
    with pytest.raises(WhereError, match="longer than"):
        parse_where("visit = 1 OR " * 2000 + "visit = 2")
    with pytest.raises(WhereError, match="NUL"):
        parse_where("band = 'r\x00'")


def test_quotes_inside_strings() -> None:
    expr = parse_where("band = 'it''s'")
    assert not expr.matches(DataId("skysim", 0, 1, "r"))
    assert expr.matches_values({"band": "it's"})
