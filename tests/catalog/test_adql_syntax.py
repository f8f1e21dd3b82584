"""ADQL syntax errors say what was expected where, caret under the token (issue 14, item 17)."""

from __future__ import annotations

import pytest

from skydm.catalog.adql.errors import AdqlError
from skydm.catalog.adql.parse import parse

CASES = [
    # query, (line, column), expected words, the token the caret is under
    (
        "SELECT * FROM DiaObject WHERE",
        (1, 30),
        "expected a condition after WHERE, found the end of the query",
        None,
    ),
    ("SELEC TOP 1 * FROM DiaObject", (1, 1), "found 'SELEC' (did you mean SELECT?)", "SELEC"),
    ("SELECT * FORM DiaObject", (1, 10), "unexpected 'FORM' (did you mean FROM?)", "FORM"),
    ("SELECT a FROM t WHER a = 1", (1, 17), "(did you mean WHERE?)", "WHER"),
    ("SELECT TOP x * FROM t", (1, 12), "expected a row count (a whole number) after TOP", "x"),
    ("SELECT a FROM t WHERE a =", (1, 26), "expected a value after '='", None),
    ("SELECT a FROM t ORDER BY", (1, 25), "expected a column after ORDER BY", None),
    ("SELECT a FROM t\n  WHERE (a = 1", (2, 15), "expected ')' to close the '(' at column 9", None),
    ("SELECT a FROM t WHERE a = 'x", (1, 27), "a quote or comment is not closed", "'"),
    ("SELECT a FROM t WHERE a BETWEEN 1", (1, 34), "expected BETWEEN low AND high", None),
]


@pytest.mark.parametrize(("adql", "position", "words", "token"), CASES)
def test_syntax_error_says_what_was_expected_where(
    adql: str, position: tuple[int, int], words: str, token: str | None
) -> None:
    with pytest.raises(AdqlError) as info:
        parse(adql)
    err = info.value
    text = str(err)
    assert words in text
    assert "sqlglot" not in text and "Required keyword" not in text and "<class" not in text
    assert err.position == position
    assert err.snippet == token
    # The caret line sits under the offending token (or just after the end).
    lines = text.splitlines()
    line_text, caret = lines[-2], lines[-1]
    assert line_text == "  " + adql.splitlines()[position[0] - 1]
    col = caret.index("^") - 2 + 1
    assert col == position[1]
    assert caret.count("^") == (len(token) if token else 1)


def test_cli_prints_the_caret_and_exits_1(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from skydm.cli.main import main
    from skydm.repo import Repository

    Repository.open(tmp_path / "repo").close()
    status = main(["query", "--repo", str(tmp_path / "repo"), "SELEC TOP 1 * FROM DiaObject"])
    err = capsys.readouterr().err
    assert status == 1
    assert "skydm query: error: ADQL error (line 1, column 1) at 'SELEC'" in err
    assert err.splitlines()[-1] == "  ^^^^^"
    assert "Traceback" not in err
