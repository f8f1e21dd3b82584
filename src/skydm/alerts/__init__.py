"""Alert packets in the official LSST schema, their archive, and their distribution over Kafka.

The entry point for a pipeline or demo is :func:`produce_visit_alerts`.
"""

from skydm.alerts.consumer import AlertConsumer, DedupStore, ReceivedAlert
from skydm.alerts.outbox import Outbox
from skydm.alerts.packet import AlertValidationError, build_record
from skydm.alerts.produce import VisitAlerts, produce_visit_alerts
from skydm.alerts.schema import AlertSchema, available_versions, latest_version, load_schema
from skydm.alerts.serialize import PacketEncoder, decode, parse_wire
from skydm.alerts.transport import AlertTransport, KafkaTransport, stream_outbox

__all__ = [
    "AlertConsumer",
    "AlertSchema",
    "AlertTransport",
    "AlertValidationError",
    "DedupStore",
    "KafkaTransport",
    "Outbox",
    "PacketEncoder",
    "ReceivedAlert",
    "VisitAlerts",
    "available_versions",
    "build_record",
    "decode",
    "latest_version",
    "load_schema",
    "parse_wire",
    "produce_visit_alerts",
    "stream_outbox",
]
