"""Tokens: hashed at rest, a copied row is useless, delegation narrows, revocation cascades."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from skydm.cli.main import main
from skydm.errors import BadValueError
from skydm.repo import Repository
from skydm.services.auth.tokens import InvalidTokenError, TokenStore, split_token


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    Repository.open(tmp_path / "repo").close()
    return tmp_path / "repo"


def test_secret_is_not_stored_and_a_copied_row_is_not_a_token(repo: Path) -> None:
    store = TokenStore.for_repo(repo)
    new = store.create("alice", ["read:tap"])
    key, secret = split_token(new.token)
    assert store.verify(new.token).username == "alice"
    db = sqlite3.connect(repo / "registry.sqlite3")
    row = db.execute("SELECT * FROM auth_tokens WHERE key = ?", (key,)).fetchone()
    assert row is not None
    assert not any(secret in str(value) for value in row)
    secret_hash = db.execute(
        "SELECT secret_hash FROM auth_tokens WHERE key = ?", (key,)
    ).fetchone()[0]
    # The stored hash presented as the secret is refused.
    with pytest.raises(InvalidTokenError):
        store.verify(f"gt-{key}.{secret_hash}")
    # The row copied under another key does not make the secret valid there.
    db.execute(
        "INSERT INTO auth_tokens SELECT 'copiedkey', secret_hash, username, token_type, scopes, "
        "name, parent, created, expires, revoked FROM auth_tokens WHERE key = ?",
        (key,),
    )
    db.commit()
    with pytest.raises(InvalidTokenError):
        store.verify(f"gt-copiedkey.{secret}")
    # A wrong secret, an unknown key and malformed tokens are refused alike.
    # The wrong secret differs in its last character whatever that is (a fixed
    # "x" equalled the secret one time in 64).
    wrong = secret[:-1] + ("y" if secret.endswith("x") else "x")
    for bad in (f"gt-{key}.{wrong}", f"gt-nosuchkey.{secret}", "gt-abc", "abc.def", ""):
        with pytest.raises(InvalidTokenError) as info:
            store.verify(bad)
        assert secret not in str(info.value)
    assert secret not in repr(new)
    store.close()


def test_expiry(repo: Path) -> None:
    store = TokenStore.for_repo(repo)
    new = store.create("alice", ["read:tap"], lifetime=60)
    assert store.verify(new.token).expires is not None
    with pytest.raises(InvalidTokenError):
        store.verify(new.token, now=time.time() + 61)
    store.close()


def test_delegated_tokens_carry_a_subset_and_die_with_their_parent(repo: Path) -> None:
    store = TokenStore.for_repo(repo)
    parent = store.create("alice", ["read:tap", "exec:notebook"], lifetime=3600)
    with pytest.raises(BadValueError, match="read:image"):
        store.create("alice", ["read:image"], token_type="notebook", parent=parent.info)
    with pytest.raises(BadValueError, match="parent"):
        store.create("alice", ["read:tap"], token_type="internal")
    child = store.create(
        "alice", ["read:tap"], token_type="notebook", lifetime=10**6, parent=parent.info
    )
    assert child.info.expires is not None and parent.info.expires is not None
    assert child.info.expires <= parent.info.expires
    grandchild = store.create("alice", ["read:tap"], token_type="internal", parent=child.info)
    assert store.verify(grandchild.token).scopes == {"read:tap"}
    revoked = store.revoke(parent.info.key)
    assert set(revoked) == {parent.info.key, child.info.key, grandchild.info.key}
    for token in (parent.token, child.token, grandchild.token):
        with pytest.raises(InvalidTokenError):
            store.verify(token)
    store.close()


def test_cli_create_list_revoke(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "create", "--repo", str(repo), "--user", "bob"]
    assert main([*argv, "--scope", "read:tap", "--scope", "read:image"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    store = TokenStore.for_repo(repo)
    assert store.verify(token).scopes == {"read:tap", "read:image"}
    key, secret = split_token(token)

    assert main(["token", "list", "--repo", str(repo)]) == 0
    listing = capsys.readouterr().out
    assert key in listing and secret not in listing

    assert main(["token", "revoke", "--repo", str(repo), key]) == 0
    capsys.readouterr()
    with pytest.raises(InvalidTokenError):
        store.verify(token)

    assert main(["token", "create", "--repo", str(repo), "--admin"]) == 0
    admin = capsys.readouterr().out.strip().splitlines()[-1]
    assert store.verify(admin).has("admin:token")
    store.close()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--user", "bob", "--scope", "write:everything"], "write:everything"),
        (["--user", "bob"], "--scope"),
        (["--scope", "read:tap"], "--user"),
        (["--user", "bad name!", "--scope", "read:tap"], "bad name!"),
    ],
)
def test_cli_bad_input_is_one_line(
    repo: Path, capsys: pytest.CaptureFixture[str], args: list[str], names: str
) -> None:
    assert main(["token", "create", "--repo", str(repo), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names in err[0]


def test_cli_revoke_unknown_key(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "revoke", "--repo", str(repo), "nosuchkey"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuchkey" in err[0] and "skydm token list" in err[0]


def test_cli_missing_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "create", "--repo", str(tmp_path / "nope"), "--admin"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert not (tmp_path / "nope").exists()


def test_tokens_in_a_postgresql_registry(tmp_path: Path, postgres_url: Any) -> None:
    """The same store in a repository whose registry is PostgreSQL."""
    import sqlalchemy as sa

    from skydm.services.auth.tokens import tokens_table

    url = postgres_url("authtokens")
    Repository.open(tmp_path / "pgrepo", registry_url=url).close()
    store = TokenStore.for_repo(tmp_path / "pgrepo")
    assert store.url == url
    parent = store.create("alice", ["read:tap", "read:image"])
    child = store.create("alice", ["read:image"], token_type="notebook", parent=parent.info)
    assert store.verify(child.token).scopes == {"read:image"}
    key, secret = split_token(parent.token)
    with store.engine.begin() as conn:
        row = conn.execute(sa.select(tokens_table).where(tokens_table.c.key == key)).one()
        assert secret not in str(tuple(row))
        conn.execute(tokens_table.insert().values({**row._asdict(), "key": "copiedkey"}))
    with pytest.raises(InvalidTokenError):
        store.verify(f"gt-copiedkey.{secret}")
    assert [t.username for t in store.tokens("alice")] == ["alice"] * 3
    assert set(store.revoke(key)) == {key, child.info.key}
    with pytest.raises(InvalidTokenError):
        store.verify(child.token)
    store.close()
