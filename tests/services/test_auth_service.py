"""Services with ``--auth tokens``: routes closed, scopes, revocation, per-user jobs, limits."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from skydm.repo import Repository
from skydm.services.app import SkydmApp, create_app
from skydm.services.auth.config import AuthConfig
from skydm.services.auth.gate import DEFAULT_SCOPE, PUBLIC_PATHS, required_scope
from skydm.services.auth.tokens import TokenStore

from .conftest import LONG_QUERY, make_catalog

CONE = (
    "SELECT objectId FROM Object WHERE "
    "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 10.1, 19.9, 0.05)) = 1"
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("authrepo")
    Repository.open(path).close()
    make_catalog(path)
    return path


@pytest.fixture(scope="module")
def tokens(repo: Path) -> dict[str, str]:
    store = TokenStore.for_repo(repo)
    made = {
        "alice": store.create("alice", ["read:tap", "read:image"]).token,
        "bob": store.create("bob", ["read:tap"]).token,
        "images": store.create("carol", ["read:image"]).token,
        "admin": store.create("admin", ["admin:token", "read:tap"]).token,
    }
    store.close()
    return made


def _app(repo: Path, **auth: Any) -> SkydmApp:
    return create_app(repo, workers=1, auth=AuthConfig(mode="tokens", **auth))


@pytest.fixture(scope="module")
def client(repo: Path, tokens: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(_app(repo, rate_limit=0, max_user_jobs=1)) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def app_routes(app: SkydmApp) -> list[tuple[str, str]]:
    """Every (method, path) the application routes, included routers unfolded."""

    def walk(routes: Any) -> Iterator[Any]:
        for route in routes:
            if hasattr(route, "effective_route_contexts"):
                yield from walk(route.effective_route_contexts())
            elif hasattr(route, "routes"):
                yield from walk(route.routes)
            else:
                yield route

    found = []
    for route in walk(app.routes):
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                found.append((method, route.path))
    return found


def test_every_route_needs_a_token(client: TestClient) -> None:
    assert isinstance(client.app, SkydmApp)
    routes = app_routes(client.app)
    assert len(routes) > 40  # TAP, UWS, images and auth all enumerated
    paths = {p for _, p in routes}
    # The VOSI resources are public; /login... exist only with --auth oidc.
    assert {"/tap/availability", "/tap/capabilities"} <= PUBLIC_PATHS & paths
    assert PUBLIC_PATHS - paths == {"/login", "/login/callback", "/logout"}
    for method, path in routes:
        url = re.sub(r"\{[^}]+\}", "x", path)
        answer = client.request(method, url)
        if path in PUBLIC_PATHS:
            assert answer.status_code == 200, (method, path)
            continue
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        # A path no rule names falls to the admin scope: closed by default.
        assert required_scope(path) != DEFAULT_SCOPE or path.startswith("/auth/api/v1/admin")
    # An unknown path and a malformed header are refused before routing, too.
    assert client.get("/no/such/route").status_code == 401
    assert client.get("/tap/tables", headers={"Authorization": "Token x"}).status_code == 401


def test_scopes(client: TestClient, tokens: dict[str, str]) -> None:
    cone = {"LANG": "ADQL", "QUERY": CONE}
    # The fast /tap/sync path (url-encoded POST and GET) checks the token like every route.
    assert client.post("/tap/sync", data=cone, headers=_bearer(tokens["bob"])).status_code == 200
    assert client.get("/tap/sync", params=cone, headers=_bearer(tokens["bob"])).status_code == 200
    for call in (client.post, client.get):
        kwargs = {"data": cone} if call is client.post else {"params": cone}
        answer = call("/tap/sync", headers=_bearer(tokens["images"]), **kwargs)  # type: ignore[operator]
        assert answer.status_code == 403
        assert 'scope="read:tap"' in answer.headers["www-authenticate"]
    # multipart takes the FastAPI route: same rule.
    multipart = client.post(
        "/tap/sync", data=cone, files={"x": ("x", b"")}, headers=_bearer(tokens["images"])
    )
    assert multipart.status_code == 403
    assert client.get("/sia/query", headers=_bearer(tokens["bob"])).status_code == 403
    assert client.get("/sia/query", headers=_bearer(tokens["images"])).status_code != 403
    assert (
        client.get("/auth/api/v1/admin/tokens", headers=_bearer(tokens["bob"])).status_code == 403
    )
    listing = client.get("/auth/api/v1/admin/tokens", headers=_bearer(tokens["admin"]))
    assert listing.status_code == 200
    assert {"alice", "bob"} <= {t["username"] for t in listing.json()}
    # Basic auth with the token as the password (what pyvo users can set).
    basic = client.get("/tap/tables", auth=("x", tokens["bob"]))
    assert basic.status_code == 200


def test_revoked_token_is_refused_within_a_second(client: TestClient, repo: Path) -> None:
    store = TokenStore.for_repo(repo)
    new = store.create("dave", ["read:tap"])
    headers = _bearer(new.token)
    assert client.get("/tap/tables", headers=headers).status_code == 200
    store.revoke(new.info.key)
    start = time.monotonic()
    while client.get("/tap/tables", headers=headers).status_code != 401:
        assert time.monotonic() - start < 1.0, "revocation not effective within 1 s"
        time.sleep(0.02)
    store.close()


def test_revoked_token_is_refused_on_cones_answered_from_memory(
    client: TestClient, repo: Path
) -> None:
    # An empty cone of a known shape is answered on the event loop, from
    # memory: the token gate still sees every such request first.
    empty = {
        "LANG": "ADQL",
        "QUERY": "SELECT objectId FROM Object WHERE "
        "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 200.0, -30.0, 0.01)) = 1",
    }
    store = TokenStore.for_repo(repo)
    new = store.create("erin", ["read:tap"])
    headers = _bearer(new.token)
    for _ in range(2):  # the second is answered from memory
        answer = client.post("/tap/sync", data=empty, headers=headers)
        assert answer.status_code == 200 and b"<TABLEDATA>" not in answer.content
    assert client.post("/tap/sync", data=empty).status_code == 401
    store.revoke(new.info.key)
    start = time.monotonic()
    while client.post("/tap/sync", data=empty, headers=headers).status_code != 401:
        assert time.monotonic() - start < 1.0, "revocation not effective within 1 s"
        time.sleep(0.02)
    store.close()


def test_token_api(client: TestClient, tokens: dict[str, str]) -> None:
    alice = _bearer(tokens["alice"])
    info = client.get("/auth/api/v1/token-info", headers=alice).json()
    assert info["username"] == "alice" and "secret" not in str(info)
    made = client.post(
        "/auth/api/v1/tokens",
        json={"scopes": ["read:tap"], "token_type": "notebook"},
        headers=alice,
    )
    assert made.status_code == 201, made.text
    notebook = made.json()["token"]
    assert client.get("/tap/tables", headers=_bearer(notebook)).status_code == 200
    assert client.get("/sia/query", headers=_bearer(notebook)).status_code == 403
    # More scopes than the parent: refused.
    wider = client.post(
        "/auth/api/v1/tokens", json={"scopes": ["admin:token"]}, headers=_bearer(notebook)
    )
    assert wider.status_code == 400
    session = client.post(
        "/auth/api/v1/tokens", json={"scopes": ["read:tap"], "token_type": "session"}, headers=alice
    )
    assert session.status_code == 400 and "token_type" in session.text
    # Bob cannot revoke Alice's token: it does not exist for him.
    key = made.json()["key"]
    assert (
        client.delete(f"/auth/api/v1/tokens/{key}", headers=_bearer(tokens["bob"])).status_code
        == 404
    )
    assert client.delete(f"/auth/api/v1/tokens/{key}", headers=alice).status_code == 204


def test_jobs_belong_to_their_user(client: TestClient, tokens: dict[str, str]) -> None:
    alice, bob = _bearer(tokens["alice"]), _bearer(tokens["bob"])
    created = client.post(
        "/tap/async",
        data={"LANG": "ADQL", "QUERY": CONE, "PHASE": "RUN"},
        headers=alice,
        follow_redirects=False,
    )
    assert created.status_code == 303
    job = created.headers["location"].rsplit("/", 1)[-1]
    assert client.get(f"/tap/async/{job}/owner", headers=alice).text == "alice"
    listing = client.get("/tap/async", headers=alice).text
    assert job in listing
    assert job not in client.get("/tap/async", headers=bob).text
    for method, path, data in (
        ("GET", f"/tap/async/{job}", None),
        ("GET", f"/tap/async/{job}/phase", None),
        ("GET", f"/tap/async/{job}/parameters", None),
        ("GET", f"/tap/async/{job}/results", None),
        ("GET", f"/tap/async/{job}/results/result", None),
        ("POST", f"/tap/async/{job}/phase", {"PHASE": "ABORT"}),
        ("POST", f"/tap/async/{job}", {"ACTION": "DELETE"}),
        ("DELETE", f"/tap/async/{job}", None),
    ):
        answer = client.request(method, path, data=data, headers=bob, follow_redirects=False)
        assert answer.status_code == 404, (method, path, answer.status_code)
    # Alice still has it, and can delete it.
    assert client.get(f"/tap/async/{job}", headers=alice).status_code == 200
    assert (
        client.delete(f"/tap/async/{job}", headers=alice, follow_redirects=False).status_code == 303
    )


def test_concurrent_job_quota(client: TestClient, tokens: dict[str, str]) -> None:
    bob = _bearer(tokens["bob"])
    run = {"LANG": "ADQL", "QUERY": LONG_QUERY, "PHASE": "RUN"}
    first = client.post("/tap/async", data=run, headers=bob, follow_redirects=False)
    assert first.status_code == 303
    job = first.headers["location"].rsplit("/", 1)[-1]
    try:
        second = client.post("/tap/async", data=run, headers=bob, follow_redirects=False)
        assert second.status_code == 429
        assert "quota is 1" in second.text
        # Another user is not held back by Bob's jobs.
        other = client.post(
            "/tap/async",
            data={"LANG": "ADQL", "QUERY": CONE},
            headers=_bearer(tokens["alice"]),
            follow_redirects=False,
        )
        assert other.status_code == 303
    finally:
        client.delete(f"/tap/async/{job}", headers=bob)


def test_rate_limit(repo: Path, tokens: dict[str, str]) -> None:
    with TestClient(_app(repo, rate_limit=5, rate_window=30)) as c:
        headers = _bearer(tokens["bob"])
        for remaining in (4, 3, 2, 1, 0):
            answer = c.get("/tap/tables", headers=headers)
            assert answer.status_code == 200
            assert answer.headers["x-ratelimit-limit"] == "5"
            assert answer.headers["x-ratelimit-remaining"] == str(remaining)
            assert int(answer.headers["x-ratelimit-reset"]) > time.time()
        # The fast path counts too.
        refused = c.post("/tap/sync", data={"LANG": "ADQL", "QUERY": CONE}, headers=headers)
        assert refused.status_code == 429
        assert 0 < int(refused.headers["retry-after"]) <= 30
        # Limits are per user.
        assert c.get("/tap/tables", headers=_bearer(tokens["alice"])).status_code == 200


def test_soda_jobs_belong_to_their_user(client: TestClient, tokens: dict[str, str]) -> None:
    alice, carol = _bearer(tokens["alice"]), _bearer(tokens["images"])
    created = client.post(
        "/soda/async",
        data={"ID": "ivo://skydm/calexp?skysim/g/5/0", "CIRCLE": "10 20 1e-3"},
        headers=alice,
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    job = created.headers["location"].rsplit("/", 1)[-1]
    assert job in client.get("/soda/async", headers=alice).text
    assert job not in client.get("/soda/async", headers=carol).text
    assert client.get(f"/soda/async/{job}/owner", headers=alice).text == "alice"
    for method, path, data in (
        ("GET", f"/soda/async/{job}", None),
        ("GET", f"/soda/async/{job}/phase", None),
        ("GET", f"/soda/async/{job}/owner", None),
        ("GET", f"/soda/async/{job}/results/result", None),
        ("POST", f"/soda/async/{job}/phase", {"PHASE": "RUN"}),
        ("POST", f"/soda/async/{job}", {"ACTION": "DELETE"}),
        ("DELETE", f"/soda/async/{job}", None),
    ):
        answer = client.request(method, path, data=data, headers=carol, follow_redirects=False)
        assert answer.status_code == 404, (method, path, answer.status_code)
    assert client.get(f"/soda/async/{job}/phase", headers=alice).text == "PENDING"
    deleted = client.delete(f"/soda/async/{job}", headers=alice, follow_redirects=False)
    assert deleted.status_code == 303


def test_result_size_quota(repo: Path, tokens: dict[str, str]) -> None:
    alice = _bearer(tokens["alice"])
    run = {"LANG": "ADQL", "QUERY": CONE, "PHASE": "RUN"}
    with TestClient(_app(repo, rate_limit=0, max_user_result_bytes=1)) as c:
        first = c.post("/tap/async", data=run, headers=alice, follow_redirects=False)
        job = first.headers["location"].rsplit("/", 1)[-1]
        deadline = time.monotonic() + 60
        while (phase := c.get(f"/tap/async/{job}/phase", headers=alice).text) != "COMPLETED":
            assert phase in ("QUEUED", "EXECUTING") and time.monotonic() < deadline, phase
            time.sleep(0.1)
        refused = c.post("/tap/async", data=run, headers=alice, follow_redirects=False)
        assert refused.status_code == 429 and "delete jobs" in refused.text
        # Bob's results are his own account.
        bob = c.post("/tap/async", data=run, headers=_bearer(tokens["bob"]), follow_redirects=False)
        assert bob.status_code == 303
        c.delete(f"/tap/async/{job}", headers=alice)
        again = c.post("/tap/async", data=run, headers=alice, follow_redirects=False)
        assert again.status_code == 303
