"""Shared test fixtures: the real data directory and the rule for optional tools.

Tests that need an external tool (PostgreSQL, STILTS, fpack, the tansu broker)
skip when it is missing on a developer's machine, but CI sets
``SKYDM_REQUIRE_ALL=1`` so that a missing tool fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from skydm.alerts.localbroker import LocalBroker
from skydm.errors import MissingExtraError, SkydmError
from skydm_testing import DATA, DemoRun, require_tool


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data/real`` (the project's real test images)."""
    require_tool("shared test data", DATA.is_dir(), f"expected at {DATA}")
    return DATA


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A throwaway PostgreSQL 15 server on 127.0.0.1; yields a URL factory.

    The fixture yields ``make(dbname) -> "postgresql+psycopg://..."``, which
    creates the database (with the q3c and pg_sphere extensions available)
    and returns its SQLAlchemy URL.  The server runs as the ``postgres`` user
    when the tests run as root (initdb refuses root).
    """
    import subprocess
    import tempfile

    require_tool(
        "PostgreSQL 15", (PG_BIN / "initdb").exists(), "install Debian package postgresql-15"
    )
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="skydm-pg-"))
    datadir = base / "data"
    prefix: list[str] = []
    if as_root:
        shutil.chown(base, "postgres")
        base.chmod(0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*prefix, str(PG_BIN / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -k {base} -c fsync=off"
    subprocess.run(
        [
            *prefix,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(datadir),
            "-o",
            opts,
            "-w",
            "-l",
            str(base / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def make(dbname: str) -> str:
        subprocess.run(
            [
                str(PG_BIN / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                dbname,
            ],
            check=False,
            capture_output=True,
        )
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{dbname}"

    try:
        yield make
    finally:
        subprocess.run(
            [*prefix, str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    """A fresh tansu broker (Kafka protocol, memory storage) on 127.0.0.1 for one test."""
    try:
        b = LocalBroker()
    except MissingExtraError as exc:
        require_tool("tansu broker", False, str(exc))
        raise
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """The default demo (seed 42, 10 visits of 512^2, 5 in the template), made once.

    Its alerts are streamed to a tansu broker that lives as long as the
    session, so that a test can consume them.  Made once because it is the
    suite's most expensive set-up (a minute on two busy cores), used by the
    demo, reliability and archive-quality tests.
    """
    from skydm.pipeline.demo import run_demo

    broker: LocalBroker | None = None
    why = ""
    try:
        broker = LocalBroker().start()
    except SkydmError as exc:  # tansu missing, or not up in time: only the stream test needs it
        why = str(exc)
    try:
        root = tmp_path_factory.mktemp("demo") / "repo"
        bootstrap = broker.bootstrap if broker is not None else None
        report = run_demo(root, seed=42, bootstrap=bootstrap, quiet=True)
        yield DemoRun(root, report, bootstrap, why)
    finally:
        if broker is not None:
            broker.kill()
