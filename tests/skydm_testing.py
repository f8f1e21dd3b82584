"""Helpers shared by the test modules (import as ``from skydm_testing import ...``).

Tests that need an external tool (PostgreSQL, STILTS, fpack, the tansu broker)
skip when it is missing on a developer's machine, but CI sets
``SKYDM_REQUIRE_ALL=1`` so that a missing tool fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def require_tool(name: str, found: bool, how: str) -> None:
    """Skip (or fail under ``SKYDM_REQUIRE_ALL=1``) when a tool is missing."""
    if found:
        return
    msg = f"{name} is not available; {how}"
    if os.environ.get("SKYDM_REQUIRE_ALL") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def require_executable(exe: str, how: str) -> str:
    """Path of ``exe`` on PATH, or skip/fail as :func:`require_tool` says."""
    path = shutil.which(exe)
    require_tool(exe, path is not None, how)
    assert path is not None
    return path
