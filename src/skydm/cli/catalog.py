"""``skydm catalog``: load tables into the catalog and list them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``catalog`` command group (load, list, drop, sync-visits)."""
    p = subparsers.add_parser(
        "catalog",
        help="load tables into the catalog (HEALPix-partitioned Parquet) and list them",
        description=(
            "Manage the catalog queried through TAP: tables stored as Parquet under "
            "<repo>/catalog, partitioned and sorted by HEALPix."
        ),
    )
    sub = p.add_subparsers(dest="catalog_command", metavar="SUBCOMMAND")
    load = sub.add_parser(
        "load",
        help="load Parquet, CSV, FITS, ECSV or VOTable tables",
        description=(
            "Load table files into the catalog. A standard table name (Object, Source, "
            "ForcedSource, DiaObject, DiaSource) uses the standard schema: columns are matched "
            "by name, case-insensitively. Any other name makes a table whose columns, units, "
            "UCDs and descriptions come from the file. Several files are loaded one after the "
            "other into the same table. The table is replaced atomically."
        ),
    )
    load.add_argument("files", nargs="+", type=Path, metavar="FILE", help="table files")
    load.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    load.add_argument(
        "--table",
        default=None,
        metavar="NAME",
        help="table name (default: the first file's name without extension)",
    )
    load.add_argument(
        "--ra-col",
        default=None,
        metavar="COL",
        help="right ascension column in degrees (default: guessed: ra, RAJ2000...)",
    )
    load.add_argument(
        "--dec-col",
        default=None,
        metavar="COL",
        help="declination column in degrees (default: guessed: dec, DEJ2000...)",
    )
    load.add_argument("--description", default="", help="table description for TAP_SCHEMA")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_true", help="replace an existing table")
    mode.add_argument("--append", action="store_true", help="add rows to an existing table")
    load.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    load.set_defaults(func=run_load)
    listing = sub.add_parser(
        "list",
        help="list the catalog's tables and row counts",
        description="List the catalog's tables, row counts and columns.",
    )
    listing.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    listing.set_defaults(func=run_list)
    drop = sub.add_parser("drop", help="remove a table", description="Remove a table.")
    drop.add_argument("table", help="table name")
    drop.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    drop.set_defaults(func=run_drop)
    visits = sub.add_parser(
        "sync-visits",
        help="publish the repository's raws as the ObsLocTAP table ivoa.obsplan",
        description=(
            "Write one row per archived raw (times, band, footprint) into the IVOA ObsLocTAP "
            "table ivoa.obsplan, if the raws changed. `skydm serve` does this on start-up."
        ),
    )
    visits.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    visits.set_defaults(func=run_sync_visits)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def catalog_dir(repo: Path | None) -> Path:
    """``<repo>/catalog`` for ``--repo`` or the configured repository, which must exist."""
    from skydm.cli._checks import existing_repository

    return existing_repository(repo) / "catalog"


def _table_name(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".parquet", ".pq", ".csv", ".fits", ".fit", ".ecsv", ".vot", ".xml"):
        name = name.removesuffix(ext)
    return name


def run_load(args: argparse.Namespace) -> int:
    """Handle ``skydm catalog load``."""
    from skydm.catalog import load_table
    from skydm.errors import ConflictError
    from skydm.progress import Progress

    root = catalog_dir(args.repo)
    table = args.table or _table_name(args.files[0])
    for i, path in enumerate(args.files):
        mode: Literal["create", "replace", "append"] = (
            "append" if args.append or i > 0 else "replace" if args.replace else "create"
        )
        bar = Progress(f"loading {path.name} into {table}", quiet=args.quiet)
        try:
            info = load_table(
                root,
                table,
                path,
                ra_col=args.ra_col,
                dec_col=args.dec_col,
                mode=mode,
                description=args.description,
                progress=bar,
            )
        except ConflictError as exc:
            raise ConflictError(
                f"table {table} already exists in {root.parent}; pass --replace to replace it "
                "or --append to add the rows"
            ) from exc
        print(
            f"{info.name}: {info.rows} rows after loading {path} ({len(info.files)} "
            f"HEALPix partitions at order {info.partition_order})"
        )
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Handle ``skydm catalog list``."""
    from skydm.catalog import list_tables

    root = catalog_dir(args.repo)
    tables = list_tables(root)
    if not tables:
        print(f"no tables in {root}; load some with `skydm catalog load`")
        return 0
    width = max(len(t.definition.qualified) for t in tables)
    for t in tables:
        pos = f"{t.definition.ra_col}/{t.definition.dec_col}" if t.definition.ra_col else "-"
        print(
            f"{t.definition.qualified:<{width}}  {t.rows:>12} rows  "
            f"{len(t.definition.columns):>4} columns  position {pos}"
        )
    return 0


def run_drop(args: argparse.Namespace) -> int:
    """Handle ``skydm catalog drop``."""
    from skydm.catalog import drop_table

    drop_table(catalog_dir(args.repo), args.table)
    print(f"dropped {args.table}")
    return 0


def run_sync_visits(args: argparse.Namespace) -> int:
    """Handle ``skydm catalog sync-visits``."""
    from skydm.catalog.obsloc import sync_visits
    from skydm.cli._checks import existing_repository
    from skydm.errors import UserError

    repo = existing_repository(args.repo)
    info = sync_visits(repo)
    if info is None:
        raise UserError(f"{repo} is not a skydm repository (no registry); give --repo")
    print(f"ivoa.obsplan: {info.rows} observations from the raws of {repo}")
    return 0
