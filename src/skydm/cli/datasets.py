"""``skydm datasets``: list a repository's datasets (as ``butler query-datasets`` does)."""

from __future__ import annotations

import argparse
from pathlib import Path

COLUMNS = ("type", "instrument", "detector", "visit", "band", "skycell", "size", "checksum", "path")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``datasets`` command."""
    p = subparsers.add_parser(
        "datasets",
        help="list the datasets of a repository",
        description=(
            "List the datasets registered in a repository, one row each: type, data ID "
            "(instrument, detector, visit, band, skycell), size in bytes, the start of the "
            "SHA-256 checksum and the file's path relative to the repository. --type and "
            "--where select, e.g. --where \"band = 'r' AND visit >= 10\"."
        ),
    )
    p.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    p.add_argument("--type", default=None, metavar="T", help="dataset type (raw, calexp, ...)")
    p.add_argument(
        "--where",
        default=None,
        metavar="EXPR",
        help="data-ID expression over instrument, detector, visit, band, skycell",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm datasets``: print a table, then a count line."""
    from skydm.archive.retrieve import select_datasets
    from skydm.config import Settings
    from skydm.repo import Repository
    from skydm.repo.where import parse_where

    settings = Settings.from_env()
    where = parse_where(args.where)  # a bad expression is refused before the repository opens
    root = args.repo if args.repo is not None else settings.repo
    with Repository.open(root, create=False, registry_url=settings.registry_url) as repo:
        refs = select_datasets(repo, dataset_type=args.type, where=where)
        rows = [
            (
                r.dataset_type,
                r.data_id.instrument,
                str(r.data_id.detector),
                str(r.data_id.visit),
                r.data_id.band,
                r.data_id.skycell or "-",
                str(r.size),
                r.checksum[:12],
                r.path.relative_to(repo.root).as_posix(),
            )
            for r in refs
        ]
        widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(COLUMNS)]
        print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        total = sum(r.size for r in refs)
        print(f"{len(refs)} dataset(s), {total} bytes, in {repo.root}")
    return 0
