"""The durable outbox: every alert message waits here until a broker has it.

The outbox is an SQLite file beside the per-visit archives.  It does not
copy the packets: each row points at a record's byte range in its visit's
archive file (see :mod:`skydm.alerts.archive`), so the archive is the durable
store and the outbox only records, per (topic, diaSourceId), whether a
broker acknowledged it.  A message is marked delivered only on a positive
delivery report (``acks=all``); anything else stays pending and is sent again
by the next :func:`skydm.alerts.transport.stream_outbox`.

A broker that lost acknowledged data (a topic deleted and re-created, an
in-memory broker restarted) is noticed from the delivery reports: offsets of
a partition that go back below offsets already acknowledged mean its log was
started anew, and every message delivered to that partition before is
queued again.  Consumers drop the duplicates by ``diaSourceId``.

A batch is marked *in flight* (committed) before it is handed to the
broker.  A drainer killed after the broker acknowledged a batch but before
the outbox recorded it leaves rows in flight; the next drainer resolves
them before sending anything (:meth:`Outbox.resolve_in_flight`): the ones
the broker's log holds (looked up by ``diaSourceId`` after the highest
offsets recorded) are marked delivered, the others are pending again.  So a
retry after such a kill does not send an acknowledged message twice.  This
assumes one drainer at a time per outbox (the prompt service's outbox lock).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from skydm._sqlite import use_wal
from skydm.alerts.serialize import wire_header
from skydm.errors import BadFileError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS archive (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, visit INTEGER, detector INTEGER,
    schema_id INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, archive_id INTEGER NOT NULL REFERENCES archive(id),
    topic TEXT NOT NULL, dia_source_id INTEGER NOT NULL, dia_object_id INTEGER NOT NULL,
    pos INTEGER NOT NULL, length INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, delivered_at REAL, partition INTEGER, kafka_offset INTEGER,
    UNIQUE (topic, dia_source_id));
CREATE INDEX IF NOT EXISTS ix_message_pending ON message (state, seq);
CREATE INDEX IF NOT EXISTS ix_message_partition ON message (topic, partition, state);
CREATE TABLE IF NOT EXISTS partition_log (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, max_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition));
"""

PENDING, DELIVERED, IN_FLIGHT = 0, 1, 2


@dataclass(frozen=True)
class OutMessage:
    """One message to send: its outbox row, topic, key and wire-format value."""

    seq: int
    topic: str
    key: bytes
    value: bytes
    dia_source_id: int


@dataclass(frozen=True)
class Delivery:
    """A positive delivery report: where the broker put message ``seq``."""

    seq: int
    topic: str
    partition: int
    offset: int


class Outbox:
    """The outbox file.

    Parameters
    ----------
    path : Path
        SQLite file (created if missing), usually ``<archive dir>/outbox.sqlite3``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            use_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise BadFileError(self.path, f"not a usable outbox database ({exc})") from exc
        self._files: dict[int, tuple[Path, bytes]] = {}

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def add_archive(
        self,
        archive: Path,
        *,
        visit: int,
        detector: int,
        schema_id: int,
        entries: Sequence[tuple[str, int, int, int, int]],
    ) -> int:
        """Queue the messages of one archive file.

        Parameters
        ----------
        entries : sequence of tuple
            ``(topic, dia_source_id, dia_object_id, offset, length)`` per message.

        Returns
        -------
        int
            Number of messages queued (a message already queued for the same
            topic and DIA source is not queued twice).
        """
        with self._db:
            cur = self._db.execute(
                "INSERT INTO archive (path, visit, detector, schema_id, created) "
                "VALUES (?,?,?,?,?) "
                "ON CONFLICT(path) DO UPDATE SET schema_id=excluded.schema_id RETURNING id",
                (str(Path(archive).resolve()), visit, detector, schema_id, time.time()),
            )
            archive_id = int(cur.fetchone()[0])
            # A visit produced again rewrites its archive: pending rows of the
            # old file point at byte ranges that no longer hold them.
            self._db.execute(
                "DELETE FROM message WHERE archive_id=? AND state=?", (archive_id, PENDING)
            )
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO message (archive_id, topic, dia_source_id, dia_object_id, "
                "pos, length) VALUES (?,?,?,?,?,?)",
                [(archive_id, t, s, o, p, n) for t, s, o, p, n in entries],
            )
            self._files.pop(archive_id, None)
            return self._db.total_changes - before

    def _archive(self, archive_id: int) -> tuple[Path, bytes]:
        if archive_id not in self._files:
            path, schema_id = self._db.execute(
                "SELECT path, schema_id FROM archive WHERE id=?", (archive_id,)
            ).fetchone()
            self._files[archive_id] = (Path(path), wire_header(int(schema_id)))
        return self._files[archive_id]

    def pending(self, limit: int = 1000, *, after: int = 0) -> list[OutMessage]:
        """Up to ``limit`` pending messages with ``seq > after``, oldest first."""
        rows = self._db.execute(
            "SELECT seq, archive_id, topic, dia_source_id, dia_object_id, pos, length "
            "FROM message WHERE state=? AND seq>? ORDER BY seq LIMIT ?",
            (PENDING, after, limit),
        ).fetchall()
        out: list[OutMessage] = []
        handles: dict[int, object] = {}
        try:
            for seq, aid, topic, sid, oid, pos, length in rows:
                path, header = self._archive(aid)
                if aid not in handles:
                    try:
                        handles[aid] = open(path, "rb")  # noqa: SIM115
                    except OSError as exc:
                        raise BadFileError(
                            path, f"alert archive of pending messages is missing: {exc.strerror}"
                        ) from exc
                fh = handles[aid]
                fh.seek(pos)  # type: ignore[attr-defined]
                body = fh.read(length)  # type: ignore[attr-defined]
                if len(body) != length:
                    raise BadFileError(path, f"alert archive is truncated at byte {pos}")
                out.append(OutMessage(seq, topic, str(oid).encode(), header + body, sid))
        finally:
            for fh in handles.values():
                fh.close()  # type: ignore[attr-defined]
        return out

    def mark_delivered(self, deliveries: Sequence[Delivery]) -> int:
        """Record positive delivery reports, given in the order they arrived.

        Returns how many messages were queued again because a partition's log
        was found started anew (see the module notes).
        """
        if not deliveries:
            return 0
        requeued = 0
        now = time.time()
        with self._db:
            stored = {
                (t, p): int(o)
                for t, p, o in self._db.execute(
                    "SELECT topic, partition, max_offset FROM partition_log"
                )
            }
            last: dict[tuple[str, int], int] = {}
            kept: dict[tuple[str, int], list[Delivery]] = {}
            for d in deliveries:
                k = (d.topic, d.partition)
                prev = last.get(k, stored.get(k, -1))
                if d.offset <= prev:
                    # The partition's log restarted: everything acknowledged on
                    # it before, in the database or earlier in this batch, is gone.
                    cur = self._db.execute(
                        "UPDATE message SET state=?, partition=NULL, kafka_offset=NULL "
                        "WHERE topic=? AND partition=? AND state=?",
                        (PENDING, d.topic, d.partition, DELIVERED),
                    )
                    requeued += cur.rowcount + len(kept.get(k, []))
                    kept[k] = []
                    stored.pop(k, None)
                kept.setdefault(k, []).append(d)
                last[k] = d.offset
            good = [d for ds in kept.values() for d in ds]
            self._db.executemany(
                "UPDATE message SET state=?, delivered_at=?, partition=?, kafka_offset=?, "
                "attempts=attempts+1 WHERE seq=?",
                [(DELIVERED, now, d.partition, d.offset, d.seq) for d in good],
            )
            self._db.executemany(
                "INSERT INTO partition_log (topic, partition, max_offset) VALUES (?,?,?) "
                "ON CONFLICT(topic, partition) DO UPDATE SET max_offset=excluded.max_offset",
                [(t, p, o) for (t, p), o in last.items()],
            )
        return requeued

    def mark_sent_ahead(self, archive: Path, reports: Sequence[tuple[str, int, int, int]]) -> int:
        """Record reports of messages sent before their rows existed.

        Parameters
        ----------
        archive : Path
            The archive file the messages were queued from (:meth:`add_archive`).
        reports : sequence of tuple
            ``(topic, dia_source_id, partition, offset)`` in arrival order.

        Returns
        -------
        int
            Messages queued again because a partition's log restarted
            (as :meth:`mark_delivered`).
        """
        if not reports:
            return 0
        seqs = {
            (t, int(s)): int(q)
            for q, t, s in self._db.execute(
                "SELECT seq, topic, dia_source_id FROM message WHERE archive_id IN "
                "(SELECT id FROM archive WHERE path=?)",
                (str(Path(archive).resolve()),),
            )
        }
        return self.mark_delivered(
            [Delivery(seqs[(t, s)], t, p, o) for t, s, p, o in reports if (t, s) in seqs]
        )

    def mark_failed(self, seqs: Sequence[int]) -> None:
        """Count a failed attempt for each message (they are pending again)."""
        with self._db:
            self._db.executemany(
                "UPDATE message SET attempts=attempts+1, state=? WHERE seq=? AND state!=?",
                [(PENDING, s, DELIVERED) for s in seqs],
            )

    def mark_in_flight(self, seqs: Sequence[int]) -> None:
        """Record, before a batch is handed to the broker, that it may be acknowledged.

        Committed at once: a drainer killed after the acknowledgement leaves
        these rows for :meth:`resolve_in_flight` instead of pending.
        """
        with self._db:
            self._db.executemany(
                "UPDATE message SET state=? WHERE seq=? AND state=?",
                [(IN_FLIGHT, s, PENDING) for s in seqs],
            )

    def in_flight(self) -> dict[str, set[int]]:
        """diaSourceIds of the rows left in flight, by topic (a drainer died mid-batch)."""
        out: dict[str, set[int]] = {}
        for topic, sid in self._db.execute(
            "SELECT topic, dia_source_id FROM message WHERE state=?", (IN_FLIGHT,)
        ):
            out.setdefault(str(topic), set()).add(int(sid))
        return out

    def resolve_in_flight(self, found: Sequence[tuple[str, int, int, int]]) -> tuple[int, int]:
        """Settle the rows left in flight from what the broker's log holds.

        Parameters
        ----------
        found : sequence of tuple
            ``(topic, dia_source_id, partition, offset)`` of messages read back
            from the broker after the highest offsets recorded, in log order.

        Returns
        -------
        tuple of int
            (rows marked delivered, rows made pending again).
        """
        seqs = {
            (str(t), int(s)): int(q)
            for q, t, s in self._db.execute(
                "SELECT seq, topic, dia_source_id FROM message WHERE state=?", (IN_FLIGHT,)
            )
        }
        hits: dict[int, Delivery] = {}
        for t, s, p, o in sorted(found, key=lambda f: (f[0], f[2], f[3])):
            q = seqs.get((t, int(s)))
            if q is not None and q not in hits:  # the first copy in the log is the one
                hits[q] = Delivery(q, t, int(p), int(o))
        # mark_delivered wants the reports in log order per partition.
        self.mark_delivered(sorted(hits.values(), key=lambda d: (d.topic, d.partition, d.offset)))
        with self._db:
            back = self._db.execute(
                "UPDATE message SET state=? WHERE state=?", (PENDING, IN_FLIGHT)
            ).rowcount
        return len(hits), int(back)

    def drop_archive(self, archive: Path) -> None:
        """Forget the pending messages of an archive file (its visit was not stored)."""
        with self._db:
            self._db.execute(
                "DELETE FROM message WHERE state=? AND archive_id IN "
                "(SELECT id FROM archive WHERE path=?)",
                (PENDING, str(Path(archive).resolve())),
            )

    def requeue(self, *, visit: int | None = None, topic: str | None = None) -> int:
        """Queue delivered messages again (all, or of one visit and/or topic).

        For an operator who knows a broker lost data; consumers drop the
        duplicates by ``diaSourceId``.
        """
        sql = "UPDATE message SET state=? WHERE state=?"
        args: list[object] = [PENDING, DELIVERED]
        if topic is not None:
            sql += " AND topic=?"
            args.append(topic)
        if visit is not None:
            sql += " AND archive_id IN (SELECT id FROM archive WHERE visit=?)"
            args.append(visit)
        with self._db:
            n = self._db.execute(sql, args).rowcount
            if topic is None:
                self._db.execute("DELETE FROM partition_log")
            else:
                self._db.execute("DELETE FROM partition_log WHERE topic=?", (topic,))
        return int(n)

    def partition_logs(self) -> dict[tuple[str, int], int]:
        """The highest acknowledged offset of every (topic, partition) delivered to."""
        return {
            (str(t), int(p)): int(o)
            for t, p, o in self._db.execute(
                "SELECT topic, partition, max_offset FROM partition_log"
            )
        }

    def requeue_partition(self, topic: str, partition: int) -> int:
        """Queue again every message delivered to one partition (its log was lost)."""
        with self._db:
            n = self._db.execute(
                "UPDATE message SET state=?, partition=NULL, kafka_offset=NULL "
                "WHERE topic=? AND partition=? AND state=?",
                (PENDING, topic, partition, DELIVERED),
            ).rowcount
            self._db.execute(
                "DELETE FROM partition_log WHERE topic=? AND partition=?", (topic, partition)
            )
        return int(n)

    def counts(self) -> dict[str, int]:
        """``{"pending": n, "delivered": m}``."""
        rows = dict(self._db.execute("SELECT state, count(*) FROM message GROUP BY state"))
        # In flight is not delivered yet: it counts as pending.
        pending = int(rows.get(PENDING, 0)) + int(rows.get(IN_FLIGHT, 0))
        return {"pending": pending, "delivered": int(rows.get(DELIVERED, 0))}

    def topics(self) -> list[str]:
        """Every topic that has messages in the outbox."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT topic FROM message ORDER BY 1")]
