"""One visit's alert production, end to end: the function the pipeline and demo call.

DIA sources -> checks -> association with DIA objects (APDB) -> forced
photometry -> packets (LSST schema, cutouts, 12 months of history) -> the
visit's Avro archive -> the outbox -> Kafka, when a broker is configured.
"""

from __future__ import annotations

import functools
import gc
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from astropy.table import Table

from skydm.alerts.archive import ArchiveWriter, archive_name
from skydm.alerts.cutout import CutoutMaker
from skydm.alerts.outbox import Outbox, OutMessage
from skydm.alerts.packet import (
    AlertValidationError,
    alert_record,
    build_record,
    check_source_values,
)
from skydm.alerts.schema import AlertSchema, load_schema
from skydm.alerts.serialize import WIRE_HEADER_SIZE, PacketEncoder
from skydm.alerts.transport import (
    BrokerUnavailableError,
    KafkaTransport,
    StreamResult,
    stream_outbox,
)
from skydm.ap.apdb import Apdb
from skydm.ap.association import add_forced, add_source, associate, new_object, object_summary
from skydm.ap.forced import forced_photometry, visit_region
from skydm.ap.history import FORCED, SOURCE, EncodedArray, HistoryRecord, window
from skydm.ap.sources import dia_sources_from_table, now_mjd
from skydm.errors import ConflictError
from skydm.image import Exposure
from skydm.progress import Progress

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: A filtered topic: its name and a predicate on ``{"diaSource": ..., "diaObject": ...}``.
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass
class VisitAlerts:
    """What :func:`produce_visit_alerts` did for one visit."""

    visit: int
    detector: int
    schema_version: str
    n_sources: int = 0
    n_alerts: int = 0
    n_new_objects: int = 0
    n_forced: int = 0
    archive: Path | None = None
    queued: int = 0
    rejected: list[AlertValidationError] = field(default_factory=list)
    stream: StreamResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: CPU seconds of the calling thread per step (the APDB transaction, the
    #: archive writer and the Kafka client work in other threads).
    cpu_timings: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self, timings: dict[str, float], cpu: dict[str, float]) -> None:
        self.timings, self.cpu = timings, cpu
        self.t, self.c = time.perf_counter(), time.thread_time()

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.t
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu - self.c
        self.t, self.c = now, cpu


def _history_array(
    kind: str,
    found: EncodedArray | list[HistoryRecord],
    schema: AlertSchema,
    encoder: PacketEncoder,
    full: Mapping[int, dict[str, Any]],
) -> EncodedArray:
    """A history window as array bytes, re-encoding records stored in another schema."""
    if isinstance(found, EncodedArray):
        return found
    schema_id = schema.schema_id
    pieces = [
        blob
        if sid == schema_id
        else encoder.encode_record(kind, build_record(kind, full[rid], schema))
        for rid, _mjd, sid, blob in found
    ]
    return EncodedArray(len(pieces), tuple(pieces))


def _without_cyclic_gc(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func`` with the cyclic garbage collector paused.

    A visit allocates millions of small objects (rows, records, pieces) that
    reference counting frees; the cyclic collector, triggered by the
    allocation count, would meanwhile rescan every live object again and
    again (measured: a third of the time of reading the history).  It runs
    normally again afterwards and collects any cycle left.
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


@_without_cyclic_gc
def produce_visit_alerts(
    sources: Table | Sequence[dict[str, Any]],
    difference: Exposure,
    *,
    apdb: Apdb,
    archive_dir: str | Path,
    science: Exposure | None = None,
    template: Exposure | None = None,
    schema_version: str | None = None,
    cutout_size: int = 30,
    radius_arcsec: float = 1.0,
    history_days: float = 365.0,
    topic: str | None = None,
    filtered_topics: Mapping[str, Predicate] | None = None,
    outbox: Outbox | None = None,
    bootstrap: str | None = None,
    kafka_config: Mapping[str, Any] | None = None,
    partitions: int = 8,
    progress: Progress | None = None,
) -> VisitAlerts:
    """Produce the alerts of one visit (one detector).

    Parameters
    ----------
    sources : Table or sequence of dict
        The DIA source table of ``skydm.diffim`` (converted with
        :func:`skydm.ap.sources.dia_sources_from_table`, its fluxes from
        counts to nJy with the difference image's zero point) or DIA source
        dicts (LSST field names, fluxes already in nJy).  A table without a
        ``reliability`` column is scored first with the shipped real/bogus
        model (:func:`skydm.reliability.score_sources`, from cutouts of
        ``difference``, ``science`` and ``template``), which also fills
        ``reliabilityVersion``.
    difference : Exposure
        The difference image; its ``info`` gives visit, detector, band, time,
        its WCS the footprint, its PSF the forced photometry, its zero point
        the nJy scale of every flux.
    apdb : Apdb
        The alert production database.
    archive_dir : path
        Where the visit's Avro archive goes; the outbox lives there too
        (``outbox.sqlite3``) unless ``outbox`` is given.
    science, template : Exposure, optional
        For cutouts and science-image forced photometry.
    schema_version : str, optional
        ``"MAJOR.MINOR"`` of a packaged LSST schema; the latest by default.
    topic : str, optional
        Main topic; ``lsst-alerts-v<major>`` by default.
    filtered_topics : mapping, optional
        ``topic -> predicate``; a packet also goes to each topic whose
        predicate returns true for ``{"diaSource": rec, "diaObject": rec}``.
    bootstrap : str, optional
        Kafka bootstrap servers; when given, the outbox is drained to it.
    kafka_config : mapping, optional
        Extra client settings (SASL...), passed through.

    Returns
    -------
    VisitAlerts

    Raises
    ------
    ConflictError
        When the visit was already stored in the APDB.
    """
    schema = load_schema(schema_version)
    encoder = PacketEncoder(schema)
    info = difference.info
    visit, detector = int(info.visit), int(info.detector)
    result = VisitAlerts(visit, detector, schema.version)
    clock = _Clock(result.timings, result.cpu_timings)
    if apdb.has_visit(visit, detector):
        raise ConflictError(
            f"visit {visit} detector {detector} is already in the APDB at {apdb.url}; "
            "its alerts were produced before (use `skydm alerts stream` to resend them)"
        )
    processed = now_mjd()
    if isinstance(sources, Table):
        if "reliability" not in sources.colnames:
            sources = _with_reliability(sources, difference, science, template)
        # The differencing table is in the image's counts; alerts are in nJy.
        srcs = dia_sources_from_table(
            sources,
            info,
            time_processed=processed,
            flux_scale=difference.nanojansky_per_count("alert fluxes in nJy"),
        )
    else:
        srcs = [dict(s) for s in sources]
    result.n_sources = len(srcs)

    # 1. Checks, per source: one bad source must not stop the visit.
    good: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for src in srcs:
        try:
            check_source_values(src)
            rec = build_record(
                "diaSource", {**src, "diaObjectId": 0}, schema, ident=src.get("diaSourceId")
            )
        except AlertValidationError as exc:
            result.rejected.append(exc)
            continue
        good.append(src)
        records.append(rec)
    clock.lap("check")

    # 2. Association.
    ra_ranges, dec_range = visit_region(difference, margin_arcsec=max(5.0, 2 * radius_arcsec))
    known = apdb.objects_in_region(ra_ranges, dec_range)
    match = associate(
        np.array([s["ra"] for s in good]),
        np.array([s["dec"] for s in good]),
        known,
        radius_arcsec=radius_arcsec,
    )
    objects = {int(o["diaObjectId"]): o for o in known}
    new_ids: list[int] = []
    touched: list[int] = []
    for src, oid in zip(good, match.object_ids, strict=True):
        if oid is None:
            obj = new_object(src)
            oid = int(obj["diaObjectId"])
            objects[oid] = obj
            new_ids.append(oid)
        src["diaObjectId"] = oid
        add_source(objects[oid], src)
        touched.append(oid)
    result.n_new_objects = len(new_ids)
    clock.lap("associate")

    # 3. Forced photometry of every object on the image, and the history of
    # the objects that have a source in this visit.
    mjd = float(info.mjd)
    since = mjd - history_days
    # The history (most of a packet's bytes) is read in a thread of its own
    # while the photometry runs: the database driver releases the GIL.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history") as reader:
        history_read = reader.submit(apdb.read_history, touched, since=since)
        forced, encoded = _forced_and_encodings(
            objects, good, records, difference, science, processed, schema, encoder
        )
        chunks, tails = history_read.result()
    result.n_forced = len(forced)
    clock.lap("forced")

    # 4. History windows: a few chunks per object, sliced to the window
    # without decoding records.
    touched_set = set(touched)
    forced_only = sorted({int(f["diaObjectId"]) for f in forced} - touched_set)
    _, more = apdb.read_history([], since=since, tails_of=forced_only)
    tails.update(more)
    windows = {
        (oid, kind): window(
            chunks.get((oid, kind), ()), since=since, before=mjd, schema_id=schema.schema_id
        )
        for oid in touched_set
        for kind in (SOURCE, FORCED)
    }
    stale: dict[int, list[int]] = {SOURCE: [], FORCED: []}
    for (_, kind), w in windows.items():
        if isinstance(w, list):
            stale[kind].extend(r[0] for r in w if r[2] != schema.schema_id)
    full_src = apdb.rows_by_id("DiaSource", stale[SOURCE]) if stale[SOURCE] else {}
    full_fs = apdb.rows_by_id("DiaForcedSource", stale[FORCED]) if stale[FORCED] else {}
    history = {
        key: _history_array(
            "diaSource" if key[1] == SOURCE else "diaForcedSource",
            w,
            schema,
            encoder,
            full_src if key[1] == SOURCE else full_fs,
        )
        for key, w in windows.items()
    }
    clock.lap("history")

    # 5. The APDB transaction is held open in a thread while the packets are
    # made and archived (the archive writer has its own thread); it commits
    # only once the archive is complete and the outbox holds its messages,
    # and the outbox rows are removed if the commit fails: a visit is either
    # stored and queued or neither.  With a broker, each block of packets is
    # also sent as soon as it is archived, so that the transfer overlaps with
    # making the rest; its delivery reports are recorded in the outbox after
    # the commit.  Should the commit fail, alerts already sent stay sent: the
    # visit's retry makes the same diaSourceIds, which consumers drop as
    # duplicates (Kafka transactions would avoid it, but tansu, the test
    # broker, does not deliver transactional messages).
    archive_dir = Path(archive_dir)
    archive_dir.mkdir(parents=True, exist_ok=True)
    path = archive_dir / archive_name(visit, detector)
    own_outbox = outbox is None
    box = outbox or Outbox(archive_dir / "outbox.sqlite3")
    new_set = set(new_ids)
    changed = set(touched) | {int(f["diaObjectId"]) for f in forced}
    queued = threading.Event()
    abandon = threading.Event()

    executed = threading.Event()

    def commit_gate() -> None:
        executed.set()
        queued.wait()
        if abandon.is_set():
            raise _Abandoned("the visit's alerts were not queued")

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apdb")
    stored = pool.submit(
        apdb.store_visit,
        visit=visit,
        detector=detector,
        band=info.band,
        mjd=mjd if math.isfinite(mjd) else 0.0,
        sources=good,
        forced=forced,
        new_objects=[objects[i] for i in new_ids],
        updated_objects=[objects[i] for i in changed if i not in new_set],
        tails=tails,
        before_commit=commit_gate,
    )
    transport = None
    main_topic = topic or schema.default_topic
    filters = dict(filtered_topics or {})
    broker_down = ""
    if bootstrap:
        transport = KafkaTransport(
            bootstrap, partitions=partitions, config=dict(kafka_config or {})
        )
        transport.prepare()
        try:
            transport.ensure_topics([main_topic, *filters])
        except BrokerUnavailableError as exc:
            # The broker is down: everything waits in the outbox (step 6).
            broker_down = str(exc)
    # The transaction's statements run before the packets are made, not
    # beside them: on two busy cores, a thread handing the GIL back and forth
    # per row (sqlite3 releases it for every step) slowed the packets more
    # than it saved (measured: 7-9 s against 11-12 s for a 10k visit).
    while not executed.wait(0.05) and not stored.done():
        pass
    writer = ArchiveWriter(path, schema, skip=WIRE_HEADER_SIZE)
    try:
        if stored.done():
            stored.result()  # the transaction failed (a visit stored twice...): stop here
        spans, routes = _make_packets(
            good,
            encoded,
            records,
            objects,
            history,
            makers_for(difference, science, template, cutout_size),
            schema,
            encoder,
            writer,
            main_topic=main_topic,
            filters=filters,
            progress=progress,
            ahead=transport.send_ahead if transport is not None and not broker_down else None,
        )
        result.n_alerts = len(spans)
        clock.lap("packets")
        writer.finish()
        result.archive = path
        clock.lap("archive")
        entries = [
            (t, int(src["diaSourceId"]), int(src["diaObjectId"]), pos, length)
            for src, (pos, length), ts in zip(good, spans, routes, strict=True)
            for t in ts
        ]
        result.queued = box.add_archive(
            path, visit=visit, detector=detector, schema_id=schema.schema_id, entries=entries
        )
        clock.lap("outbox")
    except BaseException:
        writer.abort()
        abandon.set()
        queued.set()
        pool.shutdown(wait=True)
        if transport is not None:
            transport.collect_ahead(1.0)
            transport.close()
        if own_outbox:
            box.close()
        raise
    queued.set()
    try:
        try:
            stored.result()
        except BaseException:
            box.drop_archive(path)
            raise
        finally:
            pool.shutdown(wait=True)
        clock.lap("store")
        if transport is not None:
            # 6. What went ahead and was acknowledged is marked delivered; the
            # rest (none, unless the broker failed) is sent from the outbox.
            ahead = transport.collect_ahead(30.0)
            requeued = box.mark_sent_ahead(
                path, [(a.topic, a.dia_source_id, a.partition, a.offset) for a in ahead]
            )
            if broker_down:
                # Not asked again now (its timeout would only delay the
                # caller): `skydm alerts stream` sends the visit later.
                result.stream = StreamResult(pending=box.counts()["pending"], errors=[broker_down])
            else:
                result.stream = stream_outbox(box, transport)
            result.stream.delivered += len(ahead)
            result.stream.requeued += requeued
            clock.lap("stream")
    finally:
        if transport is not None:
            transport.close()
        if own_outbox:
            box.close()
    return result


def _forced_and_encodings(
    objects: Mapping[int, dict[str, Any]],
    good: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    difference: Exposure,
    science: Exposure | None,
    processed: float,
    schema: AlertSchema,
    encoder: PacketEncoder,
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Forced sources of every object (with their encodings), and the new
    sources' encodings (kept on the source dicts too, for the APDB history)."""
    forced = forced_photometry(
        list(objects.values()), difference, science=science, time_processed=processed
    )
    for fs in forced:
        add_forced(objects[fs["diaObjectId"]], fs)
        fs["avroSchemaId"] = schema.schema_id
        fs["avro"] = bytes(
            encoder.encode_record("diaForcedSource", build_record("diaForcedSource", fs, schema))
        )
    encoded: list[bytes] = []
    for src, rec in zip(good, records, strict=True):
        if "diaObjectId" in rec:
            rec["diaObjectId"] = int(src["diaObjectId"])
        enc = encoder.encode_record("diaSource", rec)
        encoded.append(enc)
        src["avroSchemaId"], src["avro"] = schema.schema_id, bytes(enc)
    return forced, encoded


class _Abandoned(Exception):
    """The APDB transaction of a visit whose alerts could not be queued."""


def _with_reliability(
    sources: Table, difference: Exposure, science: Exposure | None, template: Exposure | None
) -> Table:
    """A copy of ``sources`` with the real/bogus score and the model's version."""
    from skydm.reliability import score_sources

    scored = sources.copy(copy_data=False)
    score_sources(scored, difference, science=science, template=template)
    return scored


def makers_for(
    difference: Exposure, science: Exposure | None, template: Exposure | None, size: int
) -> dict[str, CutoutMaker]:
    """Cutout makers for the images that are given."""
    return {
        name: CutoutMaker(exp, size)
        for name, exp in (("difference", difference), ("science", science), ("template", template))
        if exp is not None
    }


def _make_packets(
    good: Sequence[dict[str, Any]],
    encoded: Sequence[bytes],
    records: Sequence[dict[str, Any]],
    objects: Mapping[int, dict[str, Any]],
    history: Mapping[tuple[int, int], EncodedArray],
    makers: Mapping[str, CutoutMaker],
    schema: AlertSchema,
    encoder: PacketEncoder,
    writer: ArchiveWriter,
    *,
    main_topic: str,
    filters: Mapping[str, Predicate],
    progress: Progress | None,
    ahead: Callable[[Sequence[OutMessage]], None] | None = None,
    block: int = 500,
) -> tuple[list[tuple[int, int]], list[list[str]]]:
    """Wire-format packets, handed to the archive writer (and to ``ahead``) block by block.

    Returns the packets' byte ranges in the archive and their topics. The
    packets themselves are not kept: holding a visit's worth (700 MB for
    10,000) cost more in page faults than reading back the rare message that
    a broker does not acknowledge.
    """
    spans: list[tuple[int, int]] = []
    routes: list[list[str]] = []
    summaries: dict[int, dict[str, Any]] = {}
    pending: list[bytes] = []
    for src, enc, rec in zip(good, encoded, records, strict=True):
        oid = int(src["diaObjectId"])
        ident = src["diaSourceId"]
        if oid not in summaries:
            summaries[oid] = build_record(
                "diaObject", object_summary(objects[oid]), schema, ident=ident
            )
        obj_rec = summaries[oid]
        x, y = float(src["x"]), float(src["y"])
        packet = alert_record(
            schema,
            dia_source=enc,  # type: ignore[arg-type]
            prv_dia_sources=history[(oid, SOURCE)],  # type: ignore[arg-type]
            prv_forced_sources=history[(oid, FORCED)],  # type: ignore[arg-type]
            dia_object=obj_rec,
            cutouts={name: m.cutout(x, y) for name, m in makers.items()},
            dia_source_id=int(ident),
        )
        pending.append(encoder.encode(packet, wire=True))
        if filters:
            view = {"diaSourceId": ident, "diaSource": rec, "diaObject": obj_rec}
            routes.append([main_topic, *(t for t, pred in filters.items() if pred(view))])
        else:
            routes.append([main_topic])
        if len(pending) == block:
            done = len(spans)
            spans.extend(_flush_block(pending, good[done:], routes[done:], writer, ahead))
            pending = []
        if progress is not None:
            progress.advance()
    done = len(spans)
    spans.extend(_flush_block(pending, good[done:], routes[done:], writer, ahead))
    return spans, routes


def _flush_block(
    block: list[bytes],
    sources: Sequence[dict[str, Any]],
    routes: Sequence[list[str]],
    writer: ArchiveWriter,
    ahead: Callable[[Sequence[OutMessage]], None] | None,
) -> list[tuple[int, int]]:
    """Archive one block of packets and, when sending ahead, hand it to the transport.

    Returns the packets' byte ranges in the archive.
    """
    spans = writer.add(block)
    if ahead is not None and block:
        ahead(
            [
                OutMessage(0, topic, str(int(src["diaObjectId"])).encode(), msg, src["diaSourceId"])
                for msg, src, ts in zip(block, sources, routes, strict=False)
                for topic in ts
            ]
        )
    return spans
