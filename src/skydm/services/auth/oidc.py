"""Browser login through an OpenID Connect provider (CILogon-like): code flow with PKCE.

``GET /login?rd=/path`` sends the browser to the provider with a fresh
``state``, ``nonce`` and PKCE challenge; ``GET /login/callback`` accepts the
answer only for a state this server issued, not yet used, and bound to the
same browser (a cookie), exchanges the code with the PKCE verifier, checks
the ID token's signature (the provider's JWKS), issuer, audience, expiry and
nonce, maps the user's groups to scopes, and sets a session cookie holding
a ``session`` token.  ``rd`` must be a path on this server: open redirects
are refused.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from skydm.errors import BadValueError, UserError, require_extra
from skydm.services.auth.tokens import SCOPES, NewToken, TokenStore

#: Cookie holding the session token (HttpOnly, SameSite=Lax).
SESSION_COOKIE = "skydm_session"
#: Cookie binding a login in progress to the browser that started it.
LOGIN_COOKIE = "skydm_login"
#: How long a started login may take, seconds.
LOGIN_TTL = 600.0


class LoginError(UserError):
    """A login callback that cannot be trusted (answered with 403)."""

    status_code = 403


def parse_group_scopes(text: str) -> dict[str, frozenset[str]]:
    """``"group=scope,scope;group2=scope"`` as a mapping, scopes validated."""
    mapping: dict[str, frozenset[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        group, sep, scopes = part.partition("=")
        names = frozenset(s.strip() for s in scopes.split(",") if s.strip())
        if not sep or not group.strip() or not names or not names <= set(SCOPES):
            raise BadValueError(
                "SKYDM_OIDC_GROUP_SCOPES",
                part,
                f"write group=scope,scope;group2=scope with scopes from {', '.join(SCOPES)}",
            )
        mapping[group.strip()] = names
    return mapping


@dataclass(frozen=True)
class OidcConfig:
    """The identity provider and how its users become skydm users.

    Attributes
    ----------
    issuer : str
        The provider's issuer URL (its discovery document is under it).
    client_id, client_secret : str
        This service's registration at the provider.
    redirect_url : str
        This service's ``/login/callback`` as the browser reaches it.
    group_scopes : dict
        Group name → scopes its members get.
    username_claim : str
        ID-token claim holding the user name (``sub`` when it is missing).
    groups_claim : str
        ID-token claim listing groups (CILogon: ``isMemberOf``; names or
        ``{"name": ...}`` objects).
    session_lifetime : float
        Seconds a login lasts.
    """

    issuer: str
    client_id: str
    client_secret: str
    redirect_url: str
    group_scopes: dict[str, frozenset[str]] = field(default_factory=dict)
    username_claim: str = "preferred_username"
    groups_claim: str = "isMemberOf"
    session_lifetime: float = 86400.0

    @classmethod
    def from_env(cls, public_url: str) -> OidcConfig:
        """From ``SKYDM_OIDC_*`` variables; the callback is ``<public_url>/login/callback``."""
        needed = ("SKYDM_OIDC_ISSUER", "SKYDM_OIDC_CLIENT_ID", "SKYDM_OIDC_CLIENT_SECRET")
        missing = [n for n in needed if not os.environ.get(n)]
        if missing:
            raise BadValueError(
                "--auth", "oidc", f"set {', '.join(missing)} (the provider and this client)"
            )
        public = os.environ.get("SKYDM_PUBLIC_URL") or public_url
        if not public:
            raise BadValueError("--auth", "oidc", "set SKYDM_PUBLIC_URL (where browsers reach us)")
        return cls(
            issuer=os.environ["SKYDM_OIDC_ISSUER"].rstrip("/"),
            client_id=os.environ["SKYDM_OIDC_CLIENT_ID"],
            client_secret=os.environ["SKYDM_OIDC_CLIENT_SECRET"],
            redirect_url=public.rstrip("/") + "/login/callback",
            group_scopes=parse_group_scopes(os.environ.get("SKYDM_OIDC_GROUP_SCOPES", "")),
            username_claim=os.environ.get("SKYDM_OIDC_USERNAME_CLAIM", "preferred_username"),
            groups_claim=os.environ.get("SKYDM_OIDC_GROUPS_CLAIM", "isMemberOf"),
        )


def safe_return_path(rd: str | None) -> str:
    """``rd`` if it is a path on this server, else an error (no open redirects)."""
    if rd is None or rd == "":
        return "/"
    if not rd.startswith("/") or rd.startswith("//") or "\\" in rd or any(ord(c) < 32 for c in rd):
        raise BadValueError("rd", rd, "give a path on this server, such as /tap/tables")
    return rd


@dataclass
class _Pending:
    nonce: str
    verifier: str
    return_to: str
    started: float


class OidcLogin:
    """Logins in progress and their completion into session tokens."""

    def __init__(self, config: OidcConfig, store: TokenStore) -> None:
        require_extra("joserfc", "oidc")  # at start-up, not at the first login
        self.config = config
        self.store = store
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._discovery: dict[str, Any] | None = None

    async def discovery(self) -> dict[str, Any]:
        """The provider's OpenID configuration (fetched once)."""
        import httpx

        if self._discovery is None:
            url = f"{self.config.issuer}/.well-known/openid-configuration"
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(url)
            if response.status_code != 200:
                raise UserError(f"{url}: the identity provider answered {response.status_code}")
            self._discovery = response.json()
        return self._discovery

    async def start(self, rd: str | None) -> tuple[str, str]:
        """Begin a login: the provider URL to send the browser to, and the state."""
        return_to = safe_return_path(rd)
        meta = await self.discovery()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        now = time.time()
        with self._lock:
            for key in [k for k, p in self._pending.items() if now - p.started > LOGIN_TTL]:
                del self._pending[key]
            self._pending[state] = _Pending(nonce, verifier, return_to, now)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": self.config.redirect_url,
                "scope": "openid profile email",
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{meta['authorization_endpoint']}?{query}", state

    async def finish(
        self, *, code: str | None, state: str | None, browser_state: str | None
    ) -> tuple[NewToken, str]:
        """Complete a login: a new session token and the path to return to.

        Raises
        ------
        LoginError
            For an unknown, replayed, expired or other browser's state, a
            refused code exchange, or an ID token that fails any check.
        """
        import httpx
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        if not code or not state or browser_state != state:
            raise LoginError("login refused: the callback does not match a login of this browser")
        with self._lock:
            pending = self._pending.pop(state, None)  # one use only: a replay finds nothing
        if pending is None or time.time() - pending.started > LOGIN_TTL:
            raise LoginError("login refused: unknown or already used state; log in again")
        meta = await self.discovery()
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                meta["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": self.config.redirect_url,
                    "code_verifier": pending.verifier,
                },
                auth=(self.config.client_id, self.config.client_secret),
            )
            if answer.status_code != 200:
                raise LoginError(
                    f"login refused: the provider rejected the code ({answer.status_code})"
                )
            keys = (await client.get(meta["jwks_uri"])).json()
        id_token = answer.json().get("id_token")
        if not isinstance(id_token, str):
            raise LoginError("login refused: the provider sent no ID token")
        try:
            token = jwt.decode(id_token, KeySet.import_key_set(keys))
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.config.issuer},
                aud={"essential": True, "value": self.config.client_id},
                exp={"essential": True},
                nonce={"essential": True, "value": pending.nonce},
            ).validate(token.claims)
        except (JoseError, ValueError) as exc:
            raise LoginError(f"login refused: the ID token failed its checks ({exc})") from None
        claims = token.claims
        username = str(claims.get(self.config.username_claim) or claims["sub"])
        scopes = self.scopes_for(claims.get(self.config.groups_claim))
        if not scopes:
            raise LoginError(
                f"login refused: {username} is in no group that grants access "
                "(see SKYDM_OIDC_GROUP_SCOPES)"
            )
        new = self.store.create(
            username,
            scopes,
            token_type="session",
            lifetime=self.config.session_lifetime,
        )
        return new, pending.return_to

    def scopes_for(self, groups: Any) -> frozenset[str]:
        """The scopes the groups of an ID token grant."""
        names: set[str] = set()
        for group in groups if isinstance(groups, list) else []:
            name = group.get("name") if isinstance(group, dict) else group
            if isinstance(name, str):
                names.add(name)
        granted: set[str] = set()
        for name in names:
            granted |= self.config.group_scopes.get(name, frozenset())
        return frozenset(granted)
