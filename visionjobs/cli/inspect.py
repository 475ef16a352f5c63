"""``visionjobs inspect TOPIC``: print each message of a topic as one JSON object, decoded with the
Avro schemas (the Avro-aware companion to Kafka's console consumer). Reads read_committed."""

from __future__ import annotations

import json
import sys
import time
import uuid

import click

from ..settings import get_settings


def _physical(name: str) -> str:
    from ..topics import BY_NAME, topic_name

    settings = get_settings()
    return topic_name(settings, name) if name in BY_NAME else name


def message_to_json(msg, codec) -> dict:
    from ..codec import CodecError, to_jsonable

    ts_type, ts = msg.timestamp()
    out = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
           "timestamp_ms": ts if ts_type else None,
           "key": msg.key().decode("utf-8", "replace") if msg.key() is not None else None}
    try:
        schema, value = codec.decode_dict(msg.value(), topic=msg.topic())
        out["schema"] = schema
        out["value"] = to_jsonable(value)
    except CodecError as exc:
        out["error"] = str(exc)
        out["raw_hex"] = (msg.value() or b"")[:256].hex()
    return out


@click.command("inspect")
@click.argument("topic")
@click.option("--max", "max_messages", type=int, default=0, help="stop after N messages (0: no limit)")
@click.option("--idle", type=float, default=3.0, show_default=True,
              help="stop after this many seconds without a message (0: follow forever)")
@click.option("--key", default=None, help="only messages with this key (job_id)")
@click.option("--uncommitted", is_flag=True, help="read_uncommitted (default: read_committed)")
def inspect_cmd(topic: str, max_messages: int, idle: float, key: str | None, uncommitted: bool) -> None:
    """Print TOPIC's messages as JSON lines, decoded with the Avro contract.

    TOPIC is a contract name (prefixed with VISIONJOBS_TOPIC_PREFIX) or any physical topic name.
    """
    from confluent_kafka import Consumer, TopicPartition

    from ..codec import get_codec

    settings = get_settings()
    name = _physical(topic)
    consumer = Consumer({
        "bootstrap.servers": settings.bootstrap_servers, "group.id": f"visionjobs-inspect-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_uncommitted" if uncommitted else "read_committed"})
    md = consumer.list_topics(name, timeout=10).topics.get(name)
    if md is None or md.error is not None:
        raise click.ClickException(f"topic {name} does not exist")
    consumer.assign([TopicPartition(name, p, 0) for p in md.partitions])
    codec = get_codec()
    seen = 0
    last = time.monotonic()
    try:
        while True:
            msg = consumer.poll(0.2)
            if msg is None:
                if idle and time.monotonic() - last > idle:
                    break
                continue
            if msg.error():
                continue
            last = time.monotonic()
            if key is not None and (msg.key() or b"").decode("utf-8", "replace") != key:
                continue
            sys.stdout.write(json.dumps(message_to_json(msg, codec)) + "\n")
            sys.stdout.flush()
            seen += 1
            if max_messages and seen >= max_messages:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@click.command("produce-test-batch")
@click.option("--job-id", default=None, help="job id (default: a new uuid)")
@click.option("--total", type=int, default=3, show_default=True)
def produce_test_batch(job_id: str | None, total: int) -> None:
    """Publish one products.images.ready.batch event (a test helper for trying ``inspect``)."""
    from ..codec import get_codec
    from ..product_finder import make_producer
    from ..records import ProductsImagesReadyBatch
    from ..topics import IMAGES_READY_BATCH, topic_name

    settings = get_settings()
    job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
    producer = make_producer(settings)
    record = ProductsImagesReadyBatch(job_id, str(uuid.uuid4()), total)
    producer.produce(topic_name(settings, IMAGES_READY_BATCH), key=job_id.encode(), value=get_codec().encode(record))
    if producer.flush(30):
        raise click.ClickException("batch event not delivered")
    click.echo(json.dumps({"job_id": job_id, "event_id": record.event_id, "total_images": total}))
