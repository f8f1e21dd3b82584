"""JupyterHub that trusts skydm's login, and gives each notebook a delegated token.

:class:`SkydmAuthenticator` logs a user in to the hub with a skydm token,
checked against skydm's own auth API (``/auth/api/v1/token-info``): the
browser's session cookie (``skydm_session``, set by skydm's OIDC login, so a
user logs in once), a ``Bearer`` header, or a token pasted into a form (the
laptop platform, which has no identity provider). The user needs
``exec:notebook``. The token is kept in the hub's encrypted ``auth_state``.

Before each notebook server starts, :meth:`SkydmAuthenticator.pre_spawn_start`
asks skydm for a ``notebook`` token delegated from the user's token with a
subset of its scopes (:attr:`SkydmAuthenticator.notebook_scopes`) and puts it
in the server's environment as ``SKYDM_TOKEN``, with ``SKYDM_URL``; so
:class:`skydm.client.Client` in the notebook finds both. The token is revoked
when the server stops (its key is kept in the encrypted ``auth_state`` too,
so a hub restarted meanwhile still revokes it), and dies with the user's token.

This works with any spawner: :class:`SkydmLocalSpawner` (a process of the
same Unix user, for laptops) here, KubeSpawner on a cluster
(``deploy/kubernetes/hub-config.yaml``).

:class:`SkydmTokenHandler` (``POST /hub/skydm/token``) exchanges a skydm
token for a short-lived hub API token of the same user, so that programs
(``skydm platform check``) can start servers through the hub's REST API.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any
from urllib.parse import quote

from skydm.errors import require_extra

require_extra("jupyterhub", "platform")

from jupyterhub.apihandlers.base import APIHandler  # noqa: E402
from jupyterhub.auth import Authenticator  # noqa: E402
from jupyterhub.handlers.base import BaseHandler  # noqa: E402
from jupyterhub.spawner import SimpleLocalProcessSpawner  # noqa: E402
from tornado import web  # noqa: E402
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest  # noqa: E402
from traitlets import Float, List, Unicode  # noqa: E402

#: skydm's browser session cookie (``skydm.services.auth.oidc.SESSION_COOKIE``).
SESSION_COOKIE = "skydm_session"
#: The scope a user needs to use the hub.
NOTEBOOK_SCOPE = "exec:notebook"
#: auth_state entry: server name → key of its delegated notebook token (outlives a restart).
NOTEBOOK_KEYS = "notebook_keys"
#: Where the token exchange is, under the hub's prefix (``/hub/``).
TOKEN_EXCHANGE_PATH = "skydm/token"

_FORM = """<!doctype html>
<html><head><title>skydm notebooks: log in</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>skydm notebooks</h1>
<p>Paste a skydm token with the <code>exec:notebook</code> scope (for instance the
administrator's token that <code>skydm platform up</code> printed).</p>
{error}
<form method="post" action="{action}">
{xsrf}
<input type="password" name="token" size="60" autocomplete="off" autofocus>
<button type="submit">Log in</button>
</form></body></html>
"""


def _bearer(handler: web.RequestHandler) -> str | None:
    kind, _, value = handler.request.headers.get("Authorization", "").partition(" ")
    if kind.lower() == "bearer" and value.strip().startswith("gt-"):
        return value.strip()
    return None


class SkydmAuthenticator(Authenticator):  # type: ignore[misc]
    """Log in with a skydm token; give each server a delegated notebook token."""

    services_url = Unicode(
        "http://127.0.0.1:8000",
        config=True,
        help="Root URL at which the hub reaches skydm's services (its auth API).",
    )
    browser_login_url = Unicode(
        "",
        config=True,
        help="skydm's browser login (e.g. /login with `skydm serve --auth oidc` behind the "
        "same host): the hub sends browsers there. Empty: a form asks for a token.",
    )
    notebook_url = Unicode(
        "",
        config=True,
        help="SKYDM_URL in notebooks (default: services_url).",
    )
    notebook_scopes = List(
        Unicode(),
        default_value=["read:tap", "read:image"],
        config=True,
        help="Scopes of the notebook token, those of the user's token that are in this list.",
    )
    request_timeout = Float(10.0, config=True, help="Seconds a request to skydm may take.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The tokens JupyterHub would otherwise keep in plain text: auth_state is encrypted.
        self.enable_auth_state = True
        # (user, server name) → (notebook token key, parent token), to revoke at stop.
        self._notebook_tokens: dict[tuple[str, str], tuple[str, str]] = {}

    # -- skydm's auth API -------------------------------------------------

    async def _call(self, method: str, path: str, token: str, body: Any = None) -> Any:
        request = HTTPRequest(
            self.services_url.rstrip("/") + path,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None,
            request_timeout=self.request_timeout,
        )
        response = await AsyncHTTPClient().fetch(request)
        return json.loads(response.body) if response.body else None

    async def token_info(self, token: str) -> dict[str, Any] | None:
        """What skydm says the token stands for, or ``None`` if it is not valid."""
        try:
            info = await self._call("GET", "/auth/api/v1/token-info", token)
        except HTTPClientError as exc:
            if exc.code in (401, 403):
                return None
            raise
        return info if isinstance(info, dict) else None

    # -- Authenticator ----------------------------------------------------

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> dict[str, Any] | None:
        """The hub user for ``data["token"]``, if skydm accepts the token."""
        token = str(data.get("token") or "")
        if not token.startswith("gt-"):
            return None
        info = await self.token_info(token)
        if info is None:
            return None
        scopes = sorted(info.get("scopes", []))
        return {
            "name": str(info["username"]),
            "auth_state": {"token": token, "scopes": scopes, "key": info.get("key")},
        }

    def check_allowed(self, username: str, authentication: Any = None) -> bool:
        """Only users whose token carries ``exec:notebook`` (the hub's allow list is skydm's)."""
        state = (authentication or {}).get("auth_state") or {}
        return NOTEBOOK_SCOPE in state.get("scopes", [])

    async def refresh_user(self, user: Any, handler: Any = None) -> bool | dict[str, Any]:
        """``False`` (log in again) once skydm no longer accepts the stored token."""
        state = await user.get_auth_state()
        if not state or not state.get("token"):
            return False
        return await self.token_info(state["token"]) is not None

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        """The login page, and the token exchange for programs."""
        return [("/login", SkydmLoginHandler), (f"/{TOKEN_EXCHANGE_PATH}", SkydmTokenHandler)]

    async def pre_spawn_start(self, user: Any, spawner: Any) -> None:
        """Put a notebook token delegated from the user's token, and the URL, in the server's
        environment."""
        state = await user.get_auth_state()
        if not state or not state.get("token"):
            raise web.HTTPError(403, "no skydm token for this user: log in again")
        parent = state["token"]
        scopes = sorted(set(self.notebook_scopes) & set(state.get("scopes", [])))
        answer = await self._call(
            "POST",
            "/auth/api/v1/tokens",
            parent,
            {"scopes": scopes, "token_type": "notebook", "name": f"notebook {spawner.name}"},
        )
        self._notebook_tokens[(user.name, spawner.name)] = (answer["key"], parent)
        # Also in the (encrypted, stored) auth_state: a hub restarted while the
        # server runs has lost the dict above, and must still revoke it at stop.
        keys = dict(state.get(NOTEBOOK_KEYS) or {})
        keys[spawner.name] = answer["key"]
        await user.save_auth_state({**state, NOTEBOOK_KEYS: keys})
        spawner.environment["SKYDM_TOKEN"] = answer["token"]
        spawner.environment["SKYDM_URL"] = self.notebook_url or self.services_url

    async def post_spawn_stop(self, user: Any, spawner: Any) -> None:
        """Revoke the server's notebook token (also after a hub restart: from auth_state)."""
        entry = self._notebook_tokens.pop((user.name, spawner.name), None)
        state = await user.get_auth_state() or {}
        keys = dict(state.get(NOTEBOOK_KEYS) or {})
        stored = keys.pop(spawner.name, None)
        if stored is not None:
            await user.save_auth_state({**state, NOTEBOOK_KEYS: keys})
            if entry is None and state.get("token"):
                entry = (stored, state["token"])
        if entry is None:
            return
        key, parent = entry
        try:
            await self._call("DELETE", f"/auth/api/v1/tokens/{quote(key)}", parent)
        except (HTTPClientError, OSError) as exc:
            # Already gone with its parent, or skydm is down: it still expires with the parent.
            self.log.warning("could not revoke notebook token %s: %s", key, exc)


class SkydmLoginHandler(BaseHandler):  # type: ignore[misc]
    """``/hub/login``: a skydm session (cookie or Bearer) logs in; else skydm's login or a form."""

    def _authenticator(self) -> SkydmAuthenticator:
        return self.authenticator  # type: ignore[no-any-return]

    async def _login_with(self, token: str) -> bool:
        auth = self._authenticator()
        info = await auth.token_info(token)
        if info is None:
            return False
        if NOTEBOOK_SCOPE not in info.get("scopes", []):
            # A valid login without the scope: say so rather than send it round again.
            raise web.HTTPError(
                403, f"your skydm login lacks the {NOTEBOOK_SCOPE} scope that notebooks need"
            )
        user = await self.login_user({"token": token})
        if user is None:
            return False
        self.redirect(self.get_next_url(user))
        return True

    async def get(self) -> None:
        token = _bearer(self) or self.get_cookie(SESSION_COOKIE)
        if token and await self._login_with(token):
            return
        login = self._authenticator().browser_login_url
        if login:
            back = self.request.uri or self.hub.base_url + "login"
            self.redirect(f"{login}?rd={quote(back, safe='')}")
            return
        self._form("")

    async def post(self) -> None:
        token = self.get_body_argument("token", "").strip()
        if token and await self._login_with(token):
            return
        self.set_status(403)
        self._form("<p><strong>skydm does not accept this token.</strong></p>")

    def _form(self, error: str) -> None:
        action = html.escape(self.request.uri or "", quote=True)
        self.finish(_FORM.format(error=error, action=action, xsrf=self.xsrf_form_html()))


class SkydmTokenHandler(APIHandler):  # type: ignore[misc]
    """``POST /hub/skydm/token``: a skydm token (Bearer) for a hub API token of its user.

    Answers ``{"name": user, "token": hub_token}``; the hub token expires after
    an hour and carries the user's own permissions (start, stop and reach
    their servers).
    """

    async def post(self) -> None:
        token = _bearer(self)
        if token is None:
            raise web.HTTPError(401, "send Authorization: Bearer <skydm token>")
        authenticated = await self.authenticator.get_authenticated_user(self, {"token": token})
        if authenticated is None:
            raise web.HTTPError(403, f"skydm refused the token, or it lacks {NOTEBOOK_SCOPE}")
        user = await self.auth_to_user(authenticated)
        api_token = user.new_api_token(note="skydm token exchange", expires_in=3600)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"name": user.name, "token": api_token}))


class SkydmLocalSpawner(SimpleLocalProcessSpawner):  # type: ignore[misc]
    """Notebook servers as processes of the hub's own Unix user (laptops).

    Each user's home is ``home_dir_template`` (set by ``skydm platform up``
    under the repository); JupyterLab opens by default. Like
    ``SimpleLocalProcessSpawner``, there is no isolation between users: for
    one person's machine only.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        default_url: str = getattr(self, "default_url", "")
        if not default_url:
            self.default_url = "/lab"

    def get_args(self) -> list[str]:
        """The server's arguments; ``--allow-root`` where the hub runs as root (containers),
        since the server runs as the same user."""
        args: list[str] = super().get_args()
        if os.geteuid() == 0 and "--allow-root" not in args:
            args.append("--allow-root")
        return args
