"""``skydm platform up|down``: the services with token auth on this machine.

``up`` makes an administrator's token, starts ``skydm serve --auth tokens``
on 127.0.0.1 as a process of its own session (it outlives the command), waits
until it answers, and records what ``down`` needs in
``<repo>/platform/state.json``. ``down`` stops that process and revokes the
token. JupyterHub is not started: notebooks are not built yet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from skydm.errors import BadValueError, SkydmError, UserError
from skydm.progress import Progress
from skydm.repo.atomic import atomic_write_bytes

STATE_DIR = "platform"
STATE_FILE = "state.json"
LOG_FILE = "serve.log"


@dataclass(frozen=True)
class LocalPlatform:
    """A platform started by :func:`platform_up`.

    Attributes
    ----------
    url : str
        Root URL of the services.
    pid : int
        Process ID of ``skydm serve``.
    token : str
        The administrator's token (``gt-...``); empty once read back from the
        state file, which keeps only its key.
    token_key : str
        The token's key, revoked by :func:`platform_down`.
    log : str
        The server's log file.
    """

    url: str
    pid: int
    token: str
    token_key: str
    log: str


def _state_path(repo: Path) -> Path:
    return repo / STATE_DIR / STATE_FILE


def _is_our_server(pid: int, repo: Path) -> bool:
    """Whether ``pid`` is still the ``skydm serve`` of ``repo`` (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [w.decode(errors="replace") for w in cmdline]
    return "serve" in words and str(repo) in words


def read_state(repo: Path) -> LocalPlatform | None:
    """The platform recorded for ``repo``, if its server still runs."""
    path = _state_path(repo)
    try:
        state = json.loads(path.read_text())
        platform = LocalPlatform(
            url=str(state["url"]),
            pid=int(state["pid"]),
            token="",
            token_key=str(state["token_key"]),
            log=str(state["log"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable platform state ({exc}); delete the file") from exc
    return platform if _is_our_server(platform.pid, repo) else None


def platform_up(
    repo: Path, *, port: int = 8000, timeout: float = 60.0, quiet: bool = False
) -> LocalPlatform:
    """Start the services of ``repo`` with token auth on ``127.0.0.1:port``.

    Parameters
    ----------
    repo : Path
        An existing repository (its absolute path is used).
    port : int
        Port of the services (1–65535).
    timeout : float
        Seconds to wait for the server to answer (> 0).
    quiet : bool
        No progress line.

    Returns
    -------
    LocalPlatform
        Its URL, process and administrator's token.

    Raises
    ------
    UserError
        It already runs for this repository, or the server did not start
        (the message ends with the last line of its log).
    """
    from skydm.services.auth.tokens import ADMIN_USER, SCOPES, TokenStore

    if not 0 < port < 65536:
        raise BadValueError("port", port, "a TCP port, 1 to 65535")
    if not timeout > 0:
        raise BadValueError("timeout", timeout, "seconds, > 0")
    repo = repo.resolve()
    running = read_state(repo)
    if running is not None:
        raise UserError(
            f"the platform of {repo} already runs at {running.url} (pid {running.pid}); "
            "stop it with `skydm platform down` first"
        )
    _require_free_port(port)
    store = TokenStore.for_repo(repo)
    try:
        admin = store.create(ADMIN_USER, list(SCOPES), name="skydm platform up")
    finally:
        store.close()
    state_dir = repo / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    log_path = state_dir / LOG_FILE
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "skydm", "serve", "--repo", str(repo)),
                *("--host", "127.0.0.1", "--port", str(port), "--auth", "tokens"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: ^C on this command, or its end, does not stop the server.
            start_new_session=True,
        )
    platform = LocalPlatform(url, proc.pid, admin.token, admin.info.key, str(log_path))
    try:
        _wait_until_up(proc, url, log_path, timeout, quiet)
    except BaseException:
        _stop(proc.pid)
        _revoke(repo, admin.info.key)
        raise
    state = {k: v for k, v in asdict(platform).items() if k != "token"}  # never the secret
    atomic_write_bytes(_state_path(repo), json.dumps(state).encode())
    return platform


def _require_free_port(port: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); another program holds "
                "the port: choose another with --port"
            ) from exc


def _wait_until_up(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float, quiet: bool
) -> None:
    import httpx

    progress = Progress(f"starting the services at {url}", quiet=quiet)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise UserError(f"the services did not start: {_last_line(log_path)} (see {log_path})")
        try:
            if httpx.get(f"{url}/tap/availability", timeout=2).status_code == 200:
                progress.finish("up")
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise UserError(
                f"the services did not answer within {timeout:g} s (see {log_path}); "
                "raise --timeout on a slow machine"
            )
        progress.advance(0)
        time.sleep(0.2)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _stop(pid: int, grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps it if it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            # Not our child (started by an earlier `up`): poll for its end.
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _revoke(repo: Path, key: str) -> None:
    from skydm.services.auth.tokens import TokenStore

    store = TokenStore.for_repo(repo)
    try:
        store.revoke(key)
    except SkydmError:
        pass  # already revoked: nothing left to do
    finally:
        store.close()


def platform_down(repo: Path) -> LocalPlatform:
    """Stop the platform :func:`platform_up` started for ``repo``; revoke its token.

    Raises
    ------
    UserError
        Nothing runs for this repository.
    """
    repo = repo.resolve()
    platform = read_state(repo)
    if platform is None:
        _state_path(repo).unlink(missing_ok=True)  # a server that died: forget it
        raise UserError(f"no platform runs for {repo}; start one with `skydm platform up`")
    _stop(platform.pid)
    _revoke(repo, platform.token_key)
    _state_path(repo).unlink(missing_ok=True)
    return platform
