"""``skydm platform up|down`` on 127.0.0.1, checked with ``skydm platform check``."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest

from services.conftest import free_port, ingest_sim_raws, make_catalog
from skydm.cli.main import main
from skydm.services.auth.tokens import InvalidTokenError, TokenStore


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_check_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    ingest_sim_raws(repo, tmp_path / "raws")
    make_catalog(repo)
    port = free_port()
    # The services alone (tests/science_platform/test_notebooks.py starts the hub too).
    argv = ["platform", "up", "--repo", str(repo), "--port", str(port), "--no-notebooks"]
    assert main(argv) == 0
    state = json.loads((repo / "platform" / "state.json").read_text())
    pid = state["pid"]
    try:
        out = capsys.readouterr().out.strip().splitlines()
        url = f"http://127.0.0.1:{port}"
        assert url in out[0]
        token = out[-1]
        assert token.startswith("gt-")
        # The state file keeps the key, never the secret.
        assert token not in (repo / "platform" / "state.json").read_text()
        assert state["url"] == url and _alive(pid)
        # The services are behind auth, and the admin token passes the synthetic user.
        assert httpx.get(f"{url}/tap/tables").status_code == 401
        assert main(["platform", "check", "--url", url, "--token", token, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] and [s["name"] for s in report["steps"]] == [
            "auth",
            "tap",
            "sia",
            "soda",
        ]
        # A second `up` for the same repository is refused in one line.
        again = ["platform", "up", "--repo", str(repo), "--port", str(free_port())]
        assert main([*again, "--no-notebooks"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already runs at" in err[0] and url in err[0]
    finally:
        assert main(["platform", "down", "--repo", str(repo)]) == 0
    assert "stopped" in capsys.readouterr().out
    assert not _alive(pid)
    assert not (repo / "platform" / "state.json").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/tap/availability", timeout=2)
    store = TokenStore.for_repo(repo)
    try:
        with pytest.raises(InvalidTokenError):
            store.verify(token)
    finally:
        store.close()
    # Nothing runs any more: `down` says so in one line.
    assert main(["platform", "down", "--repo", str(repo)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no platform runs" in err[0]


def test_up_refuses_a_held_port_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    make_catalog(repo)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["platform", "up", "--repo", str(repo), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "--port" in err[0]
    assert not (repo / "platform").exists()
    store = TokenStore.for_repo(repo)
    try:
        assert store.tokens("admin") == []
    finally:
        store.close()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "0"], "--port 0"),
        (["--port", "70000"], "--port 70000"),
        (["--timeout", "0"], "--timeout 0.0"),
    ],
)
def test_up_bad_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    repo = tmp_path / "repo"
    make_catalog(repo)
    assert main(["platform", "up", "--repo", str(repo), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_up_and_down_need_a_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("up", "down"):
        assert main(["platform", command, "--repo", str(tmp_path / "none")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no skydm repository" in err[0]


def test_up_without_the_proxy_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    make_catalog(repo)
    monkeypatch.setenv("SKYDM_CHP", str(tmp_path / "no-such-proxy"))
    assert main(["platform", "up", "--repo", str(repo), "--port", str(free_port())]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SKYDM_CHP" in err[0] and "no-such-proxy" in err[0], err
    store = TokenStore.for_repo(repo)
    try:
        assert store.tokens("admin") == []
    finally:
        store.close()
