"""Browser login against a real OpenID provider on 127.0.0.1 (PyPI ``oidc-provider-mock``).

The test plays the browser: /login → the provider's authorization form →
log in → back to /login/callback → a session cookie that opens the services.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from skydm.errors import BadValueError
from skydm.repo import Repository
from skydm.services.app import create_app
from skydm.services.auth.config import AuthConfig
from skydm.services.auth.oidc import SESSION_COOKIE, OidcConfig, parse_group_scopes
from skydm.services.auth.tokens import TokenStore
from skydm_testing import require_tool

from .conftest import make_catalog

try:
    import oidc_provider_mock as oidc_mock
except ImportError:  # pragma: no cover - the test extra installs it
    oidc_mock = None


@pytest.fixture(scope="module", autouse=True)
def _need_provider() -> None:
    require_tool("oidc-provider-mock", oidc_mock is not None, "pip install skydm[test]")


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    users = [
        oidc_mock.User(
            sub="u-1001",
            claims={"preferred_username": "alice", "isMemberOf": [{"name": "g-users"}]},
        ),
        oidc_mock.User(sub="u-1002", claims={"preferred_username": "mallory", "isMemberOf": []}),
    ]
    with oidc_mock.run_server_in_thread(port=0, require_nonce=True, user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oidcrepo")
    Repository.open(path).close()
    make_catalog(path)
    return path


@pytest.fixture
def client(repo: Path, provider: str) -> Iterator[TestClient]:
    config = OidcConfig(
        issuer=provider,
        client_id="skydm",
        client_secret="not-a-real-secret",
        redirect_url="http://testserver/login/callback",
        group_scopes=parse_group_scopes("g-users=read:tap,read:image"),
    )
    app = create_app(repo, workers=1, auth=AuthConfig(mode="oidc"), oidc=config)
    with TestClient(app) as c:
        yield c


def _authorize(provider_url: str, sub: str) -> str:
    """Log in at the provider as ``sub``; the callback URL it redirects to."""
    form = httpx.get(provider_url)
    assert form.status_code == 200 and "sub" in form.text
    answer = httpx.post(provider_url, data={"sub": sub})
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def _start(client: TestClient, rd: str = "/tap/tables") -> str:
    start = client.get("/login", params={"rd": rd}, follow_redirects=False)
    assert start.status_code == 302
    target = start.headers["location"]
    query = parse_qs(urlsplit(target).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    return target


def _callback_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_login_gives_a_session_that_opens_the_services(client: TestClient) -> None:
    assert client.get("/tap/tables").status_code == 401
    callback = _callback_path(_authorize(_start(client), "u-1001"))
    back = client.get(callback, follow_redirects=False)
    assert back.status_code == 302, back.text
    assert back.headers["location"] == "/tap/tables"
    assert (
        SESSION_COOKIE in back.headers["set-cookie"]
        and "httponly" in back.headers["set-cookie"].lower()
    )
    assert client.get("/tap/tables").status_code == 200
    info = client.get("/auth/api/v1/token-info").json()
    assert info["username"] == "alice" and info["token_type"] == "session"
    assert set(info["scopes"]) == {"read:tap", "read:image"}
    # The same callback again (a replay) is refused.
    assert client.get(callback, follow_redirects=False).status_code == 403
    # Logging out revokes the session.
    assert client.get("/logout").status_code == 200
    client.cookies.clear()
    store: TokenStore = client.app.state.token_store  # type: ignore[attr-defined]
    assert all(t.username != "alice" or t.token_type != "session" for t in store.tokens())


def test_forged_and_crossed_callbacks_are_refused(client: TestClient) -> None:
    first = _start(client)
    code = parse_qs(urlsplit(_authorize(first, "u-1001")).query)["code"][0]
    # A state this server never issued.
    forged = client.get(f"/login/callback?code={code}&state=made-up", follow_redirects=False)
    assert forged.status_code == 403
    # A second login in the same browser: its state with the first login's code
    # has the wrong nonce (and the wrong PKCE verifier).
    second = _start(client)
    state2 = parse_qs(urlsplit(second).query)["state"][0]
    crossed = client.get(f"/login/callback?code={code}&state={state2}", follow_redirects=False)
    assert crossed.status_code == 403
    assert SESSION_COOKIE not in crossed.headers.get("set-cookie", "")
    # Another browser (no login cookie) cannot complete someone's login.
    third = _start(client)
    callback = _callback_path(_authorize(third, "u-1001"))
    client.cookies.clear()
    assert client.get(callback, follow_redirects=False).status_code == 403


def test_user_without_a_granting_group_is_refused(client: TestClient) -> None:
    callback = _callback_path(_authorize(_start(client), "u-1002"))
    answer = client.get(callback, follow_redirects=False)
    assert answer.status_code == 403 and "mallory" in answer.text


@pytest.mark.parametrize(
    "rd", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"]
)
def test_open_redirects_are_refused(client: TestClient, rd: str) -> None:
    answer = client.get("/login", params={"rd": rd}, follow_redirects=False)
    assert answer.status_code == 400 and "rd" in answer.text


@pytest.mark.parametrize("text", ["g-users", "g=write:all", "=read:tap"])
def test_bad_group_mapping(text: str) -> None:
    with pytest.raises(BadValueError, match="SKYDM_OIDC_GROUP_SCOPES"):
        parse_group_scopes(text)
