"""``skydm transfer``: copy new raws from one repository (site) to another."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skydm.archive.transfer import TransferConfig
    from skydm.repo import Repository


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``transfer`` command."""
    p = subparsers.add_parser(
        "transfer",
        help="copy new raws between repositories (summit -> base -> archive), checksummed",
        description=(
            "Copy every raw of --from that --to lacks, in parallel streams and checksummed "
            "parts, each file checked end to end before --to registers it (with ingest's "
            "semantics and a record of the transfer). Files already there are skipped, so a "
            "rerun after an interruption sends only what is missing, down to the parts of a "
            "file cut off midway (a part journal in --to/.transfer/). Either repository may "
            "keep its files in S3. --watch keeps copying new raws as they land."
        ),
    )
    p.add_argument("--from", dest="source", type=Path, required=True, help="source repository")
    p.add_argument("--to", dest="dest", type=Path, required=True, help="destination repository")
    p.add_argument(
        "--to-datastore",
        default=None,
        metavar="s3://BUCKET/PREFIX",
        help="when --to is created: keep its files in this S3 bucket (endpoint from "
        "AWS_ENDPOINT_URL, credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
    )
    p.add_argument("--where", default=None, help='data ID constraint, e.g. "visit > 100"')
    p.add_argument("--type", default="raw", help="dataset type to copy (default raw)")
    p.add_argument("--streams", type=int, default=4, help="files in flight at once (default 4)")
    p.add_argument("--part-mb", type=float, default=8.0, help="part size in MB (default 8)")
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep copying new datasets (Ctrl-C ends: files in flight are finished, "
        "the rest wait for the next run; a second Ctrl-C stops at once)",
    )
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between looks with --watch (2)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm transfer``."""
    from skydm.archive.transfer import TransferConfig
    from skydm.errors import BadValueError
    from skydm.repo import Repository

    if not args.interval > 0:
        raise BadValueError("--interval", args.interval, "a positive number of seconds")
    config = TransferConfig(
        streams=args.streams, part_bytes=int(args.part_mb * 1e6), dataset_type=args.type,
        where=args.where,
    )  # fmt: skip
    with (
        Repository.open(args.source, create=False) as source,
        Repository.open(args.dest, datastore_url=args.to_datastore) as dest,
    ):
        if not args.watch:
            return _round(args, source, dest, config, None)
        return _watch(args, source, dest, config)


def _watch(
    args: argparse.Namespace, source: Repository, dest: Repository, config: TransferConfig
) -> int:
    """Transfer every ``--interval`` seconds until Ctrl-C (exit status 130).

    Ctrl-C sets an event instead of raising :class:`KeyboardInterrupt` at
    whatever statement runs (inside a registry write, a part journal, the
    thread pool's shutdown): files in flight finish and are registered, files
    not started wait for the next run.  A second Ctrl-C raises at once, as
    usual; what it cuts off is resumed from the part journal.
    """
    stop = threading.Event()

    def on_interrupt(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        while not stop.is_set():
            # Failures are printed; the next round tries them again.
            _round(args, source, dest, config, stop)
            stop.wait(args.interval)
    except KeyboardInterrupt:  # the second Ctrl-C; completed files are registered
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
    return 130


def _round(
    args: argparse.Namespace,
    source: Repository,
    dest: Repository,
    config: TransferConfig,
    stop: threading.Event | None,
) -> int:
    """One pass over ``source``; the exit status of a single transfer."""
    from skydm.archive.transfer import FileTransfer, transfer
    from skydm.progress import Progress

    bar = Progress("transfer", None, quiet=args.quiet)

    def tick(outcome: FileTransfer) -> None:
        bar.advance(note=f"{outcome.status} {outcome.ref.data_id}")

    report = transfer(source, dest, config, progress=tick, stop=stop)
    for outcome in report.results:
        if outcome.status != "present":
            print(outcome.line())
    # With --watch a round that found nothing new says nothing: one line
    # every few seconds would bury the rounds that did.
    if stop is None or any(r.status != "present" for r in report.results):
        print(f"transfer {args.source} -> {args.dest}: {report.summary()}", flush=True)
    return 0 if report.ok else 1
