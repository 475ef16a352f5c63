#!/usr/bin/env python
"""Coordinator throughput: pre-filled topics, one coordinator worker, time until every completion is
visible to a read_committed consumer. Baseline in the same run: a plain confluent-kafka
consume -> produce loop with no state over the same topics (the practical limit of Python here).

    .venv/bin/python scripts/bench_coordinator.py --jobs 2000 --max-images 50 --runs 3

Prints one JSON object per run and a summary with medians. Needs a broker (KAFKA_BOOTSTRAP_SERVERS
or the local one, started if needed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from visionjobs.admin import create_topics, delete_topics
from visionjobs.product_finder import produce_waiting
from visionjobs.broker import ensure_broker
from visionjobs.settings import Settings
from visionjobs.testing.loadgen import LoadSpec, plan_jobs, produce
from visionjobs.testing.workers import WorkerProcess, isolated_env, settings_from_env
from visionjobs.topics import (CONTRACT, EMBEDDING_RESULT, EMBEDDINGS_COMPLETED, IMAGES_READY_BATCH,
                               KEYPOINTS_COMPLETED, KEYPOINTS_RESULT, topic_name)


def count_until(settings: Settings, topics: list[str], want: int, timeout: float) -> float:
    """Poll read_committed until ``want`` messages are visible; returns the monotonic time then."""
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    md = c.list_topics(timeout=10).topics
    c.assign([TopicPartition(t, p, 0) for t in topics for p in md[t].partitions])
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {seen}/{want} visible after {timeout}s")
            seen += sum(1 for m in c.consume(10000, timeout=0.2) if not m.error())
        return time.monotonic()
    finally:
        c.close()


def baseline(settings: Settings, inputs: list[str], n_messages: int, out_topic: str) -> float:
    """Plain consume -> produce, no state, no decoding: messages/s."""
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": f"base-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed", "fetch.max.bytes": 52428800})
    p = Producer({"bootstrap.servers": settings.bootstrap_servers, "partitioner": "murmur2_random",
                  "linger.ms": 5, "queue.buffering.max.messages": 2_000_000})
    md = c.list_topics(timeout=10).topics
    c.assign([TopicPartition(t, q, 0) for t in inputs for q in md[t].partitions])
    seen = 0
    start = None
    while seen < n_messages:
        for m in c.consume(10000, timeout=1.0):
            if m.error():
                continue
            if start is None:
                start = time.monotonic()
            produce_waiting(p, out_topic, poll_s=0.01, key=m.key(), value=m.value(), partition=m.partition())
            seen += 1
        p.poll(0)
    p.flush(60)
    elapsed = time.monotonic() - start
    c.close()
    return n_messages / elapsed


def run_once(args, bootstrap: str, guarantee: str, spec: LoadSpec, plans) -> dict:
    run = uuid.uuid4().hex[:8]
    env = isolated_env(bootstrap, f"bench{run}", tempfile.mkdtemp(prefix="bench-"), partitions=args.partitions,
                       processing_guarantee=guarantee, store=args.store, commit_interval_s=args.commit_interval,
                       producer_linger_s=args.linger)
    settings = settings_from_env(env)
    create_topics(settings)
    t0 = time.monotonic()
    events = produce(settings, plans, spec)
    results = events - len(plans)
    prefill_s = time.monotonic() - t0
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    worker = WorkerProcess("coordinator", env, logs, log_level="info")
    t_start = time.monotonic()
    worker.start()
    try:
        worker.wait_ready(timeout=120)
        t_ready = time.monotonic()
        done = count_until(settings, [topic_name(settings, EMBEDDINGS_COMPLETED),
                                      topic_name(settings, KEYPOINTS_COMPLETED)], 2 * len(plans), args.timeout)
    finally:
        worker.stop()
    base = None
    if args.baseline:
        base = baseline(settings, [topic_name(settings, t) for t in (IMAGES_READY_BATCH, EMBEDDING_RESULT, KEYPOINTS_RESULT)],
                        events, topic_name(settings, "visionjobs.dead-letter"))
    out = {"guarantee": guarantee, "store": args.store, "commit_interval_s": args.commit_interval, "linger_s": args.linger,
           "jobs": len(plans), "events": events, "results": results, "prefill_s": round(prefill_s, 2),
           "startup_s": round(t_ready - t_start, 2), "process_s": round(done - t_ready, 2),
           "results_per_s": round(results / (done - t_ready), 1),
           "events_per_s": round(events / (done - t_ready), 1)}
    if base is not None:
        out["baseline_events_per_s"] = round(base, 1)
        out["ratio_to_baseline"] = round(out["events_per_s"] / base, 3)
    if not args.keep:
        delete_topics(settings, [topic_name(settings, s.name) for s in CONTRACT])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--max-images", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--guarantee", choices=["exactly_once", "at_least_once", "both"], default="both")
    ap.add_argument("--store", default="memory://")
    ap.add_argument("--commit-interval", type=float, default=0.1)
    ap.add_argument("--linger", type=float, default=None, help="VISIONJOBS_PRODUCER_LINGER_S of the worker")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--no-baseline", dest="baseline", action="store_false")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark topics")
    args = ap.parse_args()
    bootstrap, _ = ensure_broker()
    spec = LoadSpec(jobs=args.jobs, max_images=args.max_images, duplicate_fraction=0.1, seed=42)
    plans = plan_jobs(spec)
    guarantees = ["exactly_once", "at_least_once"] if args.guarantee == "both" else [args.guarantee]
    rows = []
    for i in range(args.runs):
        for g in guarantees:
            row = run_once(args, bootstrap, g, spec, plans)
            row["run"] = i
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = {}
    for g in guarantees:
        rs = [r for r in rows if r["guarantee"] == g]
        summary[g] = {k: statistics.median(r[k] for r in rs) for k in
                      ("results_per_s", "events_per_s", "baseline_events_per_s", "ratio_to_baseline", "process_s")
                      if all(k in r for r in rs)}
    print(json.dumps({"summary": summary, "machine": f"{os.cpu_count()} cores", "argv": sys.argv[1:]}))


if __name__ == "__main__":
    main()
