"""The browser flow in headless Chromium, driven over the W3C WebDriver protocol (chromedriver).

A real ``skydm serve --auth oidc``, a real OpenID provider on localhost, a
real browser: open a service page → redirected through /login to the
provider → log in → back with a session cookie → the page is served.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from skydm.repo import Repository
from skydm_testing import require_executable, require_tool

from .conftest import free_port, make_catalog

try:
    import oidc_provider_mock as oidc_mock
except ImportError:  # pragma: no cover - the test extra installs it
    oidc_mock = None


class WebDriver:
    """The few WebDriver commands the test needs, over HTTP to chromedriver."""

    def __init__(self, chromium: str, chromedriver: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.base}/status", timeout=2).json()["value"]["ready"]:
                    break
            except (httpx.TransportError, ValueError, KeyError):
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.2)
        options = {"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu"]}
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        answer = self._call("POST", "/session", caps)
        self.session = f"/session/{answer['sessionId']}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.base}{path}", json=body, timeout=60)
        value = response.json()["value"]
        assert response.status_code == 200, value
        return value

    def get(self, url: str) -> None:
        self._call("POST", f"{self.session}/url", {"url": url})

    def url(self) -> str:
        return str(self._call("GET", f"{self.session}/url"))

    def source(self) -> str:
        return str(self._call("GET", f"{self.session}/source"))

    def element(self, css: str) -> str:
        found = self._call(
            "POST", f"{self.session}/element", {"using": "css selector", "value": css}
        )
        return str(next(iter(found.values())))

    def type(self, css: str, text: str) -> None:
        self._call("POST", f"{self.session}/element/{self.element(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", f"{self.session}/element/{self.element(css)}/click", {})

    def quit(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium = require_executable("chromium", "install Debian package chromium")
    chromedriver = require_executable("chromedriver", "install Debian package chromium-driver")
    driver = WebDriver(chromium, chromedriver)
    try:
        yield driver
    finally:
        driver.quit()


def test_browser_login_flow(tmp_path: Path, browser: WebDriver) -> None:
    require_tool("oidc-provider-mock", oidc_mock is not None, "pip install skydm[test]")
    assert oidc_mock is not None
    repo = tmp_path / "repo"
    Repository.open(repo).close()
    make_catalog(repo)
    users = [
        oidc_mock.User(
            sub="u-1001",
            claims={"preferred_username": "alice", "isMemberOf": [{"name": "g-users"}]},
        )
    ]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with oidc_mock.run_server_in_thread(port=0, require_nonce=True, user_claims=users) as idp:
        env = {
            **os.environ,
            "SKYDM_OIDC_ISSUER": f"http://localhost:{idp.server_port}",
            "SKYDM_OIDC_CLIENT_ID": "skydm",
            "SKYDM_OIDC_CLIENT_SECRET": "browser-test",
            "SKYDM_OIDC_GROUP_SCOPES": "g-users=read:tap",
            "SKYDM_PUBLIC_URL": base,
        }
        log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "skydm", "serve", "--repo", str(repo), "--port", str(port),
             "--auth", "oidc", "--workers", "1", "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/tap/availability", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "serve.log"
                ).read_text()
                time.sleep(0.2)
            browser.get(f"{base}/tap/tables")
            assert "authentication required" in browser.source()
            browser.get(f"{base}/login?rd=/tap/tables")
            assert browser.url().startswith(f"http://localhost:{idp.server_port}/")
            browser.type("input[name=sub]", "u-1001")
            browser.click("form button[type=submit]")
            deadline = time.monotonic() + 30
            while not browser.url().startswith(f"{base}/tap/tables"):
                assert time.monotonic() < deadline, browser.url()
                time.sleep(0.1)
            page = browser.source()
            assert "Object" in page and "tableset" in page, page[:500]
            browser.get(f"{base}/auth/api/v1/token-info")
            assert '"username":"alice"' in browser.source().replace(" ", "")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
