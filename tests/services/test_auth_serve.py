"""``skydm serve --auth``: loopback only without auth; a real server never logs a token."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pyvo.dal import DALServiceError

from skydm.cli.main import main
from skydm.client import Client
from skydm.errors import UserError
from skydm.repo import Repository
from skydm.services.auth.tokens import TokenStore, split_token
from skydm.services.client import run_remote

from .conftest import free_port, make_catalog


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org"])
def test_non_loopback_without_auth_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    assert main(["serve", "--repo", str(tmp_path), "--host", host]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--host" in err[0] and host in err[0] and "--insecure" in err[0]


def test_unknown_auth_mode_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--auth", "magic"])
    assert exit_info.value.code == 2
    assert "magic" in capsys.readouterr().err


def test_tokens_never_reach_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real ``skydm serve --auth tokens`` at debug level, sent good, bad and revoked tokens."""
    repo = tmp_path / "repo"
    Repository.open(repo).close()
    make_catalog(repo)
    caplog.set_level(logging.DEBUG)
    assert (
        main(["token", "create", "--repo", str(repo), "--user", "eve", "--scope", "read:tap"]) == 0
    )
    good = capsys.readouterr().out.strip().splitlines()[-1]
    store = TokenStore.for_repo(repo)
    revoked = store.create("eve", ["read:tap"])
    store.revoke(revoked.info.key)
    store.close()
    wrong = good[:-4] + ("BBBB" if good.endswith("AAAA") else "AAAA")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
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
                "--workers",
                "1",
                "--log-level",
                "debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/tap/availability", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            query = {"LANG": "ADQL", "QUERY": "SELECT TOP 1 objectId FROM Object"}
            for token, status in ((good, 200), (wrong, 401), (revoked.token, 401)):
                headers = {"Authorization": f"Bearer {token}"}
                assert (
                    httpx.post(f"{base}/tap/sync", data=query, headers=headers).status_code
                    == status
                )
                assert httpx.get(f"{base}/tap/tables", headers=headers).status_code == status
                basic = httpx.get(f"{base}/tap/tables", auth=("u", token))
                assert basic.status_code == status
            # The client library takes the token from $SKYDM_TOKEN.
            out = tmp_path / "cone.csv"
            with pytest.raises(UserError, match="authentication required"):
                run_remote(
                    f"{base}/tap", "SELECT TOP 3 objectId FROM Object", sink=out, output="csv"
                )
            os.environ["SKYDM_TOKEN"] = good
            try:
                run_remote(
                    f"{base}/tap", "SELECT TOP 3 objectId FROM Object", sink=out, output="csv"
                )
                run_remote(
                    f"{base}/tap",
                    "SELECT TOP 3 objectId FROM Object",
                    sink=out,
                    output="csv",
                    run_async=True,
                    quiet=True,
                )
            finally:
                del os.environ["SKYDM_TOKEN"]
            assert len(out.read_text().splitlines()) == 4
            # The notebook client (pyvo) likewise.
            os.environ["SKYDM_TOKEN"] = good
            try:
                rows = Client(base).tap.search("SELECT TOP 3 objectId FROM Object").to_table()
            finally:
                del os.environ["SKYDM_TOKEN"]
            assert len(rows) == 3
            with pytest.raises(DALServiceError):
                Client(base, token="").tap.search("SELECT TOP 3 objectId FROM Object")
            # A token in the query string is not accepted (it would be logged with the URL).
            assert httpx.get(f"{base}/tap/tables", params={"X": "1"}).status_code == 401
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = log_path.read_text() + caplog.text + capsys.readouterr().err
    assert "GET /tap/tables" in text  # the access log was on
    for token in (good, wrong, revoked.token):
        assert split_token(token)[1] not in text


def test_oidc_without_a_provider_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SKYDM_OIDC_ISSUER", "SKYDM_OIDC_CLIENT_ID", "SKYDM_OIDC_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    Repository.open(tmp_path / "repo").close()
    assert main(["serve", "--repo", str(tmp_path / "repo"), "--auth", "oidc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SKYDM_OIDC_ISSUER" in err[0]
    assert not (tmp_path / "repo" / "tap").exists()


def test_tokens_need_a_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--repo", str(tmp_path / "none"), "--auth", "tokens"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none" in err[0]
    assert not (tmp_path / "none").exists()
