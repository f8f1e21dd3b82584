"""Consuming alerts: a consumer-group member that commits, replays and drops duplicates.

Offsets are committed only for messages already handed to the caller, and
synchronously when partitions are revoked, so a group that rebalances hands
every message to exactly one member.  A message delivered twice by the
producer side (the outbox resends what it cannot prove delivered) is dropped
by ``diaSourceId``: the first field of every LSST alert packet, read from the
wire without decoding the packet.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from skydm.alerts.serialize import WIRE_HEADER_SIZE, decode, parse_wire
from skydm.alerts.transport import KAFKA_LOG, BrokerUnavailableError
from skydm.errors import BadValueError, UserError, require_extra


def _read_long(buf: bytes, pos: int) -> int:
    """Decode one Avro zig-zag varint at ``pos``."""
    shift = result = 0
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1)


def dia_source_id_of(message: bytes) -> int:
    """The ``diaSourceId`` (``alertId`` before schema 8) of a wire-format alert."""
    parse_wire(message[:WIRE_HEADER_SIZE])
    return _read_long(message, WIRE_HEADER_SIZE)


class DedupStore:
    """The ``diaSourceId`` values already seen, in memory or in an SQLite file.

    Parameters
    ----------
    path : Path, optional
        SQLite file that keeps the ids across consumer restarts.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._seen: set[int] = set()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(Path(path))
            self._db.execute("CREATE TABLE IF NOT EXISTS seen (id INTEGER PRIMARY KEY)")
            self._seen.update(r[0] for r in self._db.execute("SELECT id FROM seen"))

    def add_new(self, ids: Sequence[int]) -> list[bool]:
        """Record ``ids``; for each, whether it was new."""
        fresh: list[bool] = []
        for i in ids:
            is_new = i not in self._seen
            self._seen.add(i)
            fresh.append(is_new)
        if self._db is not None:
            with self._db:
                self._db.executemany(
                    "INSERT OR IGNORE INTO seen (id) VALUES (?)",
                    [(i,) for i, f in zip(ids, fresh, strict=True) if f],
                )
        return fresh

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class ReceivedAlert:
    """One alert as consumed."""

    dia_source_id: int
    dia_object_id: int | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes

    def decode(self) -> dict[str, Any]:
        """The packet, decoded with lsst-alert-packet's deserializer."""
        return decode(self.value)


def _to_ms(when: datetime | float | str) -> int:
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when)
        except ValueError as exc:
            raise BadValueError(
                "from-time", when, "an ISO 8601 time, e.g. 2025-01-31T12:00:00+00:00"
            ) from exc
    if isinstance(when, datetime):
        return int(when.timestamp() * 1000)
    return int(float(when) * 1000)


class AlertConsumer:
    """A member of a consumer group reading alert topics.

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers.
    group : str
        Consumer group id.
    topics : sequence of str
        Topics to subscribe to.
    config : mapping, optional
        Extra librdkafka settings, passed through (SASL...).
    from_time : datetime, float (Unix seconds) or ISO str, optional
        Replay: start every partition at the first message at or after this
        time (instead of the group's committed offsets).
    from_offset : int, optional
        Replay: start every partition at this offset.
    dedup : DedupStore, optional
        Where seen ``diaSourceId`` values are kept; in memory by default.
    connect_timeout : float
        Seconds to wait for the broker to answer at all; an unreachable
        broker is reported after this long instead of being retried forever.
    require_topics : bool
        Refuse topics the broker does not have (the command line does; a
        program may subscribe before a producer creates them).

    Raises
    ------
    BrokerUnavailableError
        When the broker does not answer within ``connect_timeout``.
    UserError
        With ``require_topics``, when a topic does not exist.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Sequence[str],
        *,
        config: Mapping[str, Any] | None = None,
        from_time: datetime | float | str | None = None,
        from_offset: int | None = None,
        dedup: DedupStore | None = None,
        connect_timeout: float = 10.0,
        require_topics: bool = False,
    ) -> None:
        if from_time is not None and from_offset is not None:
            raise BadValueError("from_offset", from_offset, "either a time or an offset, not both")
        self._ck = require_extra("confluent_kafka", "alerts")
        conf = {
            "bootstrap.servers": bootstrap,
            "logger": KAFKA_LOG,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 50,
            "max.partition.fetch.bytes": 10_000_000,
            **dict(config or {}),
            # Commits are ours: only for messages handed out (see the module notes).
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
        self.bootstrap = bootstrap
        self._consumer = self._ck.Consumer(conf)
        try:
            self._check_broker(list(topics), connect_timeout, require_topics)
        except BaseException:
            self._consumer.close()
            raise
        self._from_ms = _to_ms(from_time) if from_time is not None else None
        self._from_offset = from_offset
        self._replayed: set[tuple[str, int]] = set()
        self.dedup = dedup if dedup is not None else DedupStore()
        self.duplicates = 0
        self.assignment: list[tuple[str, int]] = []
        self._consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _check_broker(self, topics: list[str], timeout: float, require_topics: bool) -> None:
        """Ask the broker for its topics: it answers, and has the ones asked for."""
        try:
            meta = self._consumer.list_topics(timeout=timeout)
        except self._ck.KafkaException as exc:
            raise BrokerUnavailableError(
                f"no answer from the Kafka broker at {self.bootstrap} within {timeout:g} s "
                f"({exc.args[0].str() if exc.args else exc}); check --bootstrap (or "
                "SKYDM_KAFKA_BOOTSTRAP) and that the broker is running"
            ) from exc
        if not require_topics:
            return
        have = {name for name in meta.topics if not name.startswith("__")}
        missing = [t for t in topics if t not in have]
        if missing:
            there = ", ".join(sorted(have)) or "none yet"
            raise UserError(
                f"topic {missing[0]!r} does not exist on {self.bootstrap} (topics there: "
                f"{there}); give an existing one with --topic, or produce alerts first"
            )

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        replay = [p for p in partitions if (p.topic, p.partition) not in self._replayed]
        if self._from_offset is not None:
            for p in replay:
                p.offset = self._from_offset
        elif self._from_ms is not None:
            for p in replay:
                # Start at the beginning and skip older messages in poll():
                # brokers without a time index (tansu) cannot answer
                # offsets_for_times, and the result is the same.
                p.offset = self._ck.OFFSET_BEGINNING
        self._replayed.update((p.topic, p.partition) for p in partitions)
        self.assignment = [(p.topic, p.partition) for p in partitions]
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.commit()
        self.assignment = []

    def poll(self, max_messages: int = 500, timeout: float = 1.0) -> list[ReceivedAlert]:
        """Up to ``max_messages`` new alerts (duplicates and older-than-replay dropped)."""
        msgs = self._consumer.consume(max_messages, timeout)
        out: list[ReceivedAlert] = []
        keep: list[Any] = []
        for m in msgs:
            if m.error():
                if m.error().code() == self._ck.KafkaError._PARTITION_EOF:
                    continue
                if m.error().code() == self._ck.KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise UserError(
                        f"topic {m.topic()!r} does not exist on {self.bootstrap}; "
                        "give an existing one with --topic, or produce alerts first"
                    )
                raise BrokerUnavailableError(
                    f"the Kafka broker at {self.bootstrap} reported: {m.error().str()}"
                )
            self._consumer.store_offsets(message=m)
            ts = m.timestamp()[1]
            if self._from_ms is not None and ts < self._from_ms:
                continue
            keep.append(m)
        ids = [dia_source_id_of(m.value()) for m in keep]
        for m, sid, fresh in zip(keep, ids, self.dedup.add_new(ids), strict=True):
            if not fresh:
                self.duplicates += 1
                continue
            key = m.key()
            out.append(
                ReceivedAlert(
                    sid,
                    int(key) if key else None,
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.timestamp()[1],
                    m.value(),
                )
            )
        return out

    def commit(self) -> None:
        """Commit the offsets of every message handed out so far (synchronously)."""
        try:
            self._consumer.commit(asynchronous=False)
        except self._ck.KafkaException as exc:
            if exc.args[0].code() != self._ck.KafkaError._NO_OFFSET:
                raise

    def consume_until(
        self, n: int, *, timeout: float = 60.0, idle: float | None = None
    ) -> list[ReceivedAlert]:
        """Poll until ``n`` new alerts came, ``timeout`` passed, or none came for ``idle`` s."""
        got: list[ReceivedAlert] = []
        start = last = time.monotonic()
        while len(got) < n and time.monotonic() - start < timeout:
            batch = self.poll(min(1000, n - len(got)), 0.5)
            if batch or not self.assignment:
                # Idle time counts only once the group has given us partitions.
                got.extend(batch)
                last = time.monotonic()
                if batch:
                    self.commit()
            elif idle is not None and time.monotonic() - last > idle:
                break
        return got

    def close(self) -> None:
        """Commit and leave the group."""
        try:
            self.commit()
        finally:
            self._consumer.close()
