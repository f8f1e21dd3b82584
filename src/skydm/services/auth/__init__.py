"""Authentication for the skydm services: opaque tokens with scopes, checked on every route.

:mod:`~skydm.services.auth.tokens` makes, verifies, lists and revokes tokens
(stored hashed in the repository's registry database);
:mod:`~skydm.services.auth.gate` checks them on each request;
:mod:`~skydm.services.auth.handlers` is the token API at ``/auth/api/v1``.
"""

from skydm.services.auth.config import AUTH_MODES, AuthConfig
from skydm.services.auth.tokens import (
    SCOPES,
    TOKEN_TYPES,
    InvalidTokenError,
    NewToken,
    TokenInfo,
    TokenStore,
)

__all__ = [
    "AUTH_MODES",
    "SCOPES",
    "TOKEN_TYPES",
    "AuthConfig",
    "InvalidTokenError",
    "NewToken",
    "TokenInfo",
    "TokenStore",
]
