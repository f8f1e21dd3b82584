"""``skydm verify``: scrub a repository and name every damaged or missing file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``verify`` command."""
    p = subparsers.add_parser(
        "verify",
        help="check every stored file against its recorded checksum",
        description=(
            "Scrub a data repository: read every registered file and compare it with the "
            "size and SHA-256 recorded when it was written. Every missing or damaged file "
            "is named, one per line, and the exit status is non-zero. Files no dataset "
            "refers to (left by an interrupted write) are not damage; they are counted, "
            "and --clean deletes them."
        ),
    )
    p.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    p.add_argument(
        "--clean",
        action="store_true",
        help="delete unregistered leftovers of interrupted writes (no other writer may run)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm verify``."""
    from skydm.cli._checks import existing_repository
    from skydm.config import Settings
    from skydm.progress import Progress
    from skydm.repo import DatasetRef, Repository

    settings = Settings.from_env()
    root = existing_repository(args.repo)
    with Repository.open(root, create=False, registry_url=settings.registry_url) as repo:
        refs = repo.query()
        bar = Progress("verify", len(refs), quiet=args.quiet)

        def tick(ref: DatasetRef) -> None:
            bar.advance(note=ref.path.name)

        problems = repo.verify(progress=tick)
        for problem in problems:
            print(str(problem), file=sys.stderr)
        leftovers = repo.clean_unregistered() if args.clean else repo.unregistered()
        if leftovers:
            verb = "deleted" if args.clean else "found"
            hint = "" if args.clean else "; `skydm verify --clean` deletes them"
            print(
                f"{verb} {len(leftovers)} unregistered file(s) left by interrupted or "
                f"replaced writes (not damage){hint}"
            )
        status = "clean" if not problems else f"{len(problems)} damaged or missing"
        print(f"{len(refs)} datasets checked in {repo.root}: {status}")
    return 1 if problems else 0
