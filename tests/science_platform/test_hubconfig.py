"""The laptop hub's configuration: routes, and a file JupyterHub loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from skydm.services.auth.gate import PUBLIC_PATHS, RULES

jupyterhub = pytest.importorskip("jupyterhub", reason="pip install skydm[platform]")


def test_every_service_path_is_routed_to_the_services() -> None:
    from skydm.platform.hubconfig import service_routes

    routes = service_routes()
    for path in [p for p, _ in RULES] + sorted(PUBLIC_PATHS) + ["/tap/sync", "/login/callback"]:
        assert any(path.rstrip("/") + "/" == r or path.startswith(r) for r in routes), path
    # The hub keeps its own prefixes (and the default route).
    assert not any(r.startswith(("/hub", "/user")) for r in routes)
    assert "/" not in routes


def test_rendered_config_loads_in_jupyterhub(tmp_path: Path) -> None:
    from traitlets.config import Config

    from skydm.platform.hub import SkydmAuthenticator, SkydmLocalSpawner
    from skydm.platform.hubconfig import LocalHubSettings, render_config

    settings = LocalHubSettings(
        public_port=18000,
        services_url="http://127.0.0.1:18001",
        hub_port=18002,
        proxy_api_port=18003,
        state_dir=tmp_path,
        proxy="/opt/chp",
        browser_login=True,
    )
    config = Config()
    exec(
        compile(render_config(settings), "jupyterhub_config.py", "exec"),
        {"get_config": lambda: config},
    )
    assert config.JupyterHub.bind_url == "http://127.0.0.1:18000/"
    assert config.Proxy.extra_routes["/tap/"] == "http://127.0.0.1:18001"
    authenticator = SkydmAuthenticator(config=config)
    assert authenticator.services_url == "http://127.0.0.1:18001"
    assert authenticator.browser_login_url == "/login"
    assert authenticator.enable_auth_state
    # Scopes decide, not JupyterHub's allow lists.
    assert authenticator.check_allowed("x", {"auth_state": {"scopes": ["exec:notebook"]}})
    assert not authenticator.check_allowed("x", {"auth_state": {"scopes": ["read:tap"]}})
    assert SkydmLocalSpawner(config=config).home_dir_template == str(
        tmp_path / "home" / "{username}"
    )
