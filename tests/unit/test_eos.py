"""The commit gate splits the producer buffer at a commit: messages put before the gate are
published (and acknowledged) before the commit runs, messages put after it wait for the commit."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from visionjobs.eos import CommitGate


@pytest.fixture
def app(tmp_path):
    """A worker app that never connects (exactly-once patches installed), acking every topic."""
    from visionjobs.app import create_app
    from visionjobs.settings import Settings

    app = create_app("unit", Settings(bootstrap_servers="127.0.0.1:1", web_enabled=False,
                                      data_dir=tmp_path, app_id_prefix=f"unit{uuid.uuid4().hex[:6]}"))
    app.topics.acks_enabled_for = lambda topic: True  # the agent's topics ack (no worker running here)
    return app


class FakeFuture(asyncio.Future):
    pass


def test_gate_orders_publishing_around_a_commit():
    async def scenario():
        gate = CommitGate()
        published: list[str] = []
        queue: asyncio.Queue = asyncio.Queue()

        async def publisher():  # plays Faust's single buffer task
            while True:
                name, fut = await queue.get()
                await gate.wait_turn(fut)
                published.append(name)
                await asyncio.sleep(0.01)  # the broker acknowledges later
                fut.set_result(None)

        def put(name):
            fut = FakeFuture()
            gate.on_put(fut)
            queue.put_nowait((name, fut))

        task = asyncio.create_task(publisher())
        put("state-e1")
        put("completion-e1")
        committed_with: list[str] = []

        async def commit():
            async with gate.closed():
                committed_with.extend(published)
                # an event processed while the commit runs: both of its messages wait
                put("state-e2")
                put("completion-e2")
                await asyncio.sleep(0.05)
                assert published == ["state-e1", "completion-e1"]

        await commit()
        await asyncio.sleep(0.05)
        task.cancel()
        return committed_with, published

    committed_with, published = asyncio.run(scenario())
    assert committed_with == ["state-e1", "completion-e1"]
    assert published == ["state-e1", "completion-e1", "state-e2", "completion-e2"]


def test_write_behind_state_joins_the_commit_it_is_flushed_in():
    """``before_close`` stages write-behind state at the instant of the split: state flushed there is in
    this commit, together with the completion put before it; the next event's messages are not."""

    async def scenario():
        published: list[str] = []
        queue: asyncio.Queue = asyncio.Queue()
        dirty: list[str] = []

        def put(name):
            fut = FakeFuture()
            gate.on_put(fut)
            queue.put_nowait((name, fut))

        def flush():
            while dirty:
                put(dirty.pop(0))

        gate = CommitGate(before_close=flush)

        async def publisher():
            while True:
                name, fut = await queue.get()
                await gate.wait_turn(fut)
                published.append(name)
                await asyncio.sleep(0.01)
                fut.set_result(None)

        task = asyncio.create_task(publisher())
        put("completion-e1")  # staged while e1 was processed; its state only marked dirty
        dirty.append("state-e1")
        async with gate.closed():
            in_commit = list(published)
            put("completion-e2")
            dirty.append("state-e2")
        after = gate.seq
        async with gate.closed():
            second = list(published)
        task.cancel()
        return in_commit, second, after

    in_commit, second, after = asyncio.run(scenario())
    assert in_commit == ["completion-e1", "state-e1"]
    assert second == ["completion-e1", "state-e1", "completion-e2", "state-e2"] and after == 3


def _message(offset: int, generation_id: int, tracked: bool):
    from faust.types.tuples import Message

    msg = Message(topic="unit.products.images.ready.batch", partition=2, offset=offset, timestamp=0.0,
                  timestamp_type=0, headers=None, key=b"job", value=b"v", checksum=None,
                  generation_id=generation_id)
    msg.tracked = tracked
    return msg


class FakeFetcher:
    """Stands in for Faust's aiokafka consumer thread on one partition: each ``getmany`` hands out the
    next batch of offsets; ``position`` is aiokafka's (the next offset it would fetch)."""

    def __init__(self, tp, batches=(), position=None):
        self.tp, self.batches, self.position_after_fetch = tp, list(batches), position

    async def getmany(self, active_partitions, timeout):
        from aiokafka.structs import ConsumerRecord

        return {self.tp: [ConsumerRecord(self.tp.topic, self.tp.partition, o, 0, 0, b"job", b"v", None, 3, 1, [])
                          for o in self.batches.pop(0)]}

    def seek(self, partition, offset):
        pass

    def highwater(self, tp):
        return 10_000

    async def position(self, tp):
        return self.position_after_fetch


def fetching_consumer(app, tp, batches=(), position=None):
    """The app's real Faust consumer (our patches installed), fetching from a :class:`FakeFetcher`."""
    consumer = app.consumer
    fetcher = FakeFetcher(tp, batches, position)
    consumer._thread = fetcher
    consumer._get_active_partitions = lambda: {tp}
    consumer.flow_active = True
    return consumer, fetcher


def ack_handled(app, tp, offset):
    """Ack an event the agent handled (tracked, current generation) at ``offset`` of ``tp``."""
    msg = _message(offset, generation_id=app.consumer_generation_id, tracked=True)
    msg.tp, msg.partition, msg.topic = tp, tp.partition, tp.topic
    assert app.consumer.ack(msg)


def test_an_event_skipped_after_a_rebalance_is_not_acked(app):
    """Faust's stream skips (but acks) an event of an older generation: that ack would let the next
    commit jump over an offset whose second delivery is not processed yet."""
    app.consumer_generation_id = 7
    app.flow_control.resume()
    consumer = app.consumer
    stale = _message(10, generation_id=6, tracked=False)  # fetched before the rebalance, skipped
    assert consumer.ack(stale) is False and not consumer._acked
    skipped_while_suspended = _message(11, generation_id=7, tracked=False)
    app.flow_control.suspend()
    assert consumer.ack(skipped_while_suspended) is False and not consumer._acked
    processed = _message(12, generation_id=7, tracked=True)  # handed to the agent: acks as always
    assert consumer.ack(processed) is True
    app.flow_control.resume()
    unsubscribed = _message(13, generation_id=7, tracked=False)  # current and flowing: Faust's own rule
    assert consumer.ack(unsubscribed) is True
    assert [list(v) for v in consumer._acked.values()] == [[12, 13]]


def test_recovery_sees_no_position_past_records_the_fetch_loop_has_not_handed_on(app):
    """aiokafka's position moves when a batch is fetched; Faust's recovery ends a changelog partition
    when the position reaches the highwater. Until the fetch loop has handed every fetched record on,
    the position it sees must stay at the first record not handed on."""
    from faust.types import TP

    tp = TP("unit-coordinator-keypoints-changelog", 0)
    # aiokafka, after fetching 566..568: the next offset to fetch is 569
    consumer, _ = fetching_consumer(app, tp, [[566, 567, 568]], position=569)

    async def scenario():
        seen = []
        ait = consumer.getmany(timeout=1.0).__aiter__()
        _, first = await ait.__anext__()
        seen.append(await consumer.position(tp))  # 566 is being handed on: nothing of the batch is done
        _, second = await ait.__anext__()
        seen.append(await consumer.position(tp))  # 566 handed on, 567 in flight
        async for _ in ait:
            pass
        seen.append(await consumer.position(tp))  # the whole batch handed on: aiokafka's position
        return seen

    assert asyncio.run(scenario()) == [566, 567, 569]


def test_a_commit_never_jumps_over_the_offset_after_the_last_commit(app):
    """Faust tolerated one missing offset right after the committed one (for a transaction marker
    there), so an event fetched but never handled after a restart was committed past. Now the head
    must be handled, or shown to be a gap by a fetch made after the seek."""
    from faust.types import TP

    app.flow_control.resume()
    tp = TP("unit.image.keypoints.result", 3)
    consumer, fetcher = fetching_consumer(app, tp)

    def ack(offset):
        ack_handled(app, tp, offset)

    async def fetch_all():
        async for _ in consumer.getmany(timeout=1.0):
            pass

    async def scenario():
        # restart: committed 5465; the event at 5465 was fetched but skipped, 5466.. were handled
        consumer._committed_offset[tp] = 5465
        for o in (5466, 5467):
            ack(o)
        held = consumer._new_offset(tp)
        # a marker at the head: after seeking to 5500, the first record fetched is 5501
        consumer._acked.clear(), consumer._acked_index.clear()
        await consumer.seek(tp, 5500)
        consumer._committed_offset[tp] = 5500
        fetcher.batches.append([5501, 5502])
        await fetch_all()
        for o in (5501, 5502):
            ack(o)
        after_marker = consumer._new_offset(tp)
        # a batch fetched before a seek proves nothing about the new head
        consumer._acked.clear(), consumer._acked_index.clear()
        await consumer.seek(tp, 5604)
        fetcher.batches.append([5604, 5605])
        ait = consumer.getmany(timeout=1.0).__aiter__()
        first = await ait.__anext__()
        await consumer.seek(tp, 5603)
        consumer._committed_offset[tp] = 5603
        async for _ in ait:
            pass
        for o in (5604, 5605):
            ack(o)
        stale = consumer._new_offset(tp)
        return held, after_marker, first[1].offset, stale

    assert asyncio.run(scenario()) == (None, 5503, 5604, None)


def test_a_transaction_marker_after_a_commit_does_not_hold_the_next_commit(app):
    """Input written transactionally: record 0, marker 1, record 2. After committing 1 (the next
    offset to read, here the marker), the gap the fetch loop reports for 1 must count."""
    from faust.types import TP

    app.flow_control.resume()
    consumer = app.consumer
    tp = TP("unit.image.embedding.result", 0)

    def ack(offset):
        ack_handled(app, tp, offset)

    async def scenario():
        ack(0)
        first = consumer._new_offset(tp)
        consumer._committed_offset[tp] = first
        await consumer._add_gap(tp, 1, 2)  # what the fetch loop reports when record 2 follows record 0
        held_before_2 = consumer._new_offset(tp)  # 2 is not handled yet: nothing to commit
        ack(2)
        return first, held_before_2, consumer._new_offset(tp)

    assert asyncio.run(scenario()) == (1, None, 3)


def test_partition_transactions_commit_concurrently():
    """Each partition's transaction holds only its own offsets, state and outputs: commit them all
    at once instead of one after another (three round trips each)."""
    from faust.transport.drivers.aiokafka import Producer

    from visionjobs.eos import _patch_concurrent_commits

    _patch_concurrent_commits()
    calls: list[tuple[str, str]] = []
    in_flight = {"now": 0, "max": 0}

    class FakeTxnProducer:
        def __init__(self, tid):
            self.tid = tid

        async def send_offsets_to_transaction(self, offsets, group_id):
            calls.append((self.tid, f"offsets {sorted(offsets.items())} {group_id}"))
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
            await asyncio.sleep(0.01)  # the broker's answer

        async def commit_transaction(self):
            calls.append((self.tid, "commit"))
            await asyncio.sleep(0.01)
            in_flight["now"] -= 1

        async def begin_transaction(self):
            calls.append((self.tid, "begin"))

    async def scenario():
        fake = Producer.__new__(Producer)
        tids = [f"app-1-{p}" for p in range(8)]
        fake._transaction_producers = {t: FakeTxnProducer(t) for t in tids}
        fake._trn_locks = {t: asyncio.Lock() for t in tids}
        await fake.commit_transactions({t: {("topic", i): 10 + i} for i, t in enumerate(tids)}, "app")
        return tids

    tids = asyncio.run(scenario())
    for i, t in enumerate(tids):  # per partition: its offsets, commit, begin, in that order
        assert [c for tid, c in calls if tid == t] == [f"offsets [(('topic', {i}), {10 + i})] app", "commit", "begin"]
    assert in_flight["max"] == 8  # all eight in flight at once, not one after another


def test_a_marker_after_the_record_at_offset_0_is_a_gap(app):
    """Record 0, marker 1, record 2 (a vision agent's first transaction held one result): Faust's
    fetch loop reports no gap after a record at offset 0, so after committing 1 the strict head
    check would wait for offset 1 forever (a completion then stayed in an open transaction)."""
    from faust.types import TP

    app.flow_control.resume()
    tp = TP("unit.image.embedding.result", 5)
    consumer, _ = fetching_consumer(app, tp, [[0, 2]])

    def ack(offset):
        ack_handled(app, tp, offset)

    async def scenario():
        ait = consumer.getmany(timeout=1.0).__aiter__()
        await ait.__anext__()
        ack(0)
        first = consumer._new_offset(tp)  # first commit of a new group: 1
        consumer._committed_offset[tp] = first
        await ait.__anext__()
        ack(2)
        return first, consumer._new_offset(tp)

    assert asyncio.run(scenario()) == (1, 3)


def test_revocation_stops_every_transactional_producer():
    """eos.py item 10: after the transactions end on revocation, every transactional producer is
    removed and stopped (Faust would keep those of partitions that stay as standbys, and reuse them,
    fenced, when the partitions come back); one that fails to stop is removed all the same."""
    from visionjobs.eos import stop_transactional_producers

    class FakeTxnProducer:
        def __init__(self, broken=False):
            self.stopped = False
            self.broken = broken

        async def stop(self):
            self.stopped = True
            if self.broken:
                raise RuntimeError("connection lost")

    producers = {"app-0-0": FakeTxnProducer(), "app-0-3": FakeTxnProducer(broken=True), "app-1-3": FakeTxnProducer()}
    kept = dict(producers)
    asyncio.run(stop_transactional_producers(producers))
    assert producers == {}
    assert all(p.stopped for p in kept.values())
