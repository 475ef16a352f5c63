"""The coordinator agent's step without Kafka: an exception never escapes to Faust (which would ack
the event and lose it): a transient failure is retried, a persistent one is dead-lettered."""

from __future__ import annotations

import asyncio

from visionjobs.agents.coordinator import Coordinator
from visionjobs.codec import get_codec
from visionjobs.records import ImageEmbeddingResult, utcnow
from visionjobs.topics import EMBEDDING_RESULT, topic_name

from .conftest import FakeEvent, FakeMessage


def result_event(settings, job_id="job-1", image_id="img-0"):
    value = get_codec().encode(ImageEmbeddingResult("r1", job_id, image_id, "p", "OK", None, "m", [], utcnow()))
    return FakeEvent(FakeMessage(topic_name(settings, EMBEDDING_RESULT), 4, 17, job_id.encode(), value, 1000.0))


def test_a_transient_failure_is_retried_and_the_event_applied(app, settings, recorder):
    coordinator = Coordinator(app, settings)
    recorder.hook("dead", coordinator.dead_letters.output)
    table = coordinator.phases["EMBEDDINGS"].table
    real_put, calls = table.put, []

    def flaky_put(partition, key, value):
        calls.append(key)
        if len(calls) == 1:
            raise KeyError("changelog topic not assigned yet")
        real_put(partition, key, value)

    table.put = flaky_put
    asyncio.run(coordinator.handle_safely(result_event(settings), backoff_s=0.001))
    assert calls == ["job-1", "job-1"]
    assert table.get("job-1").done == 1 and table.dirty == 1
    assert recorder.of("dead") == []


def test_a_persistent_failure_is_dead_lettered_not_raised(app, settings, recorder):
    coordinator = Coordinator(app, settings)
    recorder.hook("dead", coordinator.dead_letters.output)
    table = coordinator.phases["EMBEDDINGS"].table

    def broken_put(partition, key, value):
        raise RuntimeError("boom")

    table.put = broken_put
    asyncio.run(coordinator.handle_safely(result_event(settings), attempts=3, backoff_s=0.001))
    ((partition, key, letter),) = recorder.of("dead")
    assert (partition, key) == (4, b"job-1")
    assert letter.error.startswith("processing_error: RuntimeError: boom") and letter.offset == 17
