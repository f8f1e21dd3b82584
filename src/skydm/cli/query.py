"""``skydm query``: run one ADQL query on a repository or a TAP service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from skydm.errors import BadValueError

FORMATS = ("votable", "votable/td", "csv", "parquet")


def register(subparsers: Any) -> None:
    """Add the ``query`` command."""
    parser = subparsers.add_parser(
        "query",
        help="run an ADQL query on a repository's catalog or a TAP service",
        description=(
            "Run one ADQL query and write the result (to standard output or --out). With "
            "--repo (default) the query runs locally through the catalog engine; with --url "
            "it is sent to a TAP service. --async runs it as a UWS job and reports progress "
            "while waiting; Ctrl-C aborts the job."
        ),
    )
    parser.add_argument("adql", help='the ADQL query, e.g. "SELECT TOP 10 * FROM Object"')
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    where.add_argument(
        "--url", default=None, help="TAP service URL, e.g. http://127.0.0.1:8000/tap"
    )
    parser.add_argument(
        "--async", dest="run_async", action="store_true", help="run as an async (UWS) job"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help=(
            "output format (votable = VOTable BINARY2); default: csv on a terminal, "
            "votable to a file or a pipe"
        ),
    )
    parser.add_argument(
        "--maxrec", type=int, default=None, help="row limit (default: the service's default limit)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the result to this file (default: standard output)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--parents", action="store_true", help="create missing parent directories of --out"
    )
    parser.add_argument(
        "--engine", default=None, help="catalog engine URL for --repo (default: DuckDB)"
    )
    parser.set_defaults(func=_query)


def _query(args: argparse.Namespace) -> int:
    from skydm.cli._checks import check_output, existing_repository
    from skydm.progress import plural
    from skydm.services.client import run_local, run_remote

    if args.maxrec is not None and args.maxrec < 0:
        raise BadValueError("--maxrec", args.maxrec, "give a non-negative row count")
    if args.out is not None:
        check_output(args.out, parents=args.parents)
    sink = args.out if args.out is not None else sys.stdout.buffer
    if args.format is None:
        # Base64 VOTable is unreadable on a terminal; files and pipes get VOTable.
        args.format = "csv" if args.out is None and sys.stdout.isatty() else "votable"
    if args.url is not None:
        outcome = run_remote(
            args.url,
            args.adql,
            output=args.format,
            maxrec=args.maxrec,
            run_async=args.run_async,
            sink=sink,
            quiet=args.quiet,
        )
    else:
        from skydm.cli.serve import engine_url

        repo = existing_repository(args.repo)
        outcome = run_local(
            repo,
            args.adql,
            output=args.format,
            maxrec=args.maxrec,
            run_async=args.run_async,
            sink=sink,
            engine_url=engine_url(args.engine),
            quiet=args.quiet,
        )
    note = " (truncated at MAXREC: more rows exist)" if outcome.overflow else ""
    where = f" to {args.out}" if args.out is not None else ""
    rows = plural(outcome.rows, "row") if outcome.rows is not None else "result"
    print(f"skydm query: {rows} written{where}{note}", file=sys.stderr)
    return 0
