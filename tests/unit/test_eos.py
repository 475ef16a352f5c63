"""The commit gate splits the producer buffer at a commit: messages put before the gate are
published (and acknowledged) before the commit runs, messages put after it wait for the commit."""

from __future__ import annotations

import asyncio

from visionjobs.eos import CommitGate


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
