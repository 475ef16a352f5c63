"""Coordinator: joins the batch topic with each phase's result topic and completes jobs exactly once.

Per phase, one agent consumes ``products.images.ready.batch``, the phase's result topic and the
internal tick topic (all keyed by job_id, co-partitioned) and keeps a :class:`PhaseState` per job in
a changelog-backed table. For each event it reads the state, applies one pure function, writes the
new value back (reassigned, never mutated) and stages the outputs, all without an ``await``: the
table write, the completion and the input offset commit in one Kafka transaction (see ``eos``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

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

RESULT_TOPIC = {"EMBEDDINGS": EMBEDDING_RESULT, "KEYPOINTS": KEYPOINTS_RESULT}
COMPLETED_TOPIC = {"EMBEDDINGS": EMBEDDINGS_COMPLETED, "KEYPOINTS": KEYPOINTS_COMPLETED}
RESULT_RECORD = {"EMBEDDINGS": ImageEmbeddingResult, "KEYPOINTS": ImageKeypointsResult}


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
    """Everything one phase's agent needs; :meth:`handle` is the synchronous read-apply-write step."""

    def __init__(self, app: Any, settings: Settings, phase: str) -> None:
        self.phase = phase
        self.settings = settings
        self.role = f"coordinator.{phase.lower()}"
        self.table = phase_table(app, settings, phase)
        self.batch_topic = topic_name(settings, IMAGES_READY_BATCH)
        self.result_topic = topic_name(settings, RESULT_TOPIC[phase])
        self.tick_topic = topic_name(settings, COORDINATOR_TICKS)
        self.source = app.topic(
            self.batch_topic, self.result_topic, self.tick_topic,
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
            partitions=settings.partitions)
        # declare the inputs individually too, so the worker creates them if they are missing
        for name in (IMAGES_READY_BATCH, RESULT_TOPIC[phase], COORDINATOR_TICKS):
            declare_topic(app, settings, name)
        self.completed = CoPartitionedOutput(
            app, declare_topic(app, settings, COMPLETED_TOPIC[phase]), self.result_topic)
        self.dead_letters = DeadLetters(app, settings, self.role, self.result_topic)
        self.timeout_ms = int(settings.job_timeout_s * 1000)
        self.retention_ms = int(settings.completed_retention_s * 1000)
        self.record_type = RESULT_RECORD[phase]
        self._counters = {t: metrics.EVENTS_CONSUMED.labels(t, self.role)
                          for t in (self.batch_topic, self.result_topic, self.tick_topic)}

    def handle(self, event: Any) -> None:
        """Read, apply, write, stage. Synchronous on purpose: nothing can interleave."""
        topic = event.message.topic
        counter = self._counters.get(topic)
        if counter is not None:
            counter.inc()
        record = decode_or_dead_letter(event, self.dead_letters)
        if record is None:
            return
        job_id = record.job_id
        state = self.table.get(job_id)
        if isinstance(record, ProductsImagesReadyBatch):
            decision = apply_total(state, record.total_images, event_millis(event))
        elif isinstance(record, self.record_type):
            decision = apply_result(state, image_key(record.image_id), record.status == "OK", event_millis(event))
        elif isinstance(record, CoordinatorTick):
            decision = expire(state, to_millis(record.issued_at), self.timeout_ms, self.retention_ms)
        else:
            self.dead_letters.send(event, "unexpected_schema",
                                   f"{type(record).__name__} does not belong on {topic}")
            return
        if decision.state is not state:
            if decision.state is None:
                if job_id in self.table:
                    del self.table[job_id]  # tombstone: retention over
            else:
                self.table[job_id] = decision.state
        if decision.completion is not None:
            self.completed.stage(event, event.message.key, get_codec().encode(
                completion_record(job_id, self.phase, decision)))
            metrics.COMPLETIONS.labels(self.phase, decision.completion.status).inc()
            metrics.COMPLETION_LATENCY.labels(self.phase).observe(
                max(0.0, (decision.completion.completed_ms - decision.completion.first_seen_ms) / 1000))
            log.info("job %s %s %s: %d/%s done (%d ok, %d failed)", job_id, self.phase,
                     decision.completion.status, decision.completion.done, decision.completion.total,
                     decision.completion.succeeded, decision.completion.failed)
        if decision.invalid is not None:
            reason, _, message = decision.invalid.partition(": ")
            self.dead_letters.send(event, reason, f"job {job_id}: {message}")
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


def register_coordinator(app: Any, settings: Settings, phases: tuple[str, ...] = PHASES) -> dict[str, PhaseCoordinator]:
    coordinators = {phase: PhaseCoordinator(app, settings, phase) for phase in phases}

    for phase, coord in coordinators.items():
        async def coordinate(stream: Any, coord: PhaseCoordinator = coord) -> None:
            async for event in stream.events():
                coord.handle(event)

        app.agent(coord.source, name=f"visionjobs.coordinate_{phase.lower()}")(coordinate)

    tick_topic = topic_name(settings, COORDINATOR_TICKS)

    @app.timer(settings.tick_interval_s, on_leader=False)
    async def expiry_ticker() -> None:
        """Publish an expiry check for every local job that is due. Tables cannot be written from a
        timer, so the decision is made by the agent when the tick comes back, by the tick's clock."""
        now = utcnow()
        now_ms = to_millis(now)
        due: set[str] = set()
        for coord in coordinators.values():
            due.update(coord.due_jobs(now_ms))
        if not due:
            return
        started = time.monotonic()
        codec = get_codec()
        producer = app.producer
        for job_id in sorted(due):
            key = job_id.encode()
            await producer.send(tick_topic, key, codec.encode(CoordinatorTick(job_id, now)),
                                partition=None, timestamp=None, headers=None)
        await producer.flush()
        metrics.TICKS_SENT.inc(len(due))
        log.info("expiry ticker: %d due jobs checked in %.3fs", len(due), time.monotonic() - started)

    if settings.web_enabled:
        first = next(iter(coordinators.values()))

        @app.page("/jobs/{job_id}")
        @app.table_route(table=first.table, match_info="job_id")
        async def job_progress(web: Any, request: Any, job_id: str) -> Any:
            phases = {phase: phase_view(coord.table.get(job_id)) for phase, coord in coordinators.items()}
            if all(v is None for v in phases.values()):
                return web.json({"job_id": job_id, "error": "unknown job"}, status=404)
            return web.json({"job_id": job_id, "phases": phases})

    return coordinators
