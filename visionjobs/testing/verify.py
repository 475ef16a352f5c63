"""Read completion topics (read_committed) and check: exactly one per job and phase, right counts."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from confluent_kafka import TopicPartition

from ..codec import get_codec
from ..product_finder import committed_consumer
from ..records import JobPhaseCompleted
from ..settings import Settings
from ..topics import EMBEDDINGS_COMPLETED, KEYPOINTS_COMPLETED, topic_name
from .loadgen import JobPlan

PHASE_TOPICS = {"EMBEDDINGS": EMBEDDINGS_COMPLETED, "KEYPOINTS": KEYPOINTS_COMPLETED}


def read_all(settings: Settings, topics: Iterable[str], idle_s: float = 2.0, max_s: float = 60.0):
    """Every committed message of the topics, from the beginning, until idle for ``idle_s``."""
    consumer = committed_consumer(settings)
    names = list(topics)
    md = consumer.list_topics(timeout=10).topics
    tps = [TopicPartition(t, p, 0) for t in names if t in md for p in md[t].partitions]
    consumer.assign(tps)
    out = []
    deadline = time.monotonic() + max_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            batch = consumer.consume(1000, timeout=0.2)
            for msg in batch:
                if msg.error():
                    continue
                out.append(msg)
            if batch:
                last = time.monotonic()
    finally:
        consumer.close()
    return out


@dataclass
class Report:
    jobs: int
    completions: int
    duplicates: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)
    wrong_counts: dict = field(default_factory=dict)
    unexpected: list = field(default_factory=list)
    statuses: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.missing or self.wrong_counts or self.unexpected)

    def summary(self) -> dict:
        return {"jobs": self.jobs, "completions": self.completions,
                "duplicates": sum(len(v) for v in self.duplicates.values()),
                "missing": sum(len(v) for v in self.missing.values()),
                "wrong_counts": sum(len(v) for v in self.wrong_counts.values()),
                "unexpected": len(self.unexpected), "statuses": self.statuses}


def collect(settings: Settings, phases=("EMBEDDINGS", "KEYPOINTS"), **kw) -> dict[str, dict[str, list[JobPhaseCompleted]]]:
    codec = get_codec()
    by_phase: dict[str, dict[str, list[JobPhaseCompleted]]] = {p: defaultdict(list) for p in phases}
    topics = {topic_name(settings, PHASE_TOPICS[p]): p for p in phases}
    for msg in read_all(settings, topics, **kw):
        rec = codec.decode(msg.value(), topic=msg.topic())
        by_phase[topics[msg.topic()]][rec.job_id].append(rec)
    return by_phase


def check(plans: list[JobPlan], found: dict[str, dict[str, list[JobPhaseCompleted]]],
          expect_status: str = "COMPLETED") -> Report:
    report = Report(jobs=len(plans), completions=sum(len(v) for p in found.values() for v in p.values()))
    wanted = {p.job_id: p for p in plans}
    statuses: dict = defaultdict(int)
    for phase, jobs in found.items():
        for job_id, recs in jobs.items():
            for r in recs:
                statuses[f"{phase}:{r.status}"] += 1
            if job_id not in wanted:
                report.unexpected.append((phase, job_id))
                continue
            if len(recs) > 1:
                report.duplicates.setdefault(phase, []).append(job_id)
            r = recs[0]
            total, ok, failed = wanted[job_id].expected(phase)
            if (r.status, r.total, r.done, r.succeeded, r.failed) != (expect_status, total, total, ok, failed):
                report.wrong_counts.setdefault(phase, []).append(
                    (job_id, (r.status, r.total, r.done, r.succeeded, r.failed), (expect_status, total, total, ok, failed)))
        for job_id in wanted:
            if job_id not in jobs:
                report.missing.setdefault(phase, []).append(job_id)
    report.statuses = dict(statuses)
    return report


def wait_for_completions(settings: Settings, plans: list[JobPlan], timeout_s: float = 120.0,
                         phases=("EMBEDDINGS", "KEYPOINTS"), poll_s: float = 2.0) -> Report:
    """Poll until every planned job has a completion per phase (or timeout); then a final full read."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = check(plans, collect(settings, phases, idle_s=1.0))
        if not report.missing or time.monotonic() > deadline:
            return report
        time.sleep(poll_s)
