"""The hub's delegated notebook tokens are revoked at stop, also after a hub restart.

A real ``skydm serve --auth tokens`` answers the authenticator.  JupyterHub's
``User`` is stood in for by its stored ``auth_state`` (what the hub's
database keeps across a restart; JSON round-tripped like the real one), and a
restart by a fresh :class:`SkydmAuthenticator`, which has lost every
in-memory record, as a restarted hub process has.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from skydm.repo import Repository
from skydm.services.auth.tokens import TokenStore

pytest.importorskip("jupyterhub", reason="pip install skydm[platform]")


class _StoredUser:
    """A hub user as JupyterHub stores it: a name and an auth_state (JSON, kept on save)."""

    def __init__(self, name: str, state: dict[str, Any]) -> None:
        self.name = name
        self._stored = json.dumps(state)

    async def get_auth_state(self) -> dict[str, Any]:
        return json.loads(self._stored)  # type: ignore[no-any-return]

    async def save_auth_state(self, state: dict[str, Any]) -> None:
        self._stored = json.dumps(state)


class _Server:
    """What the authenticator reads and sets on a spawner: its name and environment."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.environment: dict[str, str] = {}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    repo = tmp_path_factory.mktemp("hubtokens")
    Repository.open(repo).close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(repo / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skydm",
            "serve",
            "--repo",
            str(repo),
            "--port",
            str(port),
            "--auth",
            "tokens",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/tap/availability", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                repo / "serve.log"
            ).read_text()
            time.sleep(0.2)
        yield url, repo
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _live_notebook_keys(repo: Path) -> set[str]:
    store = TokenStore.for_repo(repo)
    try:
        return {t.key for t in store.tokens() if t.token_type == "notebook"}
    finally:
        store.close()


def test_notebook_token_is_revoked_at_stop_after_a_hub_restart(
    services: tuple[str, Path],
) -> None:
    from skydm.platform.hub import NOTEBOOK_KEYS, SkydmAuthenticator

    url, repo = services
    store = TokenStore.for_repo(repo)
    parent = store.create("alice", ["exec:notebook", "read:tap"]).token
    store.close()

    async def scenario() -> None:
        hub = SkydmAuthenticator(services_url=url)
        login = await hub.authenticate(None, {"token": parent})
        assert login is not None and login["name"] == "alice"
        user = _StoredUser("alice", login["auth_state"])
        server, other = _Server(""), _Server("second")
        await hub.pre_spawn_start(user, server)
        await hub.pre_spawn_start(user, other)
        assert server.environment["SKYDM_TOKEN"] != other.environment["SKYDM_TOKEN"]
        keys = (await user.get_auth_state())[NOTEBOOK_KEYS]
        assert set(keys) == {"", "second"}
        assert set(keys.values()) <= _live_notebook_keys(repo)

        restarted = SkydmAuthenticator(services_url=url)  # the in-memory record is gone
        await restarted.post_spawn_stop(user, server)
        live = _live_notebook_keys(repo)
        assert keys[""] not in live and keys["second"] in live
        assert (await user.get_auth_state())[NOTEBOOK_KEYS] == {"second": keys["second"]}
        # The other server is stopped by the hub that started it: revoked too, once.
        await hub.post_spawn_stop(user, other)
        await restarted.post_spawn_stop(user, other)  # nothing left to revoke: no error
        assert keys["second"] not in _live_notebook_keys(repo)
        assert (await user.get_auth_state())[NOTEBOOK_KEYS] == {}
        # The user's own token is untouched.
        assert await restarted.token_info(parent) is not None

    asyncio.run(scenario())
