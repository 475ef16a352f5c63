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

2. **Table changelog writes can miss the transaction of their offset, or be split from their
   output.** Table writes are buffered (``send_soon``) and published by a background task, but in
   exactly-once mode Faust commits the offsets without draining that buffer first (at-least-once
   mode does flush), and the task keeps publishing while the commit runs. A crash then commits an
   offset whose state change sits in the next, aborted transaction, or commits a state with its
   completed marker while the completion itself lands in the next transaction (we saw both under
   ``kill -9``). :class:`CommitGate` closes the buffer at the commit: everything put before that
   moment is published and acknowledged, everything put after it waits until the commit is done.
   An agent writes its table and stages its outputs synchronously (no ``await`` in between), so a
   transaction holds all of an event's messages or none of them.

3. **Recovery reads no changelog after a rebalance** (the ``ConsistencyError ... (233 > -1)`` crash,
   or silently empty state). In exactly-once mode Faust takes a changelog's "highwater" from
   ``consumer.last_stable_offset(tp)``, which is unknown (``None``, taken as -1) for a partition the
   consumer has not fetched yet, i.e. every newly assigned one. :func:`install` asks the broker
   instead (``end_offsets`` with the consumer's read_committed isolation: the last stable offset).

4. **A transaction stays open across a rebalance.** On revocation Faust commits the acked offsets,
   but returns early when a periodic commit is in flight, and a transaction that holds table writes
   stays open while the retained partitions' tables are rebuilt from the (read_committed) changelog:
   the events are processed again and their completion is staged a second time in that same open
   transaction. Worse, Faust's consumer forgets the acked-but-uncommitted offsets of revoked
   partitions *before* the app's revoke handler commits, so those events' outputs commit without
   their offsets and the events run again (a stateless agent then publishes a second result).
   :func:`install` commits the acked offsets first, before Faust forgets them, and ends every
   transaction on revocation: drain, commit, then commit whatever transaction is still open.

With all of this in place, one transaction holds: the offsets, the state (completed marker) and the outputs.
Consumers must read with ``isolation.level=read_committed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, AsyncIterator, Optional

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


def _patch_revocation() -> None:
    """Commit acked offsets (through the gated, transactional commit) before Faust drops them."""
    from faust.transport.consumer import Consumer

    if getattr(Consumer, "_visionjobs_patched", False):
        return
    original = Consumer.on_partitions_revoked

    async def on_partitions_revoked(self: Any, revoked: Any) -> None:
        if revoked and self.app.in_transaction and not self.should_stop:
            await self.commit()
        return await original(self, revoked)

    Consumer.on_partitions_revoked = on_partitions_revoked
    Consumer._visionjobs_patched = True


def install(app: Any) -> None:
    """Patch this app's transaction manager once the worker has created it (idempotent)."""
    if getattr(app, "_visionjobs_eos_installed", False):
        return
    app._visionjobs_eos_installed = True
    _patch_highwaters()
    _patch_buffer_publishing()
    _patch_revocation()

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

        gate = CommitGate()

        trace = bool(os.environ.get("VISIONJOBS_TRACE_EOS"))

        async def commit(offsets: Any, start_new_transaction: bool = True) -> bool:
            async with gate.closed():
                if trace:
                    log.warning("EOSTRACE commit gate=%s offsets=%s", gate.hold_after,
                                sorted((tp.topic[-20:], tp.partition, o) for tp, o in offsets.items()))
                result = await original_commit(offsets, start_new_transaction=start_new_transaction)
                if trace:
                    log.warning("EOSTRACE committed gate=%s", gate.hold_after)
                return result

        buffer = app.producer.buffer
        original_put = buffer.put

        def put(fut: Any) -> None:
            gate.on_put(fut)
            if trace:
                m = fut.message
                log.warning("EOSTRACE put seq=%s %s p=%s key=%s", gate.seq, str(m.channel)[-30:], m.partition, m.key)
            original_put(fut)

        buffer.put = put
        buffer._visionjobs_gate = gate
        original_revoked = manager.on_partitions_revoked

        async def on_partitions_revoked(revoked: Any) -> None:
            await original_revoked(revoked)
            await end_all_transactions(app)

        manager.send = send
        manager.commit = commit
        manager.on_partitions_revoked = on_partitions_revoked
        log.info("exactly-once: transactional outputs %s, buffer drained before each commit",
                 sorted(outputs))



class CommitGate:
    """Splits the producer buffer at a commit: before the gate goes into this transaction, after it
    waits for the next one.

    The buffer is published in order by one task, so once the last message put before the gate is
    acknowledged, every earlier one is in the transactional producer's accumulator, which
    ``commit_transaction`` flushes before it ends the transaction; and nothing put after the gate
    reaches the producer until the commit is over.
    """

    def __init__(self) -> None:
        self.seq = 0
        self.last: Any = None
        self.hold_after: Optional[int] = None
        self.opened = asyncio.Event()
        self.opened.set()

    def on_put(self, fut: Any) -> None:
        self.seq += 1
        fut._visionjobs_seq = self.seq
        self.last = fut

    async def wait_turn(self, fut: Any) -> None:
        while self.hold_after is not None and getattr(fut, "_visionjobs_seq", 0) > self.hold_after:
            await self.opened.wait()

    @contextlib.asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        while self.hold_after is not None:  # one commit at a time
            await self.opened.wait()
        self.hold_after = self.seq
        self.opened.clear()
        last = self.last
        try:
            if last is not None and not last.done():
                await asyncio.shield(last)
            yield
        finally:
            self.hold_after = None
            self.opened.set()


def _patch_buffer_publishing() -> None:
    """Let the buffer's publishing task wait at the gate (class level: the task binds the method
    when the producer starts, before a worker has partitions)."""
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer, "_visionjobs_patched", False):
        return
    original = ProducerBuffer._send_pending

    async def _send_pending(self: Any, fut: Any) -> None:
        gate = getattr(self, "_visionjobs_gate", None)
        if gate is not None:
            await gate.wait_turn(fut)
        await original(self, fut)

    ProducerBuffer._send_pending = _send_pending
    ProducerBuffer._visionjobs_patched = True


async def end_all_transactions(app: Any) -> None:
    """Commit the acked offsets and every open transaction (called while partitions are revoked)."""
    consumer = app.consumer
    await consumer.maybe_wait_for_commit_to_finish()
    await consumer.commit(start_new_transaction=False)
    gate = getattr(app.producer.buffer, "_visionjobs_gate", None)
    if gate is not None:
        async with gate.closed():  # everything buffered so far is in the open transactions
            pass
    producer = consumer.transactions.producer
    for tid, txn_producer in list(getattr(producer, "_transaction_producers", {}).items()):
        manager = getattr(txn_producer, "_txn_manager", None)
        if manager is not None and manager.is_in_transaction():
            try:
                await txn_producer.commit_transaction()
            except Exception as exc:  # fenced or broken: the broker aborts it, which is safe too
                log.warning("could not end transaction %s on revocation: %r", tid, exc)

