"""Notebooks end to end: ``skydm platform up --auth oidc`` with a real JupyterHub,
configurable-http-proxy (npm), JupyterLab, a real OpenID provider and headless Chromium.

One platform serves the module (starting it takes most of the time):

* ``skydm platform check --notebook`` starts the synthetic user's server
  through the hub's API and runs a cell through the kernel API: the cell's
  TAP query returns rows with a delegated ``notebook`` token, which is
  revoked when the server stops;
* the hub refuses tokens skydm does not accept or that lack ``exec:notebook``;
* the browser flow: the platform's URL → the provider's login page → back
  with a skydm session → the hub logs the user in from that session →
  JupyterLab opens → a cell runs through the kernel API *from the browser*,
  with the browser's own Jupyter session (JupyterLab's UI is not clicked:
  its DOM changes between releases), and its TAP query gets rows with the
  delegated token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.conftest import free_port, make_catalog
from services.test_auth_browser import WebDriver
from skydm.errors import UserError
from skydm_testing import require_executable, require_tool

try:
    import oidc_provider_mock as oidc_mock
except ImportError:  # pragma: no cover - the test extra installs it
    oidc_mock = None

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

QUERY = "SELECT TOP 7 objectId, ra, dec FROM Object"


@dataclass(frozen=True)
class Platform:
    url: str
    token: str
    repo: Path
    idp: str


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    try:
        import jupyterhub  # noqa: F401
        import jupyterlab  # noqa: F401

        have_jupyter = True
    except ImportError:
        have_jupyter = False
    require_tool("jupyterhub and jupyterlab", have_jupyter, "pip install skydm[platform]")
    require_tool("oidc-provider-mock", oidc_mock is not None, "pip install skydm[test]")
    from skydm.platform.hubconfig import find_proxy
    from skydm.platform.local import platform_down, platform_up

    try:
        find_proxy()
        have_proxy = True
    except UserError:
        have_proxy = False
    require_tool("configurable-http-proxy", have_proxy, "npm install configurable-http-proxy")
    assert oidc_mock is not None
    repo = tmp_path_factory.mktemp("notebookrepo")
    make_catalog(repo)
    users = [
        oidc_mock.User(
            sub="u-2001",
            claims={"preferred_username": "alice", "isMemberOf": [{"name": "g-science"}]},
        )
    ]
    with (
        oidc_mock.run_server_in_thread(port=0, require_nonce=True, user_claims=users) as idp,
        pytest.MonkeyPatch.context() as env,
    ):
        issuer = f"http://localhost:{idp.server_port}"
        env.setenv("SKYDM_OIDC_ISSUER", issuer)
        env.setenv("SKYDM_OIDC_CLIENT_ID", "skydm")
        env.setenv("SKYDM_OIDC_CLIENT_SECRET", "notebook-test")
        env.setenv("SKYDM_OIDC_GROUP_SCOPES", "g-science=read:tap,read:image,exec:notebook")
        env.delenv("SKYDM_PUBLIC_URL", raising=False)
        # Generous: the hub, the proxy and the services start on a loaded machine.
        up = platform_up(repo, port=free_port(), timeout=240, quiet=True, auth="oidc")
        try:
            yield Platform(up.url, up.token, repo, issuer)
        finally:
            platform_down(repo)


def _live_notebook_tokens(repo: Path) -> list[Any]:
    from skydm.services.auth.tokens import TokenStore

    store = TokenStore.for_repo(repo)
    try:
        return [t for t in store.tokens() if t.token_type == "notebook"]
    finally:
        store.close()


def test_check_runs_a_notebook_cell_with_a_delegated_token(platform: Platform) -> None:
    from skydm.platform import CheckConfig, run_check

    report = run_check(
        CheckConfig(url=platform.url, token=platform.token, query=QUERY, notebook=True)
    )
    steps = {s.name: s for s in report.steps}
    assert steps["auth"].ok and steps["tap"].ok, report.table()
    notebook = steps["notebook"]
    assert notebook.ok, notebook.detail
    # 7 rows, found by the kernel with a notebook token of the admin.
    assert notebook.detail.startswith("7 rows with a notebook token of admin"), notebook.detail
    assert notebook.ms is not None and notebook.ms > 0
    # The server was stopped again, and its notebook token revoked with it.
    deadline = time.monotonic() + 60
    while _live_notebook_tokens(platform.repo):
        assert time.monotonic() < deadline, _live_notebook_tokens(platform.repo)
        time.sleep(0.5)


def test_hub_trusts_only_skydm_tokens_with_the_notebook_scope(platform: Platform) -> None:
    from skydm.services.auth.tokens import TokenStore

    store = TokenStore.for_repo(platform.repo)
    try:
        no_notebook = store.create("bob", ["read:tap"]).token
    finally:
        store.close()
    exchange = f"{platform.url}/hub/skydm/token"
    assert httpx.post(exchange, timeout=30).status_code == 401
    bad = "gt-AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
    assert (
        httpx.post(exchange, headers={"Authorization": f"Bearer {bad}"}, timeout=30).status_code
        == 403
    )
    answer = httpx.post(exchange, headers={"Authorization": f"Bearer {no_notebook}"}, timeout=30)
    assert answer.status_code == 403
    # The login page: a valid login without exec:notebook is told so (no redirect loop) ...
    login = f"{platform.url}/hub/login"
    answer = httpx.get(login, headers={"Authorization": f"Bearer {no_notebook}"}, timeout=30)
    assert answer.status_code == 403 and "exec:notebook" in answer.text
    # ... an unknown token is sent to skydm's login, back to the hub afterwards.
    answer = httpx.get(login, headers={"Authorization": f"Bearer {bad}"}, timeout=30)
    assert answer.status_code == 302
    assert answer.headers["location"].startswith("/login?rd=%2Fhub%2Flogin")
    # The services behind the same URL still need a token.
    assert httpx.get(f"{platform.url}/tap/tables", timeout=30).status_code == 401


#: Runs in the browser: a kernel through the Jupyter server's REST API and one
#: cell over its WebSocket, with the browser's cookies (and JupyterLab's XSRF
#: cookie), as JupyterLab itself does.
RUN_CELL_JS = """
const [base, code, done] = arguments;
(async () => {
  const xsrf = decodeURIComponent((document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || "");
  const started = await fetch(base + "/api/kernels", {
    method: "POST", credentials: "same-origin", body: "{}",
    headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf}});
  if (started.status !== 201) {
    done("ERROR starting a kernel: " + started.status + " " + await started.text()); return;
  }
  const kernel = (await started.json()).id;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(scheme + "//" + location.host + base + "/api/kernels/" + kernel +
                           "/channels");
  const msgId = "cell-" + Date.now();
  let out = "";
  ws.onerror = () => done("ERROR: the kernel's WebSocket failed");
  ws.onopen = () => ws.send(JSON.stringify({
    header: {msg_id: msgId, username: "browser", session: msgId, msg_type: "execute_request",
             version: "5.3"},
    parent_header: {}, metadata: {}, channel: "shell", buffers: [],
    content: {code: code, silent: false, store_history: false, user_expressions: {},
              allow_stdin: false, stop_on_error: true}}));
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (!msg.parent_header || msg.parent_header.msg_id !== msgId) return;
    const kind = msg.header.msg_type;
    if (kind === "stream") out += msg.content.text;
    if (kind === "error") out += "ERROR " + msg.content.ename + ": " + msg.content.evalue;
    if (kind === "status" && msg.content.execution_state === "idle") {
      ws.close();
      fetch(base + "/api/kernels/" + kernel, {method: "DELETE", credentials: "same-origin",
                                              headers: {"X-XSRFToken": xsrf}})
        .finally(() => done(out));
    }
  };
})().catch((e) => done("ERROR " + e));
"""


class Browser(WebDriver):
    """The shared WebDriver client, with scripts."""

    def script(self, js: str, *args: Any) -> Any:
        return self._call(
            "POST", f"{self.session}/execute/sync", {"script": js, "args": list(args)}
        )

    def script_async(self, js: str, *args: Any, timeout: float = 180) -> Any:
        self._call("POST", f"{self.session}/timeouts", {"script": int(timeout * 1000)})
        return self._call(
            "POST", f"{self.session}/execute/async", {"script": js, "args": list(args)}
        )


def _wait(what: str, check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.browser
def test_browser_login_opens_jupyterlab_and_a_cell_queries_tap(platform: Platform) -> None:
    from skydm.platform.notebook import CELL

    chromium = require_executable("chromium", "install Debian package chromium")
    chromedriver = require_executable("chromedriver", "install Debian package chromium-driver")
    browser = Browser(chromium, chromedriver)
    try:
        # The platform's URL → the hub → skydm's login → the identity provider.
        browser.get(f"{platform.url}/")
        _wait("the provider's login page", lambda: browser.url().startswith(platform.idp), 60)
        browser.type("input[name=sub]", "u-2001")
        browser.click("form button[type=submit]")
        # Back with a skydm session; the hub logs alice in from it and starts her JupyterLab.
        lab = f"{platform.url}/user/alice/lab"
        _wait("JupyterLab", lambda: browser.url().startswith(lab))
        _wait(
            "JupyterLab's shell",
            lambda: browser.script("return !!document.querySelector('.jp-LabShell');"),
        )
        cookies = browser._call("GET", f"{browser.session}/cookie")
        assert any(c["name"] == "skydm_session" for c in cookies)
        output = browser.script_async(RUN_CELL_JS, "/user/alice", CELL.format(query=QUERY))
        assert "ERROR" not in output, output
        line = next(x for x in output.splitlines() if x.startswith("SKYDM_CELL "))
        found = json.loads(line.removeprefix("SKYDM_CELL "))
        assert found["rows"] == 7
        assert found["token_type"] == "notebook" and found["username"] == "alice"
        # A subset of alice's scopes: the notebook cannot start notebooks.
        assert set(found["scopes"]) == {"read:tap", "read:image"}
    finally:
        browser.quit()


def test_no_token_is_written_to_the_logs(platform: Platform) -> None:
    """After the check and the browser flow: the hub's and the services' logs hold no token."""
    import re

    logs = [platform.repo / "platform" / name for name in ("hub.log", "serve.log")]
    text = "".join(path.read_text(errors="replace") for path in logs)
    assert "Spawning" in text or "User logged in" in text  # the logs are the ones written
    assert platform.token not in text
    assert not re.search(r"gt-[\w-]{8,}\.[\w-]{8,}", text)


def test_laptop_hub_logs_in_with_a_pasted_token_and_down_stops_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``skydm platform up`` without an identity provider: the hub's form takes a token."""
    import os
    import re

    from skydm.cli.main import main

    repo = tmp_path / "repo"
    make_catalog(repo)
    port = free_port()
    argv = ["platform", "up", "--repo", str(repo), "--port", str(port), "--timeout", "240"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    token, url = out[-1], f"http://127.0.0.1:{port}"
    state = json.loads((repo / "platform" / "state.json").read_text())
    try:
        assert f"notebooks at {url}/hub/" in out[1]
        client = httpx.Client(base_url=url, timeout=60)
        form = client.get("/hub/login?next=%2Fhub%2Fhome")
        assert form.status_code == 200 and 'name="token"' in form.text
        found = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
        assert found is not None
        xsrf = found.group(1)
        refused = client.post("/hub/login", data={"token": "gt-AAAA.BBBB", "_xsrf": xsrf})
        assert refused.status_code == 403 and "does not accept" in refused.text
        # No XSRF token: refused before the token is even looked at.
        assert client.post("/hub/login", data={"token": token}).status_code == 403
        answer = client.post("/hub/login?next=%2Fhub%2Fhome", data={"token": token, "_xsrf": xsrf})
        assert answer.status_code == 302 and answer.headers["location"] == "/hub/home"
        home = client.get("/hub/home")
        assert home.status_code == 200 and "admin" in home.text
    finally:
        assert main(["platform", "down", "--repo", str(repo)]) == 0
    assert "stopped the services and the notebooks" in capsys.readouterr().out
    for pid in (state["pid"], state["hub_pid"]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/hub/api/", timeout=5)
