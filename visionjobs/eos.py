"""Exactly-once glue for faust-streaming 0.15.3, kept small and in one place.

Faust's ``processing_guarantee="exactly_once"`` runs one transactional producer per assigned source
partition and commits consumer offsets inside that partition's transaction. Two gaps remain upstream,
and each one loses or duplicates completions after a ``kill -9``; both are closed here:

1. **Sends to topics the app does not consume leave the transaction** (faust-streaming issue #177).
   ``TransactionManager.send`` derives the transactional id from the *output* topic's partition group;
   for a topic the worker does not subscribe to there is none, so the message goes out on the plain
   producer and is visible even when the transaction that produced it aborts. Our outputs
   (completions, dead letters) are co-partitioned with the inputs, so :class:`CoPartitionedOutput`
   sends each message to the source event's partition number, and :func:`install` routes it through
   the transactional producer of that source partition: the output commits or aborts together with
   the table write and the input offset.

2. **Table changelog writes can miss the transaction of their offset.** Table writes are buffered
   (``send_soon``) and drained by a background task, but in exactly-once mode Faust commits the
   offsets without draining that buffer first (at-least-once mode does flush). A crash then commits
   an offset whose state change sits in the next, aborted transaction. :func:`install` drains every
   message buffered before the commit into the transaction before committing it. Because an agent
   writes its table and stages its outputs synchronously (no ``await`` in between), a commit sees
   either both or neither.

3. **Recovery reads no changelog after a rebalance** (the ``ConsistencyError ... (233 > -1)`` crash,
   or silently empty state). In exactly-once mode Faust takes a changelog's "highwater" from
   ``consumer.last_stable_offset(tp)``, which is unknown (``None``, taken as -1) for a partition the
   consumer has not fetched yet, i.e. every newly assigned one. :func:`install` asks the broker
   instead (``end_offsets`` with the consumer's read_committed isolation: the last stable offset).

4. **A transaction stays open across a rebalance.** On revocation Faust commits the acked offsets,
   but returns early when a periodic commit is in flight, and a transaction that holds table writes
   stays open while the retained partitions' tables are rebuilt from the (read_committed) changelog:
   the events are processed again and their completion is staged a second time in that same open
   transaction. :func:`install` ends every transaction on revocation: drain, commit the acked
   offsets, then commit whatever transaction is still open (its writes are idempotent to replay).

With all four in place, one transaction holds: the offsets, the state (completed marker) and the outputs.
Consumers must read with ``isolation.level=read_committed``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

log = logging.getLogger(__name__)


class CoPartitionedOutput:
    """An output topic keyed like the input: messages go to the source event's partition number."""

    def __init__(self, app: Any, topic: Any, source_topic: str) -> None:
        self.app = app
        self.topic = topic
        self.name: str = topic.get_topic_name()
        self.source_topic = source_topic
        _outputs(app)[self.name] = source_topic

    def stage(self, event: Any, key: Optional[bytes], value: bytes) -> None:
        """Queue the message behind the table writes already made for ``event`` (synchronous)."""
        self.topic.send_soon(key=key, value=value, partition=event.message.partition)


def _outputs(app: Any) -> dict[str, str]:
    outputs = getattr(app, "_visionjobs_outputs", None)
    if outputs is None:
        outputs = {}
        app._visionjobs_outputs = outputs
    return outputs


def _patch_highwaters() -> None:
    from faust.transport.drivers import aiokafka as driver

    thread_cls = driver.AIOKafkaConsumerThread
    if getattr(thread_cls, "_visionjobs_patched", False):
        return

    async def _highwaters(self: Any, partitions: Any) -> Any:
        # read_committed consumers get the last stable offset from ListOffsets
        return await self._ensure_consumer().end_offsets(partitions)

    thread_cls._highwaters = _highwaters
    thread_cls._visionjobs_patched = True


def install(app: Any) -> None:
    """Patch this app's transaction manager once the worker has created it (idempotent)."""
    if getattr(app, "_visionjobs_eos_installed", False):
        return
    app._visionjobs_eos_installed = True
    _patch_highwaters()

    @app.on_partitions_assigned.connect
    async def _patch(*_: Any, **__: Any) -> None:
        if not app.in_transaction:
            return
        manager = app.consumer.transactions
        if getattr(manager, "_visionjobs_patched", False):
            return
        manager._visionjobs_patched = True
        outputs = _outputs(app)
        original_send = manager.send
        original_commit = manager.commit

        async def send(topic: str, key: Any, value: Any, partition: Optional[int], timestamp: Any,
                       headers: Any, *, transactional_id: Optional[str] = None) -> Any:
            source = outputs.get(topic)
            if source is not None and partition is not None:
                group = app.assignor.group_for_topic(source)
                tid = f"{app.conf.id}-{group}-{partition}"
                return await manager.producer.send(topic, key, value, partition, timestamp, headers,
                                                   transactional_id=tid)
            return await original_send(topic, key, value, partition, timestamp, headers,
                                       transactional_id=transactional_id)

        async def commit(offsets: Any, start_new_transaction: bool = True) -> bool:
            await drain_buffer(app)
            return await original_commit(offsets, start_new_transaction=start_new_transaction)

        buffer = app.producer.buffer
        original_put = buffer.put

        def put(fut: Any) -> None:
            buffer._visionjobs_last = fut
            original_put(fut)

        buffer.put = put
        original_revoked = manager.on_partitions_revoked

        async def on_partitions_revoked(revoked: Any) -> None:
            await original_revoked(revoked)
            await end_all_transactions(app)

        manager.send = send
        manager.commit = commit
        manager.on_partitions_revoked = on_partitions_revoked
        log.info("exactly-once: transactional outputs %s, buffer drained before each commit",
                 sorted(outputs))



async def drain_buffer(app: Any) -> None:
    """Wait until every message buffered so far has been handed to the producer.

    The buffer is drained in order by one task, so once the last message put so far is acknowledged,
    every earlier one is at least in the transactional producer's accumulator, which
    ``commit_transaction`` flushes before it ends the transaction.
    """
    last = getattr(app.producer.buffer, "_visionjobs_last", None)
    if last is not None and not last.done():
        await asyncio.shield(last)


async def end_all_transactions(app: Any) -> None:
    """Commit the acked offsets and every open transaction (called while partitions are revoked)."""
    consumer = app.consumer
    await drain_buffer(app)
    await consumer.maybe_wait_for_commit_to_finish()
    await consumer.commit(start_new_transaction=False)
    producer = consumer.transactions.producer
    for tid, txn_producer in list(getattr(producer, "_transaction_producers", {}).items()):
        manager = getattr(txn_producer, "_txn_manager", None)
        if manager is not None and manager.is_in_transaction():
            try:
                await txn_producer.commit_transaction()
            except Exception as exc:  # fenced or broken: the broker aborts it, which is safe too
                log.warning("could not end transaction %s on revocation: %r", tid, exc)

