"""``skydm token``: create, list and revoke the tokens that ``--auth tokens`` accepts."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``token`` command group."""
    parser = subparsers.add_parser(
        "token",
        help="create, list and revoke access tokens for the services",
        description=(
            "Tokens (gt-<key>.<secret>) are stored hashed in the repository's registry "
            "database; `skydm serve --auth tokens` accepts them.  Whoever can write the "
            "repository can make tokens: that is the admin bootstrap on a laptop "
            "(`skydm token create --admin`)."
        ),
    )
    sub = parser.add_subparsers(dest="token_command", metavar="{create,list,revoke}")
    sub.required = True
    repo_help = "repository directory (default: $SKYDM_REPO or ./skydm-repo)"

    create = sub.add_parser(
        "create",
        help="create a token and print it (alone, on the last line)",
        description="Create a token; it is printed once, alone on the last line, and "
        "cannot be shown again.",
    )
    create.add_argument("--repo", type=Path, default=None, help=repo_help)
    create.add_argument("--user", default=None, help="whose token it is (admin with --admin)")
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope it carries (repeatable): read:tap, read:image, exec:notebook, admin:token",
    )
    create.add_argument(
        "--admin", action="store_true", help="an administrator's token with every scope"
    )
    create.add_argument("--name", default=None, help="a label for the token")
    create.add_argument(
        "--lifetime",
        type=float,
        default=None,
        help="seconds until it expires (default: never)",
    )
    create.set_defaults(func=_create)

    listing = sub.add_parser("list", help="list live tokens (keys, never secrets)")
    listing.add_argument("--repo", type=Path, default=None, help=repo_help)
    listing.add_argument("--user", default=None, help="only this user's tokens")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    listing.set_defaults(func=_list)

    revoke = sub.add_parser(
        "revoke", help="revoke a token by its key (and every token delegated from it)"
    )
    revoke.add_argument("--repo", type=Path, default=None, help=repo_help)
    revoke.add_argument("key", help="the token's key (gt-KEY.secret, or as `list` shows it)")
    revoke.set_defaults(func=_revoke)


def _store(repo: Path | None) -> Any:
    from skydm.cli._checks import existing_repository
    from skydm.services.auth.tokens import TokenStore

    # Tokens live in an existing repository's registry: a mistyped --repo must
    # not become a new, empty repository holding an admin token.
    return TokenStore.for_repo(existing_repository(repo))


def _create(args: argparse.Namespace) -> int:
    from skydm.cli._checks import existing_repository
    from skydm.errors import BadValueError
    from skydm.services.auth.tokens import ADMIN_USER, SCOPES

    existing_repository(args.repo)  # the repository first, as every --repo command does
    if args.admin:
        user, scopes = args.user or ADMIN_USER, list(SCOPES)
    else:
        if args.user is None:
            raise BadValueError("--user", "(none)", "give --user NAME, or --admin")
        if not args.scope:
            raise BadValueError("--scope", "(none)", f"give one or more of {', '.join(SCOPES)}")
        user, scopes = args.user, args.scope
    store = _store(args.repo)
    try:
        new = store.create(user, scopes, name=args.name, lifetime=args.lifetime)
    finally:
        store.close()
    info = new.info
    print(f"token {info.key} for {info.username}, scopes {' '.join(sorted(info.scopes))}")
    print(new.token)
    return 0


def _when(value: float | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _list(args: argparse.Namespace) -> int:
    store = _store(args.repo)
    try:
        tokens = store.tokens(args.user, include_revoked=args.all)
    finally:
        store.close()
    print("key\tuser\ttype\tscopes\tcreated\texpires\trevoked\tname")
    for t in tokens:
        print(
            f"{t.key}\t{t.username}\t{t.token_type}\t{','.join(sorted(t.scopes))}\t"
            f"{_when(t.created)}\t{_when(t.expires)}\t{_when(t.revoked)}\t{t.name or ''}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    key = args.key
    if key.startswith("gt-"):
        key = key[3:].split(".", 1)[0]
    store = _store(args.repo)
    try:
        revoked = store.revoke(key)
    finally:
        store.close()
    print(f"revoked {', '.join(revoked)}")
    return 0
