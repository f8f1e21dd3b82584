"""The ``skydm`` command: every subcommand has --help; errors are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from skydm.cli.main import COMMAND_MODULES, main


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: skydm {command}" in capsys.readouterr().out


def test_bare_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_user_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.fits"
    other = tmp_path / "also.fits"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skydm",
            "diffim",
            str(missing),
            str(other),
            "--out",
            str(tmp_path / "d.fits"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "nope.fits" in lines[0]
    assert "Traceback" not in proc.stderr
