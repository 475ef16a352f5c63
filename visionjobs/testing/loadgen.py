"""Synthetic jobs straight into the batch and per-image result topics.

Feeds the integration tests, the chaos soak and the benchmarks. Jobs have random sizes (including 0),
duplicate results, results before totals, totals last, and optional failures. Every duplicate of an
image's result carries the same status, so the expected counts of each job are exact.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Iterator, Optional

from confluent_kafka import Producer

from ..codec import get_codec
from ..product_finder import make_producer, produce_waiting  # noqa: F401 - make_producer re-exported
from ..records import (ImageEmbeddingResult, ImageKeypointsResult, ProductsImagesReadyBatch,
                       result_event_id, utcnow)
from ..settings import Settings
from ..topics import EMBEDDING_RESULT, IMAGES_READY_BATCH, KEYPOINTS_RESULT, topic_name


@dataclass(frozen=True)
class JobPlan:
    job_id: str
    total: int
    ok: dict[str, frozenset[str]]  # phase -> image ids whose result is OK

    def expected(self, phase: str) -> tuple[int, int, int]:
        succeeded = len(self.ok[phase])
        return self.total, succeeded, self.total - succeeded


@dataclass
class LoadSpec:
    jobs: int = 100
    max_images: int = 20
    zero_fraction: float = 0.05
    duplicate_fraction: float = 0.2
    failure_fraction: float = 0.1
    total_last_fraction: float = 0.5
    phases: tuple[str, ...] = ("EMBEDDINGS", "KEYPOINTS")
    seed: int = 1
    interleave: int = 16  # how many jobs' events are shuffled together
    embedding_dim: int = 0  # 0: empty vectors (coordinator load); >0: random vectors of that size


def plan_jobs(spec: LoadSpec, prefix: Optional[str] = None) -> list[JobPlan]:
    rnd = random.Random(spec.seed)
    run = prefix or uuid.UUID(int=rnd.getrandbits(128)).hex[:8]
    plans = []
    for i in range(spec.jobs):
        total = 0 if rnd.random() < spec.zero_fraction else rnd.randint(1, spec.max_images)
        ok = {phase: frozenset(f"img-{n}" for n in range(total) if rnd.random() >= spec.failure_fraction)
              for phase in spec.phases}
        plans.append(JobPlan(f"job-{run}-{i:06d}", total, ok))
    return plans


def job_events(plan: JobPlan, spec: LoadSpec, settings: Settings, rnd: random.Random) -> list[tuple[str, str, object]]:
    now = utcnow()
    events: list[tuple[str, str, object]] = []
    for phase in spec.phases:
        for n in range(plan.total):
            image_id = f"img-{n}"
            ok = image_id in plan.ok[phase]
            copies = 2 if rnd.random() < spec.duplicate_fraction else 1
            for _ in range(copies):
                if phase == "EMBEDDINGS":
                    vec = [rnd.random() for _ in range(spec.embedding_dim)] if ok else []
                    rec = ImageEmbeddingResult(result_event_id(plan.job_id, image_id, phase), plan.job_id,
                                               image_id, f"prod-{n}", "OK" if ok else "FAILED",
                                               None if ok else "synthetic: failure", "synthetic", vec, now)
                    events.append((topic_name(settings, EMBEDDING_RESULT), plan.job_id, rec))
                else:
                    rec = ImageKeypointsResult(result_event_id(plan.job_id, image_id, phase), plan.job_id,
                                               image_id, f"prod-{n}", "OK" if ok else "FAILED",
                                               None if ok else "synthetic: failure", "orb", [], b"", 32, now)
                    events.append((topic_name(settings, KEYPOINTS_RESULT), plan.job_id, rec))
    rnd.shuffle(events)
    batch = (topic_name(settings, IMAGES_READY_BATCH), plan.job_id,
             ProductsImagesReadyBatch(plan.job_id, str(uuid.UUID(int=rnd.getrandbits(128))), plan.total))
    if rnd.random() < spec.total_last_fraction:
        events.append(batch)
    else:
        events.insert(rnd.randint(0, len(events)), batch)
    return events


def iter_events(plans: list[JobPlan], spec: LoadSpec, settings: Settings) -> Iterator[tuple[str, str, object]]:
    rnd = random.Random(spec.seed + 1)
    for start in range(0, len(plans), spec.interleave):
        window = [job_events(p, spec, settings, rnd) for p in plans[start:start + spec.interleave]]
        # interleave the jobs of the window, keeping each job's own order
        while window:
            i = rnd.randrange(len(window))
            yield window[i].pop(0)
            if not window[i]:
                window.pop(i)


def produce(settings: Settings, plans: list[JobPlan], spec: LoadSpec, rate: float = 0.0,
            producer: Optional[Producer] = None, progress=None) -> int:
    """Produce every event of the plans; ``rate`` events/s (0 = as fast as possible). Returns the count."""
    codec = get_codec()
    producer = producer or make_producer(settings)
    sent = 0
    started = time.monotonic()
    for topic, key, record in iter_events(plans, spec, settings):
        produce_waiting(producer, topic, key=key.encode(), value=codec.encode(record))
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
            if progress:
                progress(sent)
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} messages not delivered")
    return sent
