"""Exactly-once glue for faust-streaming 0.15.3, kept small and in one place.

Faust's ``processing_guarantee="exactly_once"`` runs one transactional producer per assigned source
partition and commits consumer offsets inside that partition's transaction. The gaps below remain upstream; each
one lost or duplicated completions in our ``kill -9`` and rebalance tests, and each is closed here:

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

5. **Events skipped after a rebalance are acknowledged as if processed.** A stream that takes an
   event of an older consumer generation, or one delivered while flow is suspended for a rebalance,
   skips it (the partition is sought back to its committed offset and the event comes again) but
   still acks it, into the new generation's bookkeeping. The next commit can then count that offset
   as done and jump over it while its second delivery is still queued; a ``kill -9`` before that
   delivery is processed and committed loses the event. (Found by reading Faust's stream loop while
   chasing a lost completion; ``tests/unit/test_eos.py`` shows Faust's ack taking such an event.)
   :func:`install` refuses acks of skipped events: only an event a stream actually handed to the
   agent (Faust marks it ``tracked``) can be acked.

   Related, outside this module: an exception escaping an agent makes Faust restart the agent and
   ack the event it crashed on, which loses it the same way (seen in the chaos soak: a changelog
   topic missing from the first assignment). The coordinator never lets one escape
   (``Coordinator.handle_safely``), and workers create their changelog topics before joining the
   group (``VisionApp.on_first_start``).

6. **Recovery can finish before it has read the changelog.** A changelog partition written under
   exactly-once ends with a transaction marker, so its last offset never arrives as a record; Faust
   ends the recovery of such a partition when the queue of changelog events has timed out twice and
   the consumer's *position* has reached the highwater. But the position moves as soon as a batch is
   fetched, before the fetch loop has handed its records on, and the timeout count is not reset when
   a new recovery starts. On a loaded machine a worker declared a partition recovered while its
   records were still in the fetch loop, ignored them, and started with the jobs of that partition
   missing (three completions in 2,400 lost in the chaos soak). :func:`install` makes the position
   that recovery sees stop at the first record the fetch loop has not handed on yet.

7. **A commit can jump over the first offset after the committed one.** Faust tracks the
   committed offset (the next one to read) and the acked offsets, and commits the first run of
   consecutive acked offsets; but its check that the run starts where the last commit ended
   tolerates one missing offset at the head (meant for a transaction marker sitting there). When
   the first event after a restart was fetched but never handled (skipped by the stream while
   flow was still being resumed), the next commit went straight past it: the event was lost (seen
   in the 10,000-job chaos soak: a restarted worker's state lacked the first result it should have
   re-read). :func:`install` makes that check strict, and registers a marker at the head as a known
   gap only when a fetch made after the seek shows that the first record lies beyond it. Gaps the
   fetch loop reports now start at the committed offset (Faust clamped them to committed + 1, which
   left a marker right after a commit uncounted) and no longer include the record about to be handled.

8. **Partition transactions commit one after another** (ours, for latency): Faust commits the
   transaction of each assigned partition in turn, three round trips each, so a commit of eight
   partitions took ~200 ms on the dev box and completions waited for it. Each partition's transaction
   holds only that partition's offsets, state and outputs, so :func:`install` commits them
   concurrently.

9. **Write-behind state** (ours, for throughput): tables registered with :func:`before_commit` keep
   their writes in memory and publish the latest value per key when the gate closes (see
   ``tables.jobs.PhaseStateTable``). Flushing at the gate, with no ``await`` between the flush and
   the split, keeps rule 2: an event's state and its outputs land in the same transaction.

10. **A worker reuses a fenced producer for a partition it gets back.** On a rebalance Faust stops
   the transactional producers of revoked partitions, but picks them by asking the *new* assignment
   which partitions are active: a revoked partition that the worker keeps as a standby is skipped,
   and its producer stays. The peer that takes the partition over fences that producer
   (InitProducerId), and when the partition comes back (the peer died: a failover) the worker
   begins a transaction on the stale producer: the first send is refused (``ProducerFenced``), the
   producer buffer crashes and the worker stops, with its completions. Seen with two coordinator
   workers, one SIGKILLed and not restarted (``scripts/bench_recovery.py --workers 2``: 3 of 3
   runs). On revocation :func:`install` stops every transactional producer after ending its
   transaction, so each assignment starts fresh ones.

With all of this in place, one transaction holds: the offsets, the state (completed marker) and the outputs.
Consumers must read with ``isolation.level=read_committed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, AsyncIterator, Callable, Optional

log = logging.getLogger(__name__)
_TRACE = bool(os.environ.get("VISIONJOBS_TRACE_EOS"))


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


def before_commit(app: Any, flush: Callable[[], Any]) -> None:
    """Register a synchronous callback that stages buffered writes (``send_soon``) right before a
    commit splits the producer buffer: exactly-once calls it inside :meth:`CommitGate.closed`,
    at-least-once at the start of every consumer commit (before Faust flushes the producer)."""
    _hooks(app).append(flush)


def _hooks(app: Any) -> list[Callable[[], Any]]:
    hooks = getattr(app, "_visionjobs_before_commit", None)
    if hooks is None:
        hooks = []
        app._visionjobs_before_commit = hooks
    return hooks


def run_before_commit(app: Any) -> None:
    for flush in _hooks(app):
        flush()


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
    original_commit = Consumer.commit

    async def on_partitions_revoked(self: Any, revoked: Any) -> None:
        if revoked and self.app.in_transaction and not self.should_stop:
            await self.commit()
        return await original(self, revoked)

    async def commit(self: Any, *args: Any, **kwargs: Any) -> bool:
        if not self.app.in_transaction:  # exactly-once flushes inside the gate instead
            run_before_commit(self.app)
        return await original_commit(self, *args, **kwargs)

    Consumer.on_partitions_revoked = on_partitions_revoked
    Consumer.commit = commit
    Consumer._visionjobs_patched = True


def _patch_stale_acks() -> None:
    """Only events a stream handed to the agent (``tracked``) may be acked while a rebalance is
    under way or after it; an untracked one was skipped as stale and will be fetched again."""
    from faust.transport.consumer import Consumer

    if getattr(Consumer.ack, "_visionjobs_patched", False):
        return
    original = Consumer.ack

    def ack(self: Any, message: Any) -> bool:
        if not message.tracked and is_stale(self.app, message):
            if _TRACE:
                log.warning("EOSTRACE refused ack of skipped %s p=%s o=%s gen=%s/%s", message.topic[-22:],
                            message.partition, message.offset, message.generation_id,
                            self.app.consumer_generation_id)
            return False
        return original(self, message)

    ack._visionjobs_patched = True  # type: ignore[attr-defined]
    Consumer.ack = ack


def _patch_delivered_position() -> None:
    """``Consumer.position`` as recovery needs it: not past a fetched record the fetch loop has not
    handed on yet (aiokafka's position moves when a batch is fetched)."""
    from faust.transport.consumer import Consumer, ThreadDelegateConsumer

    if getattr(Consumer, "_visionjobs_position_patched", False):
        return
    original_wait, original_getmany = Consumer._wait_next_records, Consumer.getmany
    original_position = ThreadDelegateConsumer.position

    def undelivered(consumer: Any) -> dict:
        pending = consumer.__dict__.get("_visionjobs_undelivered")
        if pending is None:
            pending = consumer.__dict__["_visionjobs_undelivered"] = {}
        return pending

    async def _wait_next_records(self: Any, timeout: float) -> Any:
        records, active = await original_wait(self, timeout)
        if records:
            pending = undelivered(self)
            for tp, batch in records.items():
                if batch and tp not in pending:
                    pending[tp] = batch[0].offset
        return records, active

    async def getmany(self: Any, timeout: float) -> AsyncIterator[Any]:
        pending = undelivered(self)
        try:
            async for tp, message in original_getmany(self, timeout):
                pending[tp] = message.offset
                yield tp, message
                pending[tp] = message.offset + 1  # handed on: the fetch loop asks for the next one
        finally:
            pending.clear()  # the batch is done (or dropped: a rebalance restarts recovery anyway)

    async def position(self: Any, tp: Any) -> Optional[int]:
        real = await original_position(self, tp)
        first_undelivered = undelivered(self).get(tp)
        if real is None or first_undelivered is None:
            return real
        return min(real, first_undelivered)

    Consumer._wait_next_records = _wait_next_records
    Consumer.getmany = getmany
    ThreadDelegateConsumer.position = position
    Consumer._visionjobs_position_patched = True


def _patch_commit_head() -> None:
    """Commit only from the committed offset on: the first offset after it must have been handled,
    or be a known gap (a transaction marker or aborted records, seen by a fetch made after the seek)."""
    from faust.transport.consumer import Consumer
    from faust.utils.functional import consecutive_numbers

    if getattr(Consumer, "_visionjobs_head_patched", False):
        return
    original_perform_seek, original_seek = Consumer.perform_seek, Consumer.seek
    original_wait, original_getmany = Consumer._wait_next_records, Consumer.getmany

    def heads(consumer: Any) -> dict:
        h = consumer.__dict__.get("_visionjobs_heads")
        if h is None:
            h = consumer.__dict__["_visionjobs_heads"] = {}
            consumer.__dict__["_visionjobs_seeks"] = 0
        return h

    async def perform_seek(self: Any) -> None:
        await original_perform_seek(self)
        h = heads(self)
        self.__dict__["_visionjobs_seeks"] += 1
        h.clear()
        h.update({tp: offset for tp, offset in self._committed_offset.items() if offset is not None})
        self.__dict__.setdefault("_visionjobs_last", {}).clear()

    async def seek(self: Any, partition: Any, offset: int) -> None:
        await original_seek(self, partition, offset)
        heads(self)[partition] = offset
        self.__dict__.setdefault("_visionjobs_last", {}).pop(partition, None)
        self.__dict__["_visionjobs_seeks"] += 1

    async def _wait_next_records(self: Any, timeout: float) -> Any:
        result = await original_wait(self, timeout)
        heads(self)
        self.__dict__["_visionjobs_batch_seeks"] = self.__dict__["_visionjobs_seeks"]
        return result

    async def getmany(self: Any, timeout: float) -> AsyncIterator[Any]:
        h = heads(self)
        last = self.__dict__.setdefault("_visionjobs_last", {})
        async for tp, message in original_getmany(self, timeout):
            if self.__dict__.get("_visionjobs_batch_seeks") == self.__dict__["_visionjobs_seeks"]:
                # fetched after the last seek: offsets skipped since the seek offset, or since the
                # previous record, are transaction markers or aborted records (Faust's own fetch loop
                # misses the gap after a record at offset 0, and the one at the head after a seek)
                head = h.pop(tp, None)
                start = head if head is not None else (last[tp] + 1 if tp in last else None)
                if start is not None and message.offset > start:
                    self._gap[tp].addi(start, message.offset)
                if message.offset >= last.get(tp, -1):
                    last[tp] = message.offset
            yield tp, message

    def _new_offset(self: Any, tp: Any) -> Optional[int]:
        acked = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gap_for_tp = self._gap[tp]
        if gap_for_tp:
            candidates = sorted(gap_for_tp.overlap(0, max_offset + 1), key=lambda iv: iv.begin)
            if candidates:
                filled = [o for iv in candidates for o in range(iv.begin, iv.end) if o not in self._acked_index[tp]]
                acked.extend(filled)
                self._acked_index[tp].update(filled)
                gap_for_tp.chop(0, max(max_offset + 1, candidates[-1].end))
        acked.sort()
        committed = self._committed_offset[tp]
        if committed is not None and acked[0] > committed:
            return None  # the offset right after the last commit is neither handled nor a known gap
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return batch[-1] + 1

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        # The fetch loop saw ``offset_to`` right after ``offset_from - 1``: the offsets in between are
        # transaction markers or aborted records. Faust clamps the gap to committed + 1 (as if the
        # committed offset were the last one processed; it is the next one to read) and counts
        # ``offset_to`` itself, the record about to be handled, as done.
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed)
        if offset_from < offset_to:
            gap_for_tp = self._gap[tp]
            gap_for_tp.addi(offset_from, offset_to)
            await asyncio.sleep(0)
            gap_for_tp.merge_overlaps()

    Consumer._add_gap = _add_gap
    Consumer.perform_seek = perform_seek
    Consumer.seek = seek
    Consumer._wait_next_records = _wait_next_records
    Consumer.getmany = getmany
    Consumer._new_offset = _new_offset
    Consumer._visionjobs_head_patched = True


def _patch_concurrent_commits() -> None:
    """Commit the per-partition transactions concurrently (each is self-contained)."""
    from faust.transport.drivers.aiokafka import Producer

    if getattr(Producer, "_visionjobs_concurrent_commits", False):
        return

    async def commit_transactions(self: Any, tid_to_offset_map: Any, group_id: str,
                                  start_new_transaction: bool = True) -> None:
        async def commit_one(transactional_id: str, offsets: Any) -> None:
            async with self._trn_locks[transactional_id]:
                producer = self._transaction_producers.get(transactional_id)
                if producer is None:
                    log.warning("Commit invoked for unknown transaction %s", transactional_id)
                    return
                await producer.send_offsets_to_transaction(offsets, group_id)
                await producer.commit_transaction()
                if start_new_transaction:
                    await producer.begin_transaction()

        await asyncio.gather(*(commit_one(tid, offsets) for tid, offsets in tid_to_offset_map.items()))

    Producer.commit_transactions = commit_transactions
    Producer._visionjobs_concurrent_commits = True


def is_stale(app: Any, message: Any) -> bool:
    """What Faust's stream skips: a message of an older generation, or any while flow is suspended."""
    return message.generation_id != app.consumer_generation_id or not app.flow_control.is_active()


def install(app: Any) -> None:
    """Patch this app's transaction manager once the worker has created it (idempotent)."""
    if getattr(app, "_visionjobs_eos_installed", False):
        return
    app._visionjobs_eos_installed = True
    _patch_highwaters()
    _patch_buffer_publishing()
    _patch_revocation()
    _patch_stale_acks()
    _patch_delivered_position()
    _patch_commit_head()
    _patch_concurrent_commits()

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

        gate = CommitGate(before_close=lambda: run_before_commit(app))

        trace = _TRACE

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

    def __init__(self, before_close: Optional[Callable[[], Any]] = None) -> None:
        self.before_close = before_close
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
        if self.before_close is not None:
            self.before_close()  # write-behind state joins this side of the split (no await before it)
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
    producers = getattr(producer, "_transaction_producers", {})
    for tid, txn_producer in list(producers.items()):
        manager = getattr(txn_producer, "_txn_manager", None)
        if manager is not None and manager.is_in_transaction():
            try:
                await txn_producer.commit_transaction()
            except Exception as exc:  # fenced or broken: the broker aborts it, which is safe too
                log.warning("could not end transaction %s on revocation: %r", tid, exc)
    # Item 10: stop them all; the assignment that follows starts a fresh producer (InitProducerId)
    # for every partition group this worker gets. Faust stops only those whose partitions are not
    # standbys in the *new* assignment, and a kept producer is fenced by the peer that took over.
    await stop_transactional_producers(producers)


async def stop_transactional_producers(producers: dict) -> None:
    """Remove and stop every transactional producer of Faust's aiokafka driver (``producers`` is
    its ``_transaction_producers``); a later ``begin_transaction`` of a tid creates a new one."""
    for tid in list(producers):
        txn_producer = producers.pop(tid)
        try:
            await txn_producer.stop()
        except Exception as exc:  # noqa: BLE001 - a broken producer is gone either way
            log.warning("could not stop transactional producer %s on revocation: %r", tid, exc)

