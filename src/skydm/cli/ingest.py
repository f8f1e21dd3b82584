"""``skydm ingest``: archive raw FITS files losslessly in a repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Library parameter -> the option that sets it, for error messages (cli/main.py).
OPTIONS = {"instrument": "instrument", "codec": "codec"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``ingest`` command."""
    p = subparsers.add_parser(
        "ingest",
        help="ingest raw FITS files into a repository (lossless compression)",
        description=(
            "Ingest raw FITS files (any BITPIX, single- or multi-extension) into a data "
            "repository, losslessly compressed (FITS tiled compression: Rice for integers, "
            "gzip without quantization for floats), each proven to restore byte for byte "
            "before it is registered. One line per file: ingested, present, replaced, "
            "repaired or error. The exit status is non-zero if any file failed."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", type=Path, help="raw FITS files")
    p.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo); created if needed",
    )
    p.add_argument(
        "--datastore",
        default=None,
        metavar="s3://BUCKET/PREFIX",
        help="when creating the repository: keep its files in this S3 bucket (endpoint from "
        "AWS_ENDPOINT_URL, credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); "
        "the bucket is created if missing",
    )
    p.add_argument(
        "--instrument",
        default=None,
        metavar="NAME",
        help="instrument definition for every file (generic, skysim, or one registered with "
        "`skydm instrument register`); default: the first whose match cards fit the header",
    )
    p.add_argument(
        "--instrument-file",
        default=None,
        metavar="CAMERA.yaml",
        type=Path,
        help="instrument definition (YAML, see docs/archive.md) for every file",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace a different raw already archived with the same data ID",
    )
    p.add_argument(
        "--codec",
        default="RICE_1",
        choices=["RICE_1", "GZIP_1", "GZIP_2", "PLIO_1"],
        help="codec for integer pixels (default RICE_1; floats always use lossless GZIP_2)",
    )
    p.add_argument(
        "--notify",
        default=None,
        metavar="BOOTSTRAP",
        help="send a raw-arrival notification per raw ingested to Kafka at BOOTSTRAP "
        "(for `skydm prompt serve`)",
    )
    p.add_argument(
        "--notify-topic",
        default="skydm-raw-arrivals",
        metavar="TOPIC",
        help="topic of the notifications (skydm-raw-arrivals)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm ingest``."""
    from skydm.archive import FileResult, InstrumentDefinition, ingest_files, load_instrument
    from skydm.archive.instrument_file import repository_instruments
    from skydm.archive.instruments import get_instrument
    from skydm.cli._checks import new_or_existing_repository
    from skydm.config import Settings
    from skydm.errors import UsageError
    from skydm.progress import Progress
    from skydm.repo import Repository

    settings = Settings.from_env()
    instrument: str | InstrumentDefinition | None = args.instrument
    if args.instrument_file is not None:
        if args.instrument is not None:
            raise UsageError("give --instrument or --instrument-file, not both")
        instrument = load_instrument(args.instrument_file)  # refused before any work
    root = new_or_existing_repository(args.repo)
    if isinstance(instrument, str):
        get_instrument(instrument, repository_instruments(root))  # a bad name: no work
    repo = Repository.open(
        root, create=True, registry_url=settings.registry_url, datastore_url=args.datastore
    )

    notifier = None
    if args.notify:
        from skydm.prompt.events import EventProducer

        notifier = EventProducer(args.notify)
        notifier.ensure_topics([args.notify_topic])

    def show(res: FileResult) -> None:
        stream = sys.stderr if res.status == "error" else sys.stdout
        print(res.line(), file=stream, flush=True)
        if notifier is not None and res.ok and res.data_id is not None:
            from skydm.prompt.events import arrival_of

            # Sent once the raw is registered: a worker told of it can read it.
            notifier.send(args.notify_topic, [arrival_of(res.data_id, path=str(res.path))])

    with repo:
        report = ingest_files(
            repo,
            args.files,
            instrument=instrument,
            replace=args.replace,
            codec=args.codec,
            progress=Progress("ingest", len(args.files), quiet=args.quiet),
            on_result=show,
        )
    if notifier is not None:
        notifier.close()
    print(f"{report.summary()} in {report.seconds:.1f} s (repository {repo.root})")
    return 0 if report.ok else 1
