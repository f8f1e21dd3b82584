"""The service's input messages: next-visit events and raw-arrival notifications.

Both are JSON documents on Kafka topics, checked against a JSON schema when
they are read (a malformed message is reported and skipped, never fatal):

* a **next-visit event** is sent by the scheduler before the exposure:
  the visit, its pointing, band, exposure time, expected start (Unix
  seconds) and, per detector, the expected centre of its footprint (from
  the camera geometry), so that workers can preload before the raw lands;
* a **raw-arrival notification** is sent by ingest (``skydm ingest
  --notify``) once a raw is safely in the repository.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from skydm.errors import BadValueError, require_extra

NEXT_VISIT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "skydm next-visit event",
    "type": "object",
    "required": [
        "kind",
        "instrument",
        "visit",
        "band",
        "ra",
        "dec",
        "exptime",
        "expected_time",
        "detectors",
    ],
    "properties": {
        "kind": {"const": "next_visit"},
        "instrument": {"type": "string", "minLength": 1},
        "visit": {"type": "integer", "minimum": 0},
        "band": {"type": "string", "minLength": 1},
        "ra": {"type": "number", "minimum": 0, "maximum": 360},
        "dec": {"type": "number", "minimum": -90, "maximum": 90},
        "exptime": {"type": "number", "exclusiveMinimum": 0},
        "expected_time": {"type": "number"},
        "detectors": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["detector", "ra", "dec"],
                "properties": {
                    "detector": {"type": "integer", "minimum": 0, "maximum": 1023},
                    "ra": {"type": "number", "minimum": 0, "maximum": 360},
                    "dec": {"type": "number", "minimum": -90, "maximum": 90},
                },
            },
        },
    },
}

RAW_ARRIVAL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "skydm raw-arrival notification",
    "type": "object",
    "required": ["kind", "instrument", "visit", "detector", "band", "time"],
    "properties": {
        "kind": {"const": "raw_arrival"},
        "instrument": {"type": "string", "minLength": 1},
        "visit": {"type": "integer", "minimum": 0},
        "detector": {"type": "integer", "minimum": 0},
        "band": {"type": "string"},
        "path": {"type": "string"},
        "time": {"type": "number"},
    },
}


@dataclass(frozen=True)
class DetectorPointing:
    """Where one detector of a visit is expected to look: its footprint's centre."""

    detector: int
    ra: float
    dec: float


@dataclass(frozen=True)
class NextVisit:
    """A next-visit event.

    Attributes
    ----------
    instrument, visit, band : str, int, str
        The visit's data ID parts.
    ra, dec : float
        Pointing, degrees.
    exptime : float
        Exposure time, seconds.
    expected_time : float
        When the exposure is expected to start (Unix seconds).
    detectors : tuple of DetectorPointing
        The detectors to process and their expected centres.
    """

    instrument: str
    visit: int
    band: str
    ra: float
    dec: float
    exptime: float
    expected_time: float
    detectors: tuple[DetectorPointing, ...]

    def to_json(self) -> bytes:
        """The event as JSON bytes."""
        doc = {
            "kind": "next_visit",
            "instrument": self.instrument,
            "visit": self.visit,
            "band": self.band,
            "ra": self.ra,
            "dec": self.dec,
            "exptime": self.exptime,
            "expected_time": self.expected_time,
            "detectors": [
                {"detector": d.detector, "ra": d.ra, "dec": d.dec} for d in self.detectors
            ],
        }
        return json.dumps(doc).encode()


@dataclass(frozen=True)
class RawArrival:
    """A raw-arrival notification: a detector's raw is in the repository."""

    instrument: str
    visit: int
    detector: int
    band: str
    time: float
    path: str = ""

    def to_json(self) -> bytes:
        """The notification as JSON bytes."""
        doc = {"kind": "raw_arrival", **self.__dict__}
        return json.dumps(doc).encode()


Event = NextVisit | RawArrival


def parse_event(data: bytes, *, where: str = "message") -> Event:
    """A next-visit event or raw-arrival notification from JSON bytes.

    Raises
    ------
    BadValueError
        Naming ``where``, the problem and the expected schema.
    """
    jsonschema = require_extra("jsonschema", "prompt")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise BadValueError(where, data[:80], f"a JSON document ({exc})") from exc
    kind = doc.get("kind") if isinstance(doc, dict) else None
    schema = {"next_visit": NEXT_VISIT_SCHEMA, "raw_arrival": RAW_ARRIVAL_SCHEMA}.get(str(kind))
    if schema is None:
        raise BadValueError(where, kind, 'an object with "kind" next_visit or raw_arrival')
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as exc:
        path = "/".join(map(str, exc.absolute_path)) or "(top)"
        raise BadValueError(f"{where} {kind} field {path}", exc.instance, exc.message) from exc
    if kind == "raw_arrival":
        return RawArrival(
            doc["instrument"], int(doc["visit"]), int(doc["detector"]), doc["band"],
            float(doc["time"]), doc.get("path", ""),
        )  # fmt: skip
    dets = tuple(
        DetectorPointing(int(d["detector"]), float(d["ra"]), float(d["dec"]))
        for d in doc["detectors"]
    )
    return NextVisit(
        doc["instrument"], int(doc["visit"]), doc["band"], float(doc["ra"]), float(doc["dec"]),
        float(doc["exptime"]), float(doc["expected_time"]), dets,
    )  # fmt: skip


class EventProducer:
    """Sends events to Kafka with an idempotent producer (``acks=all``).

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers.
    """

    def __init__(self, bootstrap: str) -> None:
        ck = require_extra("confluent_kafka", "alerts")
        from skydm.alerts.transport import KAFKA_LOG

        self.bootstrap = bootstrap
        self._producer = ck.Producer(
            {
                "bootstrap.servers": bootstrap,
                "logger": KAFKA_LOG,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
            }
        )
        self._errors: list[str] = []

    def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create the topics that do not exist yet (one partition: order matters)."""
        from skydm.alerts.transport import KafkaTransport

        KafkaTransport(self.bootstrap, partitions=1).ensure_topics(list(topics))

    def send(self, topic: str, events: Iterable[Event], *, timeout: float = 30.0) -> None:
        """Send events and wait until the broker acknowledged them all.

        Raises
        ------
        BrokerUnavailableError
            When an event was not acknowledged within ``timeout`` seconds.
        """
        from skydm.alerts.transport import broker_unreachable

        def report(err: Any, _msg: Any) -> None:
            if err is not None:
                self._errors.append(str(err))

        for event in events:
            key = f"{event.visit}".encode()
            self._producer.produce(topic, event.to_json(), key=key, on_delivery=report)
        left = self._producer.flush(timeout)
        if left or self._errors:
            errors, self._errors = self._errors, []
            why = f": {errors[0]}" if errors else ""
            raise broker_unreachable(
                self.bootstrap, f"{left} events unsent to {topic} after {timeout:.0f} s{why}"
            )

    def close(self) -> None:
        """Flush what is left."""
        self._producer.flush(5.0)


def arrival_of(data_id: Any, *, path: str = "", when: float | None = None) -> RawArrival:
    """The notification for a raw with this data ID (now, unless ``when``)."""
    return RawArrival(
        data_id.instrument, int(data_id.visit), int(data_id.detector), data_id.band,
        time.time() if when is None else when, path,
    )  # fmt: skip
