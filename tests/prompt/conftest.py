"""Shared fixtures of the prompt-processing tests: templates made once, a service process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skydm.prompt.simulate import NightConfig, prepare_night

#: The focal plane of every service test: 4 detectors of 256x256 pixels.
DETECTORS, SIZE = 4, 256


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding templates (3 visits of the simulated field coadded)."""
    root = tmp_path_factory.mktemp("prompt-templates") / "repo"
    prepare_night(
        root, NightConfig(visits=1, detectors=DETECTORS, size=SIZE, templates=3), render=False
    )
    return root


@pytest.fixture
def repo(template_repo: Path, tmp_path: Path) -> Path:
    """A copy of the template repository for one test."""
    dest = tmp_path / "repo"
    shutil.copytree(template_repo, dest)
    return dest


def skydm(*args: str) -> list[str]:
    """The command line of ``skydm ARGS`` with this interpreter."""
    return [sys.executable, "-m", "skydm", *args]


class Service:
    """``skydm prompt serve`` running in a process of its own."""

    def __init__(self, repo: Path, bootstrap: str, *extra: str) -> None:
        self.log = repo.parent / f"serve-{uuid.uuid4().hex[:6]}.log"
        self._fh = self.log.open("w")
        self.proc = subprocess.Popen(
            skydm("prompt", "serve", "--repo", str(repo), "--bootstrap", bootstrap, *extra),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float) -> tuple[int, str]:
        """Exit status and output, once it ended."""
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._fh.close()
        return rc, self.log.read_text()


@pytest.fixture
def service() -> Iterator[list[Service]]:
    """Started services, killed at the end of the test if still running."""
    started: list[Service] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def read_alerts(bootstrap: str, topic: str, *, expect: int, timeout: float = 60.0) -> list[int]:
    """diaSourceIds of every message on ``topic``, read by a plain confluent-kafka consumer.

    Reads until ``expect`` messages came and then 3 s more pass with none
    (so that duplicates beyond ``expect`` are seen too), or ``timeout``.
    """
    import confluent_kafka as ck

    from skydm.alerts.consumer import dia_source_id_of

    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"independent-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    ids: list[int] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(500, timeout=0.5)
            got = [m for m in msgs if m.error() is None]
            if got:
                ids += [dia_source_id_of(m.value()) for m in got]
                quiet_since = time.monotonic()
            elif len(ids) >= expect and time.monotonic() - quiet_since > 3.0:
                break
    finally:
        consumer.close()
    return ids
