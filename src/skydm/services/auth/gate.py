"""The gate every request passes with auth on: token, scope, rate limit.

It runs as the first thing the application does with a request
(:class:`skydm.services.app.SkydmApp`), before FastAPI's routing and before
the fast TAP ``/sync`` path, so no route can be reached around it.  Paths
are mapped to the scope they need by :data:`RULES`; a path no rule names
needs ``admin:token`` (deny by default), so a route added later without a
rule is closed, not open.
"""

from __future__ import annotations

import base64
import hashlib
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skydm.services.auth.config import AuthConfig
from skydm.services.auth.oidc import SESSION_COOKIE
from skydm.services.auth.tokens import InvalidTokenError, TokenInfo, TokenStore

#: Paths answered without a token: the VOSI resources IVOA clients read
#: before they authenticate (they say whether and how to authenticate).
PUBLIC_PATHS = frozenset(
    {
        "/tap/availability",
        "/tap/capabilities",
        "/sia/availability",
        "/sia/capabilities",
        # The browser login (with --auth oidc): how a token is obtained.
        "/login",
        "/login/callback",
        "/logout",
    }
)

#: (path prefix, scope needed); the first match wins.  ``None``: any valid token.
RULES: tuple[tuple[str, str | None], ...] = (
    ("/tap/", "read:tap"),
    ("/sia/", "read:image"),
    ("/datalink/", "read:image"),
    ("/soda/", "read:image"),
    ("/images/", "read:image"),
    ("/hips/", "read:image"),
    # The portal shows the HiPS and cutouts: it is an image service too.
    ("/portal/", "read:image"),
    ("/auth/api/v1/admin/", "admin:token"),
    ("/auth/api/v1/", None),
    ("/docs", None),
    ("/redoc", None),
    ("/openapi.json", None),
)
#: What a path no rule names needs.
DEFAULT_SCOPE = "admin:token"

#: Where the authenticated user is put in the ASGI scope (``request.state.auth``).
STATE_KEY = "auth"


def required_scope(path: str) -> str | None:
    """The scope ``path`` needs (``None``: any valid token)."""
    if path == "/":
        # The portal's page; a prefix rule for "/" would match every path.
        return "read:image"
    for prefix, scope in RULES:
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return scope
    return DEFAULT_SCOPE


def presented_token(scope: Scope) -> str | None:
    """The token in the ``Authorization`` header (``Bearer <token>``, or HTTP Basic), else
    in the browser's session cookie.

    Basic carries the token as the user name or the password (what pyvo and
    astropy users can set).  Tokens in query strings are not accepted: they
    would end up in access logs.
    """
    cookie: str | None = None
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            cookie = session_cookie(value.decode("latin-1"))
        if name != b"authorization":
            continue
        kind, _, rest = value.decode("latin-1").strip().partition(" ")
        kind = kind.lower()
        if kind == "bearer":
            return rest.strip()
        if kind == "basic":
            try:
                user, _, password = base64.b64decode(rest.strip()).decode().partition(":")
            except ValueError:
                return ""
            return user if user.startswith("gt-") else password
        return ""
    return cookie


def session_cookie(header: str) -> str | None:
    """The session token in a ``Cookie`` header, if there is one."""
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value.strip('"')
    return None


@dataclass
class _Window:
    start: float
    count: int


async def _answer(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _insufficient(scope: str) -> bytes:
    return f'Bearer realm="skydm", error="insufficient_scope", scope="{scope}"'.encode()


class AuthGate:
    """Checks each request's token and scope and counts it against its user's rate limit.

    Parameters
    ----------
    store : TokenStore
        Where tokens are verified.
    config : AuthConfig
        Cache time and limits.
    """

    def __init__(self, store: TokenStore, config: AuthConfig) -> None:
        self.store = store
        self.config = config
        # Verified tokens by SHA-256 of the whole token (the token itself is
        # not kept), each with when it was checked.
        self._cache: dict[bytes, tuple[TokenInfo, float]] = {}
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def authenticate(self, token: str) -> TokenInfo:
        """The token's identity, from the cache when checked less than ``cache_seconds`` ago.

        Raises
        ------
        InvalidTokenError
            When the token is not (or no longer) valid.
        """
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[1] < self.config.cache_seconds:
            info = hit[0]
            if info.expires is None or info.expires > time.time():
                return info
        info = self.store.verify(token)
        if len(self._cache) > 10_000:  # a flood of distinct tokens: start over
            self._cache.clear()
        self._cache[digest] = (info, now)
        return info

    def _count(self, user: str) -> tuple[bool, list[tuple[bytes, bytes]], int]:
        """Count one request of ``user``: whether it is allowed, the headers, the wait."""
        limit, length = self.config.rate_limit, self.config.rate_window
        now = time.time()
        with self._lock:
            window = self._windows.get(user)
            if window is None or now >= window.start + length:
                window = self._windows[user] = _Window(now, 0)
            window.count += 1
            count, reset = window.count, window.start + length
        headers = [
            (b"x-ratelimit-limit", str(limit).encode()),
            (b"x-ratelimit-remaining", str(max(0, limit - count)).encode()),
            (b"x-ratelimit-used", str(min(count, limit)).encode()),
            (b"x-ratelimit-reset", str(math.ceil(reset)).encode()),
            (b"x-ratelimit-resource", b"skydm"),
        ]
        return count <= limit, headers, max(1, math.ceil(reset - now))

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        app: Callable[[Scope, Receive, Send], Awaitable[None]] | ASGIApp,
    ) -> None:
        """Answer 401/403/429 or pass the request on to ``app`` with ``state.auth`` set."""
        path: str = scope["path"]
        if path in PUBLIC_PATHS:
            await app(scope, receive, send)
            return
        token = presented_token(scope)
        if not token:
            await _answer(
                send,
                401,
                "authentication required: send 'Authorization: Bearer <token>' "
                "(make one with `skydm token create`; skydm's clients send $SKYDM_TOKEN)",
                [(b"www-authenticate", b'Bearer realm="skydm"')],
            )
            return
        try:
            info = self.authenticate(token)
        except InvalidTokenError as exc:
            await _answer(
                send,
                401,
                str(exc),
                [(b"www-authenticate", b'Bearer realm="skydm", error="invalid_token"')],
            )
            return
        needed = required_scope(path)
        if needed is not None and not info.has(needed):
            await _answer(
                send,
                403,
                f"this token lacks the scope {needed} that {path} needs: "
                f"create a token with --scope {needed.replace(':*', ':token')}",
                [(b"www-authenticate", _insufficient(needed))],
            )
            return
        headers: list[tuple[bytes, bytes]] = []
        if self.config.rate_limit:
            allowed, headers, wait = self._count(info.username)
            if not allowed:
                await _answer(
                    send,
                    429,
                    f"rate limit of {self.config.rate_limit} requests per "
                    f"{self.config.rate_window:g} s exceeded: retry in {wait} s",
                    [*headers, (b"retry-after", str(wait).encode())],
                )
                return
        scope.setdefault("state", {})[STATE_KEY] = info

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        await app(scope, receive, send_with_headers if headers else send)
