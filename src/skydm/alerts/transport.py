"""Alert transport: a small interface, its Kafka implementation, and the outbox drain.

:class:`AlertTransport` is all the outbox needs from a broker: make sure the
topics exist, send a batch and say which messages the broker acknowledged.
:class:`KafkaTransport` implements it with confluent-kafka: idempotent
producer, ``acks=all``, one delivery report checked per message, keys are
``diaObjectId`` (so an object's alerts stay in order on one partition), and
any client setting (SASL, TLS, ...) passes straight through, so production
runs on an Apache Kafka cluster unchanged.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from skydm.alerts.outbox import Delivery, Outbox, OutMessage
from skydm.errors import BadValueError, SkydmError, require_extra
from skydm.progress import Progress

#: librdkafka's own log lines (connection refused, retries...) go to this
#: logger rather than straight to stderr: skydm reports what matters (alerts
#: kept in the outbox) itself; configure logging to see the client's detail.
KAFKA_LOG = logging.getLogger("skydm.kafka")
KAFKA_LOG.addHandler(logging.NullHandler())


class BrokerUnavailableError(SkydmError):
    """The broker could not be reached or did not acknowledge in time."""


#: What to do when a broker does not answer (the end of every such message).
BROKER_ADVICE = (
    "check that a Kafka broker is running at that address, or give the right one "
    "with --bootstrap HOST:PORT (or SKYDM_KAFKA_BOOTSTRAP)"
)


def broker_unreachable(bootstrap: str, exc: BaseException | str) -> BrokerUnavailableError:
    """The error for a broker at ``bootstrap`` that did not answer: what failed and what to do.

    ``exc`` is librdkafka's exception (its ``KafkaError`` is shown by its
    readable text, not its ``repr``) or a description of what was not done.
    """
    if isinstance(exc, str):
        detail = exc
    else:
        err: Any = exc.args[0] if exc.args else None
        detail = str(err.str()) if err is not None and hasattr(err, "str") else str(exc)
    return BrokerUnavailableError(
        f"no answer from the Kafka broker at {bootstrap} ({detail}); {BROKER_ADVICE}"
    )


@dataclass(frozen=True)
class SentAhead:
    """A positive delivery report of a message sent ahead of its outbox row."""

    topic: str
    dia_source_id: int
    partition: int
    offset: int


class AlertTransport(abc.ABC):
    """Where alert messages go."""

    @abc.abstractmethod
    def ensure_topics(self, topics: Sequence[str]) -> list[str]:
        """Create missing topics; returns those that were created."""

    @abc.abstractmethod
    def send(self, messages: Sequence[OutMessage], *, timeout: float) -> list[Delivery]:
        """Send a batch; returns the positive delivery reports, in arrival order.

        Messages without a report within ``timeout`` seconds count as not
        delivered; they stay pending in the outbox.
        """

    def send_ahead(self, messages: Sequence[OutMessage]) -> None:  # noqa: B027 - optional
        """Start sending messages that have no outbox row yet, without waiting.

        The producer of a visit calls this block by block while it is still
        making the visit's packets, so that the transfer overlaps with that
        work; the messages' ``seq`` is unused. The outbox remains the record:
        what :meth:`collect_ahead` does not report delivered is sent again from
        it. Transports that cannot do this ignore the call (the outbox sends
        everything later).
        """

    def collect_ahead(self, timeout: float) -> list[SentAhead]:
        """Wait up to ``timeout`` seconds for the reports of :meth:`send_ahead`.

        Returns the positive reports, in arrival order; a message without one
        is left to the outbox.
        """
        return []

    def find_sent(
        self,
        wanted: Mapping[str, set[int]],
        after: Mapping[tuple[str, int], int],
        *,
        timeout: float,
    ) -> list[SentAhead]:
        """Messages of ``wanted`` (diaSourceIds by topic) that the broker's log holds.

        Only offsets above ``after[(topic, partition)]`` (the highest the
        outbox recorded) are read.  Transports that cannot read back return
        nothing: the rows are then sent again (consumers drop the duplicates).
        """
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


#: Producer compression codecs librdkafka offers.  lz4 is the default; a
#: consumer whose Kafka client lacks lz4 (some minimal builds of kafka-python,
#: or clients in environments without the lz4 library) needs the stream
#: produced with ``gzip`` (every client has it) or ``none``.
COMPRESSION_TYPES = ("lz4", "zstd", "gzip", "snappy", "none")


def compression_config(name: str, *, option: str = "--compression") -> dict[str, str]:
    """The producer setting for a compression codec, validated.

    Raises
    ------
    BadValueError
        Naming ``option`` when ``name`` is not one of :data:`COMPRESSION_TYPES`.
    """
    if name not in COMPRESSION_TYPES:
        raise BadValueError(option, name, f"one of {', '.join(COMPRESSION_TYPES)}")
    return {"compression.type": name}


def parse_kafka_config(items: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (command-line pass-through) as a dict.

    Raises
    ------
    BadValueError
        When an item has no ``=``.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadValueError(
                "--kafka-config", item, "KEY=VALUE, e.g. sasl.mechanism=SCRAM-SHA-512"
            )
        out[key.strip()] = value
    return out


#: Seconds to wait for the broker's topic list before calling it unreachable.
METADATA_TIMEOUT_S = 10.0


@dataclass
class KafkaTransport(AlertTransport):
    """Kafka producer side.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port...]``.
    partitions : int
        Partitions of topics this transport creates.
    config : mapping
        Extra librdkafka settings, passed through unchanged (``security.protocol``,
        ``sasl.mechanism``, ``sasl.username``, ``compression.type`` ...).

    Notes
    -----
    Topics are looked up (and created) with a timeout of
    :data:`METADATA_TIMEOUT_S`, or ``message.timeout.ms`` when that is
    shorter: a broker that cannot answer within the time a message may take
    to be delivered is unreachable for this producer, and waiting longer
    would only delay the caller's "keep the visit for later".
    """

    bootstrap: str
    partitions: int = 8
    replication: int = 1
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ck = require_extra("confluent_kafka", "alerts")
        self._admin = require_extra("confluent_kafka.admin", "alerts")
        self._producer: Any = None
        self._ahead: list[SentAhead] = []
        self._ahead_failed = 0
        if self.partitions < 1:
            raise BadValueError("partitions", self.partitions, "at least 1")

    def _client_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": KAFKA_LOG, **self.config}

    def _make_producer(self) -> Any:
        conf = {
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "message.max.bytes": 10_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.timeout.ms": 30_000,
            # lz4 costs the producer little and cuts what the broker and
            # the consumers handle (history records compress; cutouts little).
            "compression.type": "lz4",
            **self._client_config(),
            # Not overridable: the nothing-lost guarantee rests on them.
            "enable.idempotence": True,
            "acks": "all",
        }
        return self._ck.Producer(conf)

    def prepare(self) -> None:
        """Start the producer now, so that its connections and producer id are
        set up in the background while the caller makes the messages."""
        if self._producer is None:
            self._producer = self._make_producer()

    def _metadata_timeout(self) -> float:
        delivery_ms = self.config.get("message.timeout.ms")
        try:
            delivery_s = float(delivery_ms) / 1000 if delivery_ms is not None else math.inf
        except (TypeError, ValueError):  # librdkafka itself names a bad value
            delivery_s = math.inf
        return max(min(METADATA_TIMEOUT_S, delivery_s), 1.0)

    def ensure_topics(self, topics: Sequence[str]) -> list[str]:
        admin = self._admin.AdminClient(self._client_config())
        try:
            existing = set(admin.list_topics(timeout=self._metadata_timeout()).topics)
        except self._ck.KafkaException as exc:
            raise broker_unreachable(self.bootstrap, exc) from exc
        missing = [t for t in topics if t not in existing]
        if not missing:
            return []
        new = [self._admin.NewTopic(t, self.partitions, self.replication) for t in missing]
        created = []
        for topic, fut in admin.create_topics(new, operation_timeout=10).items():
            try:
                fut.result(15)
                created.append(topic)
            except self._ck.KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() != self._ck.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerUnavailableError(f"cannot create topic {topic}: {exc}") from exc
        return created

    def _produce_all(
        self, messages: Sequence[OutMessage], report: Any, deadline: float | None
    ) -> None:
        """Hand messages to the client, waiting for queue room (until ``deadline``)."""
        if self._producer is None:
            self._producer = self._make_producer()
        producer = self._producer
        for m in messages:
            while True:
                try:
                    producer.produce(m.topic, m.value, m.key, on_delivery=report(m))
                    break
                except BufferError:
                    # The client's queue is full: let deliveries drain it.
                    producer.poll(0.05)
                    if deadline is not None and time.monotonic() > deadline:
                        break
            producer.poll(0)

    def _settle(self, timeout: float, failed: Callable[[], int]) -> None:
        """Wait for the delivery reports; after any failure start a fresh producer.

        ``failed`` counts the negative reports, read after the flush (the
        reports arrive during it).
        """
        producer = self._producer
        if producer is None:
            return
        left = producer.flush(max(timeout, 0.1))
        if left or failed():
            # An idempotent producer cannot carry on past a broker that lost
            # its state (sequence numbers it no longer knows); start afresh,
            # purging what is still queued: those messages remain pending in
            # the outbox and are sent again.
            producer.purge(in_queue=True, in_flight=True)
            producer.flush(0.5)
            self._producer = None

    def send(self, messages: Sequence[OutMessage], *, timeout: float) -> list[Delivery]:
        delivered: list[Delivery] = []
        failed = 0

        def report(m: OutMessage) -> Any:
            seq, topic = m.seq, m.topic

            def cb(err: Any, msg: Any) -> None:
                nonlocal failed
                if err is None:
                    delivered.append(Delivery(seq, topic, msg.partition(), msg.offset()))
                else:
                    failed += 1

            return cb

        deadline = time.monotonic() + timeout
        self._produce_all(messages, report, deadline)
        self._settle(deadline - time.monotonic(), lambda: failed)
        return delivered

    def send_ahead(self, messages: Sequence[OutMessage]) -> None:
        ahead = self._ahead

        def report(m: OutMessage) -> Any:
            sid, topic = m.dia_source_id, m.topic

            def cb(err: Any, msg: Any) -> None:
                if err is None:
                    ahead.append(SentAhead(topic, sid, msg.partition(), msg.offset()))
                else:
                    self._ahead_failed += 1

            return cb

        # No deadline: a full client queue is back-pressure on the packet
        # maker, and message.timeout.ms bounds how long a message may wait.
        self._produce_all(messages, report, None)

    def collect_ahead(self, timeout: float) -> list[SentAhead]:
        self._settle(timeout, lambda: self._ahead_failed)
        out, self._ahead, self._ahead_failed = self._ahead, [], 0
        return out

    def find_sent(
        self,
        wanted: Mapping[str, set[int]],
        after: Mapping[tuple[str, int], int],
        *,
        timeout: float,
    ) -> list[SentAhead]:
        from skydm.alerts.consumer import dia_source_id_of

        consumer = self._ck.Consumer(
            {
                **self._client_config(),
                "group.id": f"skydm-outbox-check-{time.time_ns()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        found: list[SentAhead] = []
        try:
            meta = consumer.list_topics(timeout=timeout)
            ends: dict[tuple[str, int], int] = {}
            assign = []
            for topic in wanted:
                if topic not in meta.topics:
                    continue
                for part in meta.topics[topic].partitions:
                    tp = self._ck.TopicPartition(topic, part)
                    low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                    start = max(low, after.get((topic, part), -1) + 1)
                    if start < high:
                        ends[(topic, part)] = high
                        assign.append(self._ck.TopicPartition(topic, part, start))
            if not assign:
                return found
            consumer.assign(assign)
            deadline = time.monotonic() + timeout
            while ends and time.monotonic() < deadline:
                for msg in consumer.consume(1000, timeout=0.5):
                    if msg.error() is not None:
                        continue
                    k = (msg.topic(), msg.partition())
                    sid = dia_source_id_of(msg.value())
                    if sid in wanted.get(k[0], ()):
                        found.append(SentAhead(k[0], sid, k[1], msg.offset()))
                    if k in ends and msg.offset() >= ends[k] - 1:
                        del ends[k]
            if ends:
                raise BrokerUnavailableError(
                    f"Kafka at {self.bootstrap}: could not read back {len(ends)} partitions "
                    f"within {timeout:.0f} s to settle alerts left in flight"
                )
        except self._ck.KafkaException as exc:
            raise BrokerUnavailableError(f"Kafka at {self.bootstrap}: {exc}") from exc
        finally:
            consumer.close()
        return found

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None


@dataclass
class StreamResult:
    """What one drain of the outbox did."""

    delivered: int = 0
    pending: int = 0
    requeued: int = 0
    attempts: int = 0
    #: Messages left in flight by a drainer that died, found in the broker's log.
    settled: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LostLog:
    """A partition whose log the broker lost since messages were acknowledged on it."""

    topic: str
    partition: int
    acknowledged: int  # highest offset acknowledged before
    end: int  # the broker's log end offset now (-1: the topic is gone)
    requeued: int  # messages queued again

    def line(self, bootstrap: str) -> str:
        """What happened and what was done, for the user."""
        now = "the topic is gone" if self.end < 0 else f"its log now ends at offset {self.end}"
        return (
            f"the broker at {bootstrap} lost partition {self.partition} of {self.topic} "
            f"(offset {self.acknowledged} was acknowledged; {now}): its {self.requeued} "
            "messages are queued again; consumers drop duplicates by diaSourceId"
        )


def requeue_lost_logs(
    outbox: Outbox, bootstrap: str, *, config: Mapping[str, Any] | None = None, timeout: float = 10
) -> list[LostLog]:
    """Find partitions whose log the broker lost, and queue their messages again.

    A broker that lost data (an in-memory broker restarted, a topic deleted)
    ends a partition's log below an offset it acknowledged before; the
    outbox would otherwise only notice at the next send to that partition.

    Raises
    ------
    BrokerUnavailableError
        When the broker does not answer within ``timeout`` seconds.
    """
    logs = outbox.partition_logs()
    if not logs:
        return []
    ck = require_extra("confluent_kafka", "alerts")
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "logger": KAFKA_LOG,
            "group.id": "skydm-outbox-check",
            "enable.auto.commit": False,
            **dict(config or {}),
        }
    )
    lost = []
    try:
        try:
            existing = consumer.list_topics(timeout=timeout).topics
        except ck.KafkaException as exc:
            raise broker_unreachable(bootstrap, exc) from exc
        for (topic, partition), acked in sorted(logs.items()):
            meta = existing.get(topic)
            if meta is None or partition not in meta.partitions:
                end = -1
            else:
                try:
                    _, end = consumer.get_watermark_offsets(
                        ck.TopicPartition(topic, partition), timeout=timeout
                    )
                except ck.KafkaException as exc:
                    raise broker_unreachable(bootstrap, exc) from exc
            if end <= acked:  # the next offset would reuse one acknowledged before
                n = outbox.requeue_partition(topic, partition)
                lost.append(LostLog(topic, partition, acked, int(end), n))
    finally:
        consumer.close()
    return lost


def stream_outbox(
    outbox: Outbox,
    transport: AlertTransport,
    *,
    batch: int = 10_000,
    send_timeout: float = 30.0,
    retry_for: float = 0.0,
    progress: Progress | None = None,
) -> StreamResult:
    """Send every pending outbox message; keep what the broker does not acknowledge.

    Parameters
    ----------
    batch : int
        Messages per send (each batch is flushed and its reports recorded).
    send_timeout : float
        Seconds to wait for a batch's delivery reports.
    retry_for : float
        Keep retrying (with back-off) for this many seconds while the broker
        is down; 0 gives up at the first batch that made no progress.
    """
    result = StreamResult()
    deadline = time.monotonic() + retry_for
    backoff = 0.5
    topics_ok = False
    while True:
        try:
            if not topics_ok:
                transport.ensure_topics(outbox.topics())
                topics_ok = True
            doubt = outbox.in_flight()
            if doubt:
                # A drainer died between handing a batch over and recording
                # its reports: what the broker has is delivered, not resent.
                found = transport.find_sent(doubt, outbox.partition_logs(), timeout=send_timeout)
                settled, _again = outbox.resolve_in_flight(
                    [(f.topic, f.dia_source_id, f.partition, f.offset) for f in found]
                )
                result.settled += settled
            after = 0
            progress_made = False
            while True:
                msgs = outbox.pending(batch, after=after)
                if not msgs:
                    break
                result.attempts += 1
                outbox.mark_in_flight([m.seq for m in msgs])
                reports = transport.send(msgs, timeout=send_timeout)
                requeued = outbox.mark_delivered(reports)
                result.requeued += requeued
                result.delivered += len(reports)
                if progress is not None:
                    if progress.total is not None:
                        progress.total += requeued  # sent again: the count stays within total
                    progress.advance(len(reports))
                if len(reports) < len(msgs):
                    got = {d.seq for d in reports}
                    outbox.mark_failed([m.seq for m in msgs if m.seq not in got])
                    unacked = f"{len(msgs) - len(reports)} of {len(msgs)} messages not acknowledged"
                    where = getattr(transport, "bootstrap", None)
                    if where is None:
                        raise BrokerUnavailableError(unacked)
                    raise broker_unreachable(str(where), unacked)
                progress_made = progress_made or bool(reports)
                after = msgs[-1].seq
            if outbox.counts()["pending"] == 0:
                break
            # Messages re-queued behind the cursor (a lost partition log): go round again.
        except BrokerUnavailableError as exc:
            result.errors.append(str(exc))
            topics_ok = False
            if time.monotonic() >= deadline:
                break
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
    result.pending = outbox.counts()["pending"]
    return result
