"""``skydm alerts produce`` on a user's difference image (issue 14, item 15)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from skydm.ap.synthetic import SyntheticField
from skydm.cli.main import main


@pytest.fixture
def visit_files(tmp_path: Path) -> dict[str, Path]:
    field = SyntheticField(seed=9, n_variables=5)
    sci, tmpl, diff, table = field.visit(1)
    files = {}
    for name, exp in (("sci", sci), ("tmpl", tmpl), ("diff", diff)):
        files[name] = tmp_path / f"{name}.fits"
        exp.write(files[name])
    files["sources"] = tmp_path / "sources.ecsv"
    table.write(files["sources"])
    nozp = diff
    nozp.zero_point = math.nan
    files["nozp"] = tmp_path / "nozp.fits"
    nozp.write(files["nozp"])
    return files


def _produce(files: dict[str, Path], diff: str, arch: Path, *extra: str) -> int:
    return main(
        [
            "alerts",
            "produce",
            "-q",
            "--diff",
            str(files[diff]),
            "--sources",
            str(files["sources"]),
            "--archive-dir",
            str(arch),
            *extra,
        ]
    )


def test_zero_point_missing_names_zp_and_leaves_nothing(
    visit_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = tmp_path / "arch"
    assert _produce(visit_files, "nozp", arch) == 1
    err = capsys.readouterr().err
    assert f"{visit_files['nozp']}: has no photometric zero point" in err
    assert "pass --zp MAG" in err
    assert not arch.exists()
    assert _produce(visit_files, "nozp", arch, "--zp", "27.5") == 0
    assert "alerts" in capsys.readouterr().out
    assert (arch / "apdb.sqlite3").exists()


def test_second_image_with_the_same_visit_hints_at_visit(
    visit_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = tmp_path / "arch"
    assert _produce(visit_files, "diff", arch) == 0
    capsys.readouterr()
    assert _produce(visit_files, "diff", arch) == 1
    err = capsys.readouterr().err
    assert "is already in the APDB" in err
    assert "pass --visit (and --detector)" in err
    assert (arch / "apdb.sqlite3").exists()  # the first visit's APDB is kept
    assert _produce(visit_files, "diff", arch, "--visit", "2") == 0


def test_a_failed_produce_leaves_no_apdb(
    visit_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = tmp_path / "arch"
    assert _produce(visit_files, "diff", arch, "--schema", "99.9") != 0
    assert "99.9" in capsys.readouterr().err
    assert not (arch / "apdb.sqlite3").exists()
    assert not arch.exists()


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--cutout-size", "0", "--cutout-size 0 is not allowed"),
        ("--radius", "-1", "--radius -1.0 is not allowed"),
        ("--zp", "nan", "--zp nan is not allowed"),
    ],
)
def test_produce_options_checked_first(
    visit_files: dict[str, Path],
    tmp_path: Path,
    option: str,
    value: str,
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _produce(visit_files, "diff", tmp_path / "arch", option, value) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "arch").exists()
