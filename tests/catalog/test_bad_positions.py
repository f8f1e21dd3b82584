"""Positions off the sky are refused at load; a negative CIRCLE radius is an error (item 20)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skydm.cli.main import main
from skydm.repo import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    Repository.open(root).close()
    return root


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ("10,20\n400,30\n", "column 'ra' row 2 is 400, outside 0 to 360 degrees"),
        ("10,95\n", "column 'dec' row 1 is 95, outside -90 to 90 degrees"),
        ("-1,0\n", "column 'ra' row 1 is -1, outside 0 to 360 degrees"),
    ],
)
def test_load_refuses_positions_off_the_sky(
    rows: str, words: str, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "stars.csv"
    src.write_text("ra,dec\n" + rows)
    assert main(["catalog", "load", "-q", "--repo", str(repo), str(src)]) == 1
    err = capsys.readouterr().err
    assert f"{src}: {words}" in err
    assert "convert them, or name the right column with --" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["catalog", "list", "--repo", str(repo)]) == 0
    assert "no tables" in capsys.readouterr().out  # nothing half-written


@pytest.mark.parametrize(
    ("circle", "words"),
    [
        ("CIRCLE(10, 20, -1)", "CIRCLE radius must be between 0 and 180 degrees, not -1"),
        ("CIRCLE(POINT(10, 20), 200)", "CIRCLE radius must be between 0 and 180 degrees, not 200"),
        ("CIRCLE(10, 95, 1)", "CIRCLE centre declination must be between -90 and 90 degrees"),
    ],
)
def test_bad_circle_is_an_error_not_zero_rows(
    circle: str, words: str, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "stars.csv"
    src.write_text("id,ra,dec\n1,10,20\n2,10.5,20\n")
    assert main(["catalog", "load", "-q", "--repo", str(repo), str(src)]) == 0
    capsys.readouterr()
    good = "SELECT id FROM stars WHERE 1 = CONTAINS(POINT(ra, dec), CIRCLE(10, 20, 1))"
    assert main(["query", "-q", "--repo", str(repo), "--format", "csv", good]) == 0
    assert sorted(capsys.readouterr().out.split()) == ["1", "2", "id"]
    bad = f"SELECT id FROM stars WHERE 1 = CONTAINS(POINT(ra, dec), {circle})"
    assert main(["query", "-q", "--repo", str(repo), bad]) == 1
    assert words in capsys.readouterr().err


def test_load_over_an_existing_table_names_the_options(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "stars.csv"
    src.write_text("ra,dec\n10,20\n")
    assert main(["catalog", "load", "-q", "--repo", str(repo), str(src)]) == 0
    assert main(["catalog", "load", "-q", "--repo", str(repo), str(src)]) == 1
    err = capsys.readouterr().err
    assert f"table stars already exists in {repo}" in err
    assert "pass --replace to replace it or --append" in err and "mode=" not in err
