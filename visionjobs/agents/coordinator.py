"""Coordinator: joins the batch topic with each phase's result topic and completes jobs exactly once.

One agent consumes ``products.images.ready.batch``, both result topics and the internal tick topic
(all keyed by job_id, co-partitioned) and keeps a :class:`PhaseState` per job and phase in one
changelog-backed table per phase. For each event it reads the state, applies one pure function, writes the
new value back (reassigned, never mutated) and stages the outputs, all without an ``await``: the
table write, the completion and the input offset commit in one Kafka transaction (see ``eos``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

from .. import metrics
from ..codec import get_codec
from ..domain.completion import Decision, PhaseState, apply_result, apply_total, expire, image_key, is_due
from ..eos import CoPartitionedOutput
from ..records import (CoordinatorTick, ImageEmbeddingResult, ImageKeypointsResult, JobPhaseCompleted,
                       ProductsImagesReadyBatch, completion_event_id, from_millis, to_millis, utcnow)
from ..settings import Settings
from ..tables.jobs import PHASES, phase_table
from ..topics import (COORDINATOR_TICKS, EMBEDDING_RESULT, EMBEDDINGS_COMPLETED, IMAGES_READY_BATCH,
                      KEYPOINTS_COMPLETED, KEYPOINTS_RESULT, topic_name)
from .common import DeadLetters, decode_or_dead_letter, declare_topic, event_millis

log = logging.getLogger(__name__)
_TRACE = bool(os.environ.get("VISIONJOBS_TRACE_EOS"))

RESULT_TOPIC = {"EMBEDDINGS": EMBEDDING_RESULT, "KEYPOINTS": KEYPOINTS_RESULT}
COMPLETED_TOPIC = {"EMBEDDINGS": EMBEDDINGS_COMPLETED, "KEYPOINTS": KEYPOINTS_COMPLETED}
RESULT_RECORD = {"EMBEDDINGS": ImageEmbeddingResult, "KEYPOINTS": ImageKeypointsResult}
RESULT_TYPES = (ImageEmbeddingResult, ImageKeypointsResult)


def completion_record(job_id: str, phase: str, decision: Decision) -> JobPhaseCompleted:
    c = decision.completion
    assert c is not None
    return JobPhaseCompleted(
        event_id=completion_event_id(job_id, phase), job_id=job_id, phase=phase, status=c.status,
        total=c.total, done=c.done, succeeded=c.succeeded, failed=c.failed,
        first_seen_at=from_millis(c.first_seen_ms), completed_at=from_millis(c.completed_ms))


def phase_view(state: PhaseState | None) -> dict | None:
    if state is None:
        return None
    return {
        "total": state.total, "done": state.done, "succeeded": state.succeeded,
        "failed": state.failed_count, "completed": state.completed,
        "status": state.status or "IN_PROGRESS",
        "first_seen_at": from_millis(state.first_seen_ms).isoformat(),
        "completed_at": from_millis(state.completed_ms).isoformat() if state.completed_ms else None,
    }


class PhaseCoordinator:
    """One phase's table and completion topic; :meth:`apply` is the read-apply-write-stage step."""

    def __init__(self, app: Any, settings: Settings, phase: str, source_topic: str) -> None:
        self.phase = phase
        self.table = phase_table(app, settings, phase)
        self.completed = CoPartitionedOutput(
            app, declare_topic(app, settings, COMPLETED_TOPIC[phase]), source_topic)
        self.timeout_ms = int(settings.job_timeout_s * 1000)
        self.retention_ms = int(settings.completed_retention_s * 1000)

    def apply(self, event: Any, job_id: str, step: Callable[[PhaseState | None], Decision],
              dead_letters: DeadLetters) -> None:
        """Read the state, apply one pure step, write the new value back, stage the outputs.
        Synchronous on purpose: no commit can fall between the write and the completion."""
        state = self.table.get(job_id)
        decision = step(state)
        if decision.state is not state:
            # reassigned, never mutated; None deletes (a tombstone: retention over)
            self.table.put(event.message.partition, job_id, decision.state)
        if decision.completion is not None:
            self.completed.stage(event, event.message.key, get_codec().encode(
                completion_record(job_id, self.phase, decision)))
            metrics.COMPLETIONS.labels(self.phase, decision.completion.status).inc()
            metrics.COMPLETION_LATENCY.labels(self.phase).observe(
                max(0.0, (decision.completion.completed_ms - decision.completion.first_seen_ms) / 1000))
            log.info("job %s %s %s: %d/%s done (%d ok, %d failed)", job_id, self.phase,
                     decision.completion.status, decision.completion.done, decision.completion.total,
                     decision.completion.succeeded, decision.completion.failed,
                     extra={"job_id": job_id, "phase": self.phase})
        if decision.invalid is not None:
            reason, _, message = decision.invalid.partition(": ")
            dead_letters.send(event, reason, f"job {job_id} {self.phase}: {message}")
        elif decision.note in ("duplicate", "duplicate_total", "late"):
            metrics.IGNORED.labels(self.phase, decision.note).inc()

    def due_jobs(self, now_ms: int) -> list[str]:
        """Jobs of the local table that an expiry tick would change (read-only scan)."""
        due = []
        in_flight = 0
        for job_id, state in list(self.table.data.items()):
            if state is None:
                continue
            if not state.completed:
                in_flight += 1
            if is_due(state, now_ms, self.timeout_ms, self.retention_ms):
                due.append(job_id)
        metrics.IN_FLIGHT.labels(self.phase).set(in_flight)
        return due


class Coordinator:
    """The coordinator agent's logic: one agent consumes the batch topic, both result topics and the
    tick topic (all keyed by job_id, co-partitioned), so every input event is decoded and applied
    exactly once by one stream, and dispatched to the phase(s) it concerns."""

    role = "coordinator"

    def __init__(self, app: Any, settings: Settings, phases: tuple[str, ...] = PHASES) -> None:
        self.batch_topic = topic_name(settings, IMAGES_READY_BATCH)
        self.tick_topic = topic_name(settings, COORDINATOR_TICKS)
        self.result_topics = {topic_name(settings, RESULT_TOPIC[p]): p for p in phases}
        names = [self.batch_topic, *self.result_topics, self.tick_topic]
        self.source = app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                                value_serializer="raw", partitions=settings.partitions)
        # declare the inputs individually too, so the worker creates them if they are missing
        for name in (IMAGES_READY_BATCH, COORDINATOR_TICKS, *(RESULT_TOPIC[p] for p in phases)):
            declare_topic(app, settings, name)
        self.phases = {p: PhaseCoordinator(app, settings, p, self.batch_topic) for p in phases}
        self.dead_letters = DeadLetters(app, settings, self.role, self.batch_topic)
        self._counters = {t: metrics.EVENTS_CONSUMED.labels(t, self.role) for t in names}

    async def handle_safely(self, event: Any, attempts: int = 3, backoff_s: float = 0.2) -> None:
        """:meth:`handle`, retried, then dead-lettered: never let an exception escape to Faust.

        An exception escaping an agent makes Faust restart the agent *and ack the event*, so the next
        commit skips it: a lost result and a job that never completes. Each attempt is synchronous
        (read, apply, write, stage) and the state functions are idempotent, so a retry after a
        partial attempt (one phase written) is safe; the event is not acked before this returns.
        """
        for attempt in range(1, attempts + 1):
            try:
                self.handle(event)
                return
            except Exception as exc:  # noqa: BLE001 - anything: a bug, a broken dependency
                msg = event.message
                if attempt == attempts:
                    log.exception("giving up on %s[%s]@%s after %d attempts", msg.topic, msg.partition,
                                  msg.offset, attempts)
                    self.dead_letters.send(event, "processing_error", f"{type(exc).__name__}: {exc}")
                    return
                log.warning("attempt %d on %s[%s]@%s failed: %r; retrying", attempt, msg.topic, msg.partition,
                            msg.offset, exc)
                await asyncio.sleep(backoff_s * attempt)

    def handle(self, event: Any) -> None:
        topic = event.message.topic
        if _TRACE:
            log.warning("EOSTRACE handle %s p=%s o=%s key=%s", topic[-22:], event.message.partition,
                        event.message.offset, event.message.key)
        counter = self._counters.get(topic)
        if counter is not None:
            counter.inc()
        record = decode_or_dead_letter(event, self.dead_letters)
        if record is None:
            return
        job_id = record.job_id
        if isinstance(record, ProductsImagesReadyBatch) and topic == self.batch_topic:
            ts = event_millis(event)
            for phase in self.phases.values():
                phase.apply(event, job_id, lambda s: apply_total(s, record.total_images, ts), self.dead_letters)
        elif isinstance(record, RESULT_TYPES) and topic in self.result_topics:
            phase = self.phases[self.result_topics[topic]]
            if not isinstance(record, RESULT_RECORD[phase.phase]):
                self.dead_letters.send(event, "unexpected_schema", f"{type(record).__name__} on {topic}")
                return
            key, ok, ts = image_key(record.image_id), record.status == "OK", event_millis(event)
            phase.apply(event, job_id, lambda s: apply_result(s, key, ok, ts), self.dead_letters)
        elif isinstance(record, CoordinatorTick) and topic == self.tick_topic:
            now_ms = to_millis(record.issued_at)
            for phase in self.phases.values():
                phase.apply(event, job_id, lambda s, p=phase: expire(s, now_ms, p.timeout_ms, p.retention_ms),
                            self.dead_letters)
        else:
            self.dead_letters.send(event, "unexpected_schema", f"{type(record).__name__} does not belong on {topic}")


def register_coordinator(app: Any, settings: Settings, phases: tuple[str, ...] = PHASES) -> Coordinator:
    coordinator = Coordinator(app, settings, phases)

    @app.agent(coordinator.source, name="visionjobs.coordinate")
    async def coordinate(stream: Any) -> None:
        async for event in stream.events():
            await coordinator.handle_safely(event)

    tick_topic = coordinator.tick_topic

    @app.timer(settings.tick_interval_s, on_leader=False)
    async def expiry_ticker() -> None:
        """Publish an expiry check for every local job that is due. Tables cannot be written from a
        timer, so the decision is made by the agent when the tick comes back, by the tick's clock."""
        now = utcnow()
        now_ms = to_millis(now)
        due: set[str] = set()
        for phase in coordinator.phases.values():
            due.update(phase.due_jobs(now_ms))
        if not due:
            return
        started = time.monotonic()
        codec = get_codec()
        producer = app.producer
        for job_id in sorted(due):
            await producer.send(tick_topic, job_id.encode(), codec.encode(CoordinatorTick(job_id, now)),
                                partition=None, timestamp=None, headers=None)
        await producer.flush()
        metrics.TICKS_SENT.inc(len(due))
        log.info("expiry ticker: %d due jobs checked in %.3fs", len(due), time.monotonic() - started)

    coordinators = coordinator.phases
    if settings.web_enabled:
        first = next(iter(coordinators.values()))

        @app.page("/jobs/{job_id}")
        @app.table_route(table=first.table, match_info="job_id")
        async def job_progress(web: Any, request: Any, job_id: str) -> Any:
            phases = {phase: phase_view(coord.table.get(job_id)) for phase, coord in coordinators.items()}
            if all(v is None for v in phases.values()):
                return web.json({"job_id": job_id, "error": "unknown job"}, status=404)
            return web.json({"job_id": job_id, "phases": phases})

    return coordinator
