"""Helpers shared by the test modules (import as ``from skydm_testing import ...``).

Tests that need an external tool (PostgreSQL, STILTS, fpack, the tansu broker)
skip when it is missing on a developer's machine, but CI sets
``SKYDM_REQUIRE_ALL=1`` so that a missing tool fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from skydm.pipeline.demo import DemoReport

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_s3_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 for the ``with`` block; yields its endpoint URL.

    ``env`` adds variables to the server's environment (e.g.
    ``INITIAL_NO_AUTH_ACTION_COUNT`` to make it check credentials).
    """
    exe = require_executable("moto_server", "pip install 'moto[server]' boto3")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass(frozen=True)
class DemoRun:
    """The session's ``skydm demo`` repository, shared by every test that reads one.

    ``repo`` is read-only: a test that writes (reruns the demo, adds
    datasets) works on a ``shutil.copytree`` of it.  ``bootstrap`` is the
    broker the alerts were streamed to (``None`` where tansu is missing or did
    not start: ``no_broker`` says why).
    """

    repo: Path
    report: DemoReport
    bootstrap: str | None
    no_broker: str = ""
