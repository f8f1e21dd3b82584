"""The laptop JupyterHub of ``skydm platform up``: its configuration file and proxy.

One URL serves everything, as the cluster's Ingress does
(``deploy/kubernetes/ingress.yaml``): configurable-http-proxy sends the
services' paths (from the auth gate's rules, so a new service is not
forgotten) to ``skydm serve`` and everything else to the hub. The browser's
skydm session cookie is then visible to the hub, which is what lets a user
log in once.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from skydm.errors import UserError

#: The proxy's npm package and command.
CHP = "configurable-http-proxy"


def find_proxy() -> str:
    """The ``configurable-http-proxy`` executable.

    Looked for in ``$SKYDM_CHP``, on ``PATH``, then in ``node_modules/.bin``
    of the working directory and of skydm's source checkout.

    Raises
    ------
    UserError
        When it is nowhere (the message says how to install it).
    """
    explicit = os.environ.get("SKYDM_CHP")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise UserError(f"SKYDM_CHP={explicit} is not an executable file; fix or unset it")
        return explicit
    found = shutil.which(CHP)
    if found:
        return found
    checkout = Path(__file__).resolve().parents[3]
    for root in (Path.cwd(), checkout):
        candidate = root / "node_modules" / ".bin" / CHP
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise UserError(
        f"{CHP} (the notebooks' proxy) is not installed: run `npm install -g {CHP}` "
        "(or `npm install` it in skydm's checkout), or start without notebooks (--no-notebooks)"
    )


def service_routes() -> list[str]:
    """Path prefixes the proxy sends to the services: every one the auth gate knows."""
    from skydm.services.auth.gate import PUBLIC_PATHS, RULES

    prefixes = {prefix.rstrip("/") for prefix, _ in RULES} | set(PUBLIC_PATHS)
    # Keep the shortest of nested prefixes (/tap covers /tap/availability).
    kept = sorted(p for p in prefixes if not any(p.startswith(q + "/") for q in prefixes))
    return [p + "/" for p in kept]


@dataclass(frozen=True)
class LocalHubSettings:
    """Where the laptop hub's pieces listen and keep their files.

    Attributes
    ----------
    public_port : int
        The proxy's port on 127.0.0.1: the platform's one URL.
    services_url : str
        Where ``skydm serve`` listens (the proxy and the notebooks go there).
    hub_port, proxy_api_port : int
        The hub's own port and the proxy's REST API, on 127.0.0.1.
    state_dir : Path
        The hub's database, cookie secret and users' homes (``home/<user>``).
    proxy : str
        The ``configurable-http-proxy`` executable.
    browser_login : bool
        Whether browsers are sent to skydm's OIDC login (``/login``); else
        the hub asks for a token in a form.
    """

    public_port: int
    services_url: str
    hub_port: int
    proxy_api_port: int
    state_dir: Path
    proxy: str
    browser_login: bool

    @property
    def public_url(self) -> str:
        """The platform's URL."""
        return f"http://127.0.0.1:{self.public_port}"


def render_config(settings: LocalHubSettings) -> str:
    """The text of ``jupyterhub_config.py`` for ``settings``.

    Secrets are not in it: JupyterHub reads the auth-state key from
    ``JUPYTERHUB_CRYPT_KEY`` and the proxy's token from ``CONFIGPROXY_AUTH_TOKEN``.
    """
    target = settings.services_url
    routes = {prefix: target for prefix in service_routes()}
    home = str(settings.state_dir / "home" / "{username}")
    lines = [
        "# Written by `skydm platform up`; rewritten at each start.",
        "c = get_config()  # noqa: F821",
        f"c.JupyterHub.bind_url = {settings.public_url + '/'!r}",
        f"c.JupyterHub.hub_bind_url = {f'http://127.0.0.1:{settings.hub_port}'!r}",
        f"c.JupyterHub.db_url = {'sqlite:///' + str(settings.state_dir / 'jupyterhub.sqlite')!r}",
        "c.JupyterHub.cookie_secret_file = "
        f"{str(settings.state_dir / 'jupyterhub_cookie_secret')!r}",
        "c.JupyterHub.authenticator_class = 'skydm.platform.hub.SkydmAuthenticator'",
        "c.JupyterHub.spawner_class = 'skydm.platform.hub.SkydmLocalSpawner'",
        "c.JupyterHub.cleanup_servers = True",
        f"c.ConfigurableHTTPProxy.command = [{settings.proxy!r}]",
        f"c.ConfigurableHTTPProxy.api_url = {f'http://127.0.0.1:{settings.proxy_api_port}'!r}",
        f"c.Proxy.extra_routes = {routes!r}",
        f"c.SkydmAuthenticator.services_url = {target!r}",
        f"c.SkydmAuthenticator.browser_login_url = {'/login' if settings.browser_login else ''!r}",
        f"c.SkydmLocalSpawner.home_dir_template = {home!r}",
        "c.SkydmLocalSpawner.default_url = '/lab'",
        # A loaded laptop: JupyterLab can take a while to start.
        "c.Spawner.start_timeout = 120",
        "c.Spawner.http_timeout = 120",
    ]
    return "\n".join(lines) + "\n"
