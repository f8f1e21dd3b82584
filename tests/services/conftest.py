"""Fixtures: a small synthetic catalog and the real TAP service on it, in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

N_ROWS = 5000
DEFAULT_MAXREC = 2000
#: A query that runs for minutes: a three-way cross join DuckDB cannot prune.
LONG_QUERY = (
    "SELECT COUNT(*) AS n FROM Object AS a, Object AS b, Object AS c "
    "WHERE a.ra + b.dec > c.ra + c.dec"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_catalog(repo: Path) -> pa.Table:
    """Load N_ROWS synthetic objects around (10, 20) deg into ``repo``; returns the truth."""
    from skydm.catalog import load_table
    from skydm.repo import Repository

    Repository.open(repo).close()  # `skydm serve` refuses a directory without a repository

    rng = np.random.default_rng(42)
    truth = pa.table(
        {
            "objectId": np.arange(1, N_ROWS + 1, dtype=np.int64),
            "ra": rng.uniform(9.0, 11.0, N_ROWS),
            "dec": rng.uniform(19.0, 21.0, N_ROWS),
            "g_psfFlux": rng.uniform(1.0, 1e4, N_ROWS),
        }
    )
    load_table(repo / "catalog", "Object", truth)
    return truth


class Service:
    """``skydm serve`` running in a subprocess on a free port."""

    def __init__(self, repo: Path, *, port: int | None = None) -> None:
        self.repo = repo
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/tap"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        env = {
            **os.environ,
            "SKYDM_TAP_DEFAULT_MAXREC": str(DEFAULT_MAXREC),
            "SKYDM_TAP_SWEEP_INTERVAL": "0.5",
        }
        self.log = open(self.repo / f"serve-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skydm",
                "serve",
                "--repo",
                str(self.repo),
                "--port",
                str(self.port),
                "--workers",
                "2",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"skydm serve exited: {(self.repo / f'serve-{self.port}.log').read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/availability", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("skydm serve did not start within 60 s")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc = None
        self.log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def ingest_sim_raws(repo: Path, work: Path) -> list[Path]:
    """Ingest four small simulated raws (two visits in g and r) into ``repo``."""
    from skydm.archive import ingest_files
    from skydm.repo import Repository
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    cfg = SurveyConfig(
        seed=3,
        shape=(128, 128),
        n_visits=2,
        bands=("g", "r"),
        n_stars=20,
        n_galaxies=5,
        artefacts=(),
        n_transients=0,
        n_variables=0,
        n_movers=0,
        ra=10.0,
        dec=20.0,
    )
    paths = write_survey(simulate_survey(cfg), work, clean=False)
    with Repository.open(repo) as r:
        report = ingest_files(r, paths)
    assert report.ok, report
    return paths


@pytest.fixture(scope="session")
def catalog_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    repo = tmp_path_factory.mktemp("taprepo")
    ingest_sim_raws(repo, tmp_path_factory.mktemp("simraws"))
    return repo, make_catalog(repo)


@pytest.fixture(scope="session")
def service(catalog_repo: tuple[Path, pa.Table]) -> Iterator[Service]:
    svc = Service(catalog_repo[0]).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def truth(catalog_repo: tuple[Path, pa.Table]) -> pa.Table:
    return catalog_repo[1]


def cone_truth(truth: pa.Table, ra: float, dec: float, radius: float) -> set[int]:
    """Identifiers within ``radius`` deg of (ra, dec), by the haversine formula."""
    r1, d1 = np.radians(truth["ra"].to_numpy()), np.radians(truth["dec"].to_numpy())
    r0, d0 = np.radians(ra), np.radians(dec)
    h = np.sin((d1 - d0) / 2) ** 2 + np.cos(d0) * np.cos(d1) * np.sin((r1 - r0) / 2) ** 2
    sep = np.degrees(2 * np.arcsin(np.sqrt(h)))
    return set(truth["objectId"].to_numpy()[sep < radius].tolist())
