"""``skydm instrument``: check instrument definition files and register them in a repository."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``instrument`` command group (``register``, ``list``, ``check``)."""
    p = subparsers.add_parser(
        "instrument",
        help="register camera definitions (YAML) in a repository",
        description=(
            "Instrument definitions are YAML files mapping a camera's header cards to data "
            "IDs and amplifier parameters (docs/archive.md). 'register' validates one and "
            "keeps it in the repository, where later commands (skydm ingest) find it; "
            "'list' shows the definitions a repository knows; 'check' validates a file."
        ),
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    reg = sub.add_parser("register", help="validate a definition and store it in the repository")
    reg.add_argument("file", type=Path, metavar="CAMERA.yaml", help="instrument definition file")
    reg.add_argument("--repo", type=Path, default=None, help="repository (default: $SKYDM_REPO)")
    reg.add_argument("--replace", action="store_true", help="replace a different definition")
    reg.set_defaults(func=run)
    lst = sub.add_parser("list", help="definitions known to a repository (and built in)")
    lst.add_argument("--repo", type=Path, default=None, help="repository (default: $SKYDM_REPO)")
    lst.set_defaults(func=run)
    chk = sub.add_parser("check", help="validate a definition file")
    chk.add_argument("file", type=Path, metavar="CAMERA.yaml", help="instrument definition file")
    chk.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm instrument ACTION``."""
    from skydm.archive import builtin, load_instrument, register_instrument
    from skydm.archive.instrument_file import repository_instruments
    from skydm.archive.instruments import BUILTIN
    from skydm.config import Settings
    from skydm.repo import Repository

    if args.action == "check":
        d = load_instrument(args.file)
        print(f"{args.file}: instrument {d.name!r} is valid ({len(d.amplifiers)} amplifier(s))")
        return 0
    settings = Settings.from_env()
    root = args.repo if args.repo is not None else settings.repo
    if args.action == "register":
        with Repository.open(root, create=False, registry_url=settings.registry_url) as repo:
            d, dest = register_instrument(repo.root, args.file, replace=args.replace)
        print(f"registered instrument {d.name!r} from {args.file} as {dest}")
        return 0
    with Repository.open(root, create=False, registry_url=settings.registry_url) as repo:
        for d in [*repository_instruments(repo.root).values(), *(builtin(n) for n in BUILTIN)]:
            match = ", ".join(f"{k}={'|'.join(v)}" for k, v in d.match.items()) or "fallback"
            print(f"{d.name}  ({match})  {d.source}")
    return 0
