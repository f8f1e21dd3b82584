"""``skydm platform up|down``: the services, with auth, and the notebooks on this machine.

``up`` makes an administrator's token, starts ``skydm serve --auth tokens``
(or ``oidc``) on 127.0.0.1 and JupyterHub (which starts
configurable-http-proxy) in front of it, each as a process of its own
session (they outlive the command), waits until they answer, and records
what ``down`` needs in ``<repo>/platform/state.json``. One URL, the proxy's,
serves the services and the notebooks (:mod:`skydm.platform.hubconfig`).
``down`` stops the hub (which stops the notebook servers and the proxy) and
the services, and revokes the token.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
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
HUB_LOG_FILE = "hub.log"
HUB_CONFIG_FILE = "jupyterhub_config.py"
#: The hub's key for its encrypted auth_state (where users' skydm tokens are kept).
HUB_KEY_FILE = "hub.key"
#: ``skydm platform up --auth`` choices: how users log in.
UP_AUTH_MODES = ("tokens", "oidc")


@dataclass(frozen=True)
class LocalPlatform:
    """A platform started by :func:`platform_up`.

    Attributes
    ----------
    url : str
        The platform's URL: the notebooks' proxy, which also passes the
        services' paths on; the services' own URL without notebooks.
    pid : int
        Process ID of ``skydm serve``.
    token : str
        The administrator's token (``gt-...``); empty once read back from the
        state file, which keeps only its key.
    token_key : str
        The token's key, revoked by :func:`platform_down`.
    log : str
        The services' log file.
    services_url : str
        Where ``skydm serve`` itself listens.
    hub_pid : int or None
        Process ID of JupyterHub (``None``: started without notebooks).
    hub_log : str
        The hub's log file (empty without notebooks).
    """

    url: str
    pid: int
    token: str
    token_key: str
    log: str
    services_url: str = ""
    hub_pid: int | None = None
    hub_log: str = ""


def _state_path(repo: Path) -> Path:
    return repo / STATE_DIR / STATE_FILE


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []
    return [w.decode(errors="replace") for w in raw]


def _is_our_server(pid: int, repo: Path) -> bool:
    """Whether ``pid`` is still the ``skydm serve`` of ``repo`` (not a reused PID)."""
    words = _cmdline(pid)
    return "serve" in words and str(repo) in words


def _is_our_hub(pid: int, repo: Path) -> bool:
    """Whether ``pid`` is still the JupyterHub of ``repo``."""
    words = _cmdline(pid)
    return "jupyterhub" in words and str(repo / STATE_DIR / HUB_CONFIG_FILE) in words


def read_state(repo: Path) -> LocalPlatform | None:
    """The platform recorded for ``repo``, if its server still runs."""
    path = _state_path(repo)
    try:
        state = json.loads(path.read_text())
        hub_pid = state.get("hub_pid")
        platform = LocalPlatform(
            url=str(state["url"]),
            pid=int(state["pid"]),
            token="",
            token_key=str(state["token_key"]),
            log=str(state["log"]),
            services_url=str(state.get("services_url", state["url"])),
            hub_pid=int(hub_pid) if hub_pid is not None else None,
            hub_log=str(state.get("hub_log", "")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable platform state ({exc}); delete the file") from exc
    return platform if _is_our_server(platform.pid, repo) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def platform_up(
    repo: Path,
    *,
    port: int = 8000,
    timeout: float = 60.0,
    quiet: bool = False,
    notebooks: bool = True,
    auth: str = "tokens",
) -> LocalPlatform:
    """Start the services of ``repo`` with auth, and JupyterHub, on ``127.0.0.1:port``.

    Parameters
    ----------
    repo : Path
        An existing repository (its absolute path is used).
    port : int
        Port of the platform's URL (1–65535): the proxy's, or the services'
        without notebooks.
    timeout : float
        Seconds to wait for each part to answer (> 0).
    quiet : bool
        No progress line.
    notebooks : bool
        Start JupyterHub and its proxy (extra ``platform``, and
        configurable-http-proxy from npm).
    auth : str
        ``tokens`` (the hub asks for a token in a form) or ``oidc`` (the
        services and the hub send browsers to the identity provider of
        ``SKYDM_OIDC_*``; see docs/platform.md).

    Returns
    -------
    LocalPlatform
        Its URL, processes and administrator's token.

    Raises
    ------
    UserError
        It already runs for this repository, a port is taken, a part is not
        installed, or a part did not start (the message ends with the last
        line of its log).
    """
    from skydm.services.auth.tokens import ADMIN_USER, SCOPES, TokenStore

    if not 0 < port < 65536:
        raise BadValueError("port", port, "a TCP port, 1 to 65535")
    if not timeout > 0:
        raise BadValueError("timeout", timeout, "seconds, > 0")
    if auth not in UP_AUTH_MODES:
        raise BadValueError("auth", auth, f"choose one of {', '.join(UP_AUTH_MODES)}")
    repo = repo.resolve()
    running = read_state(repo)
    if running is not None:
        raise UserError(
            f"the platform of {repo} already runs at {running.url} (pid {running.pid}); "
            "stop it with `skydm platform down` first"
        )
    _require_free_port(port)
    proxy = ""
    if notebooks:
        from skydm.errors import require_extra
        from skydm.platform.hubconfig import find_proxy

        require_extra("jupyterhub", "platform")
        require_extra("jupyterlab", "platform")
        proxy = find_proxy()
    store = TokenStore.for_repo(repo)
    try:
        admin = store.create(ADMIN_USER, list(SCOPES), name="skydm platform up")
    finally:
        store.close()
    state_dir = repo / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    services_port = _free_port() if notebooks else port
    services_url = f"http://127.0.0.1:{services_port}"
    log_path = state_dir / LOG_FILE
    # Links the services write (ObsCore access URLs, the login's callback) use the
    # platform's URL: that is where browsers and notebooks' users reach them.
    env = {**os.environ, "SKYDM_PUBLIC_URL": os.environ.get("SKYDM_PUBLIC_URL") or url}
    serve = _start(
        [
            *(sys.executable, "-m", "skydm", "serve", "--repo", str(repo)),
            *("--host", "127.0.0.1", "--port", str(services_port), "--auth", auth),
        ],
        log_path,
        env,
        state_dir,
    )
    platform = LocalPlatform(
        url, serve.pid, admin.token, admin.info.key, str(log_path), services_url
    )
    hub: subprocess.Popen[bytes] | None = None
    try:
        _wait_until_up(
            serve, f"{services_url}/tap/availability", "services", log_path, timeout, quiet
        )
        if notebooks:
            hub_log = state_dir / HUB_LOG_FILE
            hub = _start_hub(repo, port, services_url, proxy, auth == "oidc", hub_log)
            platform = LocalPlatform(
                url,
                serve.pid,
                admin.token,
                admin.info.key,
                str(log_path),
                services_url,
                hub.pid,
                str(hub_log),
            )
            # The hub's API through the proxy: both are up and the routes are in.
            _wait_until_up(hub, f"{url}/hub/api/", "notebook hub", hub_log, timeout, quiet)
            _wait_until_up(hub, f"{url}/tap/availability", "proxy", hub_log, timeout, quiet)
    except BaseException:
        if hub is not None:
            _stop(hub.pid)
        _stop(serve.pid)
        _revoke(repo, admin.info.key)
        raise
    state = {k: v for k, v in asdict(platform).items() if k != "token"}  # never the secret
    atomic_write_bytes(_state_path(repo), json.dumps(state).encode())
    return platform


def _start(
    command: list[str], log_path: Path, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            # Its own session: ^C on this command, or its end, does not stop it.
            start_new_session=True,
        )


def _hub_key(state_dir: Path) -> str:
    """The hub's auth-state key, made once (0600) so that stored logins survive a restart."""
    path = state_dir / HUB_KEY_FILE
    if not path.exists():
        atomic_write_bytes(path, secrets.token_hex(32).encode())
        path.chmod(0o600)
    return path.read_text().strip()


def _start_hub(
    repo: Path, port: int, services_url: str, proxy: str, browser_login: bool, log_path: Path
) -> subprocess.Popen[bytes]:
    from skydm.platform.hubconfig import LocalHubSettings, render_config

    state_dir = repo / STATE_DIR
    settings = LocalHubSettings(
        public_port=port,
        services_url=services_url,
        hub_port=_free_port(),
        proxy_api_port=_free_port(),
        state_dir=state_dir,
        proxy=proxy,
        browser_login=browser_login,
    )
    config = state_dir / HUB_CONFIG_FILE
    atomic_write_bytes(config, render_config(settings).encode())
    env = {
        **os.environ,
        "JUPYTERHUB_CRYPT_KEY": _hub_key(state_dir),
        "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
    }
    # The notebooks find skydm (and their kernels) where this Python does.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return _start([sys.executable, "-m", "jupyterhub", "-f", str(config)], log_path, env, state_dir)


def _require_free_port(port: int) -> None:
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
    proc: subprocess.Popen[bytes],
    url: str,
    what: str,
    log_path: Path,
    timeout: float,
    quiet: bool,
) -> None:
    import httpx

    progress = Progress(f"starting the {what} at {url}", quiet=quiet)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise UserError(f"the {what} did not start: {_last_line(log_path)} (see {log_path})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                progress.finish("up")
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise UserError(
                f"the {what} did not answer within {timeout:g} s (see {log_path}); "
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


def _stop_orphan_hub(repo: Path) -> None:
    """Stop the hub of a platform whose services died (it would hold the port)."""
    try:
        hub_pid = json.loads(_state_path(repo).read_text()).get("hub_pid")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(hub_pid, int) and _is_our_hub(hub_pid, repo):
        _stop(hub_pid)


def platform_down(repo: Path) -> LocalPlatform:
    """Stop the platform :func:`platform_up` started for ``repo`` (the hub, its proxy and
    notebook servers, the services); revoke its token.

    Raises
    ------
    UserError
        Nothing runs for this repository.
    """
    repo = repo.resolve()
    platform = read_state(repo)
    if platform is None:
        _stop_orphan_hub(repo)
        _state_path(repo).unlink(missing_ok=True)  # a server that died: forget it
        raise UserError(f"no platform runs for {repo}; start one with `skydm platform up`")
    if platform.hub_pid is not None and _is_our_hub(platform.hub_pid, repo):
        # First: it stops the notebook servers and the proxy it started.
        _stop(platform.hub_pid)
    _stop(platform.pid)
    _revoke(repo, platform.token_key)
    _state_path(repo).unlink(missing_ok=True)
    return platform
