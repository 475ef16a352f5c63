#!/usr/bin/env python
"""Completion latency at a steady input rate: time from producing a job's last event to its
completion being visible to a read_committed consumer, for several commit intervals.

    .venv/bin/python scripts/bench_latency.py --rate 5000 --seconds 30 --commit-intervals 0.05,0.1,0.5,2.8

For each commit interval: one coordinator worker (exactly-once), jobs produced at ``--rate`` events/s,
p50/p90/p99 of the per-job latency (both phases), and the throughput the worker kept up with.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from visionjobs.admin import create_topics, delete_topics
from visionjobs.broker import ensure_broker
from visionjobs.codec import get_codec
from visionjobs.testing.loadgen import LoadSpec, iter_events, make_producer, plan_jobs
from visionjobs.testing.workers import WorkerProcess, isolated_env, settings_from_env
from visionjobs.topics import CONTRACT, EMBEDDINGS_COMPLETED, KEYPOINTS_COMPLETED, topic_name


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    k = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[k]


def run(bootstrap: str, interval: float, args) -> dict:
    run_id = uuid.uuid4().hex[:8]
    env = isolated_env(bootstrap, f"lat{run_id}", tempfile.mkdtemp(), commit_interval_s=interval,
                       processing_guarantee=args.guarantee, producer_linger_s=args.linger)
    settings = settings_from_env(env)
    create_topics(settings)
    jobs = int(args.rate * args.seconds / (args.max_images + 1)) + 1
    spec = LoadSpec(jobs=jobs, max_images=args.max_images, duplicate_fraction=0.0, failure_fraction=0.05,
                    total_last_fraction=1.0, seed=7, interleave=8)
    plans = plan_jobs(spec)
    worker = WorkerProcess("coordinator", env, Path(tempfile.mkdtemp()), log_level="info").start()
    last_sent: dict[str, float] = {}
    done_at: dict[tuple[str, str], float] = {}
    # the split, in wall-clock seconds (one machine, one clock): when our producer queued the job's last
    # event, when the worker produced the completion (the record's CreateTime, set by aiokafka at send)
    # and when the completion became visible read_committed
    last_sent_wall: dict[str, float] = {}
    split: dict[tuple[str, str], tuple[float, float]] = {}
    codec = get_codec()
    try:
        worker.wait_ready(timeout=120)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{run_id}",
                             "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        topics = [topic_name(settings, EMBEDDINGS_COMPLETED), topic_name(settings, KEYPOINTS_COMPLETED)]
        md = consumer.list_topics(timeout=10).topics
        consumer.assign([TopicPartition(t, p, 0) for t in topics for p in md[t].partitions])
        stop = threading.Event()

        def consume():
            while not stop.is_set():
                for m in consumer.consume(1000, timeout=0.05):
                    if not m.error():
                        rec = codec.decode(m.value())
                        done_at[(rec.job_id, rec.phase)] = time.monotonic()
                        split[(rec.job_id, rec.phase)] = (m.timestamp()[1] / 1000.0, time.time())

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        producer = make_producer(settings, **{"linger.ms": 1})
        # pace in steps of ~2 ms of events: bursts (the first version paced every 200 events, 200 ms
        # at 1,000/s) queue up in the worker and show up as latency that a steady source would not see
        step = max(1, int(args.rate * 0.002))
        started = time.monotonic()
        sent = 0
        for topic, key, record in iter_events(plans, spec, settings):
            producer.produce(topic, key=key.encode(), value=codec.encode(record))
            last_sent[key] = time.monotonic()  # batch event is last per job (total_last_fraction=1)
            last_sent_wall[key] = time.time()
            sent += 1
            if sent % step == 0:
                producer.poll(0)
                ahead = sent / args.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(30)
        produce_s = time.monotonic() - started
        deadline = time.monotonic() + 120
        while len(done_at) < 2 * len(plans) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        reader.join(5)
        consumer.close()
    finally:
        worker.stop()
    lat = [done_at[(p.job_id, ph)] - last_sent[p.job_id] for p in plans for ph in ("EMBEDDINGS", "KEYPOINTS")
           if (p.job_id, ph) in done_at]
    to_send = [split[k][0] - last_sent_wall[k[0]] for k in split]
    to_visible = [split[k][1] - split[k][0] for k in split]
    delete_topics(settings, [topic_name(settings, s.name) for s in CONTRACT])
    return {"commit_interval_s": interval, "guarantee": args.guarantee, "rate_target": args.rate,
            "rate_achieved": round(sent / produce_s, 1), "jobs": len(plans), "completions": len(done_at),
            "p50_ms": round(1000 * percentile(lat, 0.5), 1), "p90_ms": round(1000 * percentile(lat, 0.9), 1),
            "p99_ms": round(1000 * percentile(lat, 0.99), 1), "max_ms": round(1000 * max(lat), 1),
            # last event queued -> completion sent by the worker (input path, fetch, processing)
            "to_send_p50_ms": round(1000 * percentile(to_send, 0.5), 1),
            "to_send_p99_ms": round(1000 * percentile(to_send, 0.99), 1),
            # completion sent -> visible read_committed (waiting for the commit, the commit itself, the read)
            "to_visible_p50_ms": round(1000 * percentile(to_visible, 0.5), 1),
            "to_visible_p99_ms": round(1000 * percentile(to_visible, 0.99), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-images", type=int, default=20)
    ap.add_argument("--commit-intervals", default="0.05,0.1,0.5,2.8")
    ap.add_argument("--guarantee", default="exactly_once")
    ap.add_argument("--linger", type=float, default=None, help="VISIONJOBS_PRODUCER_LINGER_S of the worker")
    ap.add_argument("--runs", type=int, default=1, help="runs per commit interval (the summary gives medians)")
    args = ap.parse_args()
    bootstrap, _ = ensure_broker()
    intervals = [float(x) for x in args.commit_intervals.split(",")]
    rows = []
    for i in range(args.runs):
        for interval in intervals:
            row = run(bootstrap, interval, args)
            row["run"] = i
            print(json.dumps(row), flush=True)
            rows.append(row)
    keys = ("rate_achieved", "p50_ms", "p90_ms", "p99_ms", "max_ms", "to_send_p50_ms", "to_send_p99_ms",
            "to_visible_p50_ms", "to_visible_p99_ms")
    summary = {str(iv): {k: statistics.median(r[k] for r in rows if r["commit_interval_s"] == iv) for k in keys}
               for iv in intervals}
    print(json.dumps({"summary": summary, "machine": f"{os.cpu_count()} cores", "argv": sys.argv[1:]}))


if __name__ == "__main__":
    main()
