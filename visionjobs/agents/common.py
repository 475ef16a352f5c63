"""Pieces every agent shares: topic declaration, decoding with dead-lettering, timestamps."""

from __future__ import annotations

import logging
from typing import Any, Optional

from .. import metrics
from ..codec import CodecError, get_codec
from ..domain.validation import InvalidEvent, validate
from ..eos import CoPartitionedOutput
from ..records import AvroRecord, DeadLetter, utcnow
from ..settings import Settings
from ..topics import BY_NAME, DEAD_LETTER, topic_name

log = logging.getLogger(__name__)


def declare_topic(app: Any, settings: Settings, name: str) -> Any:
    """A raw-bytes Faust topic of the contract, with the contract's partition count and config."""
    spec = BY_NAME[name]
    config = {}
    if spec.retention_ms is not None:
        config["retention.ms"] = str(spec.retention_ms)
    return app.topic(
        topic_name(settings, name),
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        partitions=settings.partitions, compacting=spec.compacted or None,
        config=config or None,
    )


def event_millis(event: Any) -> int:
    """The Kafka timestamp of the event, in ms (deterministic on replay: it is stored in the log)."""
    ts = event.message.timestamp
    return int(ts * 1000) if ts is not None else int(utcnow().timestamp() * 1000)


class DeadLetters:
    """Sends unprocessable input to ``visionjobs.dead-letter`` inside the input's transaction."""

    def __init__(self, app: Any, settings: Settings, role: str, source_topic: str) -> None:
        self.role = role
        self.output = CoPartitionedOutput(app, declare_topic(app, settings, DEAD_LETTER), source_topic)

    def send(self, event: Any, reason: str, message: str) -> None:
        msg = event.message
        record = DeadLetter(
            source_topic=msg.topic, partition=msg.partition, offset=msg.offset,
            key=msg.key, value=msg.value if msg.value is not None else b"",
            error=f"{reason}: {message} [consumer={self.role}]", failed_at=utcnow())
        metrics.DEAD_LETTERS.labels(self.role, reason).inc()
        log.warning("dead-lettered %s[%s]@%s: %s: %s", msg.topic, msg.partition, msg.offset, reason, message,
                    extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
                           "reason": reason, "role": self.role})
        self.output.stage(event, msg.key, get_codec().encode(record))


def decode_or_dead_letter(event: Any, dead_letters: DeadLetters, expect: Optional[str] = None) -> Optional[AvroRecord]:
    """Decode and validate the event's value; on failure dead-letter it and return None."""
    msg = event.message
    try:
        record = get_codec().decode(msg.value, topic=msg.topic, expect=expect)
        validate(record, key=msg.key)
        return record
    except (CodecError, InvalidEvent) as exc:
        dead_letters.send(event, exc.reason, str(exc))
        return None
