"""Opaque tokens with scopes, stored hashed in the registry database (Gafaelfawr in miniature).

A token reads ``gt-<key>.<secret>``.  The key names the database row; the
row keeps only ``SHA-256(key "." secret)``, so a copied row (or a row copied
under another key) is not a usable token, and the secret is compared in
constant time (:func:`hmac.compare_digest`).  Tokens are never logged: only
their keys appear in listings.

Token types follow Gafaelfawr: ``session`` (a browser login), ``user``
(created by a user or an administrator), and the delegated ``notebook`` and
``internal`` tokens, whose scopes are a subset of their parent's and which
die with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from skydm.errors import BadValueError, UserError

#: Every scope a token may carry.
SCOPES: dict[str, str] = {
    "read:tap": "run TAP queries and manage one's own TAP jobs",
    "read:image": "search, link and cut images (SIA, DataLink, SODA, stamps, HiPS)",
    "exec:notebook": "use a notebook server",
    "admin:token": "create, list and revoke anyone's tokens",
}
#: Token types; the delegated ones carry a subset of their parent's scopes.
TOKEN_TYPES = ("session", "user", "notebook", "internal")
DELEGATED_TYPES = ("notebook", "internal")
#: The user the laptop bootstrap (``skydm token create --admin``) makes tokens for.
ADMIN_USER = "admin"

_PREFIX = "gt-"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")

metadata = sa.MetaData()

tokens_table = sa.Table(
    "auth_tokens",
    metadata,
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("token_type", sa.String(16), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("name", sa.String(128), nullable=True),
    sa.Column("parent", sa.String(32), nullable=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=True),
    sa.Column("revoked", sa.Float, nullable=True),
    sa.Index("ix_auth_tokens_user", "username"),
    sa.Index("ix_auth_tokens_parent", "parent"),
)


@dataclass(frozen=True)
class TokenInfo:
    """What a token stands for (never its secret).

    Attributes
    ----------
    key : str
        The token's public identifier (the part before the dot).
    username : str
        Whose token it is.
    token_type : str
        ``session``, ``user``, ``notebook`` or ``internal``.
    scopes : frozenset of str
        What it allows.
    created, expires, revoked : float or None
        Unix times; ``expires`` is ``None`` for a token that does not expire.
    name : str or None
        The user's label for it.
    parent : str or None
        The key of the token it was delegated from.
    """

    key: str
    username: str
    token_type: str
    scopes: frozenset[str]
    created: float
    expires: float | None = None
    revoked: float | None = None
    name: str | None = None
    parent: str | None = None

    def has(self, scope: str) -> bool:
        """Whether the token carries ``scope`` (``admin:*`` means any admin scope)."""
        if scope.endswith(":*"):
            stem = scope[:-1]
            return any(s.startswith(stem) for s in self.scopes)
        return scope in self.scopes

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (the secret is not part of it)."""
        return {
            "key": self.key,
            "username": self.username,
            "token_type": self.token_type,
            "scopes": sorted(self.scopes),
            "name": self.name,
            "parent": self.parent,
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class NewToken:
    """A token just created: the only moment its secret exists outside the caller.

    Attributes
    ----------
    token : str
        The whole token, ``gt-<key>.<secret>``: show it once, store it nowhere.
    info : TokenInfo
        What it stands for.
    """

    token: str
    info: TokenInfo

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"NewToken(key={self.info.key!r}, username={self.info.username!r})"


class InvalidTokenError(UserError):
    """The token is malformed, unknown, expired or revoked (answered with 401)."""

    status_code = 401


def _hash(key: str, secret: str) -> str:
    # The key is part of what is hashed: a row copied under another key
    # matches no secret.
    return hashlib.sha256(f"{key}.{secret}".encode()).hexdigest()


def split_token(token: str) -> tuple[str, str]:
    """The key and secret of ``gt-<key>.<secret>``.

    Raises
    ------
    InvalidTokenError
        When ``token`` does not have that form (the message does not repeat it).
    """
    if not token.startswith(_PREFIX) or token.count(".") != 1:
        raise InvalidTokenError("the token is malformed: skydm tokens read gt-<key>.<secret>")
    key, secret = token[len(_PREFIX) :].split(".")
    if not (0 < len(key) <= 32 and 0 < len(secret) <= 64):
        raise InvalidTokenError("the token is malformed: skydm tokens read gt-<key>.<secret>")
    return key, secret


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """``scopes`` validated against :data:`SCOPES`."""
    result = frozenset(scopes)
    for scope in result:
        if scope not in SCOPES:
            raise BadValueError("--scope", scope, f"scopes are {', '.join(SCOPES)}")
    return result


def check_username(username: str) -> str:
    """``username`` if it is 1 to 64 characters of letters, digits and ``._-@``."""
    if not (0 < len(username) <= 64 and set(username) <= _NAME_CHARS):
        raise BadValueError("--user", username, "1 to 64 letters, digits, '.', '_', '-' or '@'")
    return username


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        key=row.key,
        username=row.username,
        token_type=row.token_type,
        scopes=frozenset(json.loads(row.scopes)),
        created=row.created,
        expires=row.expires,
        revoked=row.revoked,
        name=row.name,
        parent=row.parent,
    )


class TokenStore:
    """Tokens in an SQLAlchemy database: the repository's registry (SQLite or PostgreSQL).

    Parameters
    ----------
    url : str
        SQLAlchemy URL of the database; the ``auth_tokens`` table is created
        if missing.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **kwargs)
        metadata.create_all(self.engine)

    @classmethod
    def for_repo(cls, repo_dir: Path | str) -> TokenStore:
        """The token store in the registry database of the repository at ``repo_dir``."""
        from skydm.repo import Repository

        with Repository.open(repo_dir, create=False) as repo:
            url = repo.registry.url  # type: ignore[attr-defined]
        return cls(url)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def create(
        self,
        username: str,
        scopes: Iterable[str],
        *,
        token_type: str = "user",
        name: str | None = None,
        lifetime: float | None = None,
        parent: TokenInfo | None = None,
    ) -> NewToken:
        """Create a token.

        Parameters
        ----------
        username : str
            Whose token it is.
        scopes : iterable of str
            What it allows (names from :data:`SCOPES`).
        token_type : str
            One of :data:`TOKEN_TYPES`; ``notebook`` and ``internal`` need ``parent``.
        name : str, optional
            A label.
        lifetime : float, optional
            Seconds until it expires (``None``: never, unless the parent does).
        parent : TokenInfo, optional
            The token it is delegated from: its scopes must include these and
            the new token expires no later than it.

        Raises
        ------
        BadValueError
            For an unknown scope or type, a bad user name or lifetime, or
            scopes the parent does not have.
        """
        username = check_username(username)
        wanted = check_scopes(scopes)
        if token_type not in TOKEN_TYPES:
            raise BadValueError("token type", token_type, f"types are {', '.join(TOKEN_TYPES)}")
        if lifetime is not None and lifetime <= 0:
            raise BadValueError("lifetime", lifetime, "give a positive number of seconds")
        now = time.time()
        expires = now + lifetime if lifetime is not None else None
        if token_type in DELEGATED_TYPES:
            if parent is None:
                raise BadValueError(
                    "token type", token_type, "a delegated token needs a parent token"
                )
            if not wanted <= parent.scopes:
                extra = ", ".join(sorted(wanted - parent.scopes))
                raise BadValueError(
                    "scope", extra, "a delegated token carries only scopes its parent has"
                )
            if parent.username != username:
                raise BadValueError("user", username, f"the parent token is {parent.username}'s")
            if parent.expires is not None:
                expires = parent.expires if expires is None else min(expires, parent.expires)
        key, secret = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
        row = {
            "key": key,
            "secret_hash": _hash(key, secret),
            "username": username,
            "token_type": token_type,
            "scopes": json.dumps(sorted(wanted)),
            "name": name,
            "parent": parent.key if parent is not None else None,
            "created": now,
            "expires": expires,
            "revoked": None,
        }
        with self.engine.begin() as conn:
            conn.execute(tokens_table.insert().values(**row))
        info = TokenInfo(
            key=key,
            username=username,
            token_type=token_type,
            scopes=wanted,
            created=now,
            expires=expires,
            name=name,
            parent=parent.key if parent is not None else None,
        )
        return NewToken(f"{_PREFIX}{key}.{secret}", info)

    def verify(self, token: str, *, now: float | None = None) -> TokenInfo:
        """What a presented token stands for.

        Raises
        ------
        InvalidTokenError
            When it is malformed, unknown, has the wrong secret, has expired
            or was revoked (one message for all: nothing is revealed).
        """
        key, secret = split_token(token)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tokens_table).where(tokens_table.c.key == key)).first()
        presented = _hash(key, secret)
        stored = row.secret_hash if row is not None else "0" * 64
        # Compared in constant time, also when the key is unknown.
        good = hmac.compare_digest(presented, stored)
        now = time.time() if now is None else now
        if (
            row is None
            or not good
            or row.revoked is not None
            or (row.expires is not None and row.expires <= now)
        ):
            raise InvalidTokenError(
                "the token is unknown, expired or revoked: get a new one "
                "(skydm token create, or log in again)"
            )
        return _info(row)

    def get(self, key: str) -> TokenInfo | None:
        """The token with this key, revoked or not, or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tokens_table).where(tokens_table.c.key == key)).first()
        return _info(row) if row is not None else None

    def tokens(
        self, username: str | None = None, *, include_revoked: bool = False
    ) -> list[TokenInfo]:
        """Tokens (of ``username``, when given), oldest first."""
        query = sa.select(tokens_table).order_by(tokens_table.c.created)
        if username is not None:
            query = query.where(tokens_table.c.username == username)
        if not include_revoked:
            query = query.where(tokens_table.c.revoked.is_(None))
        with self.engine.connect() as conn:
            return [_info(r) for r in conn.execute(query)]

    def revoke(self, key: str) -> list[str]:
        """Revoke a token and every token delegated from it; the keys revoked.

        Raises
        ------
        BadValueError
            When no live token has this key.
        """
        now = time.time()
        revoked: list[str] = []
        with self.engine.begin() as conn:
            todo: Sequence[str] = [key]
            while todo:
                result = conn.execute(
                    tokens_table.update()
                    .where(tokens_table.c.key.in_(todo), tokens_table.c.revoked.is_(None))
                    .values(revoked=now)
                    .returning(tokens_table.c.key)
                )
                done = [r.key for r in result]
                revoked.extend(done)
                todo = (
                    [
                        r.key
                        for r in conn.execute(
                            sa.select(tokens_table.c.key).where(
                                tokens_table.c.parent.in_(done),
                                tokens_table.c.revoked.is_(None),
                            )
                        )
                    ]
                    if done
                    else []
                )
        if key not in revoked:
            raise BadValueError("token", key, "no live token has this key: see `skydm token list`")
        return revoked
