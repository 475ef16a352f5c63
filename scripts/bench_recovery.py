#!/usr/bin/env python
"""Recovery: N jobs in flight, SIGKILL the coordinator, restart it: how long until it processes again.

    .venv/bin/python scripts/bench_recovery.py --jobs 100000 --stores memory://,rocksdb:// --runs 3

For each store: pre-fill N in-flight jobs (a batch event of 3 images and one result per phase, so
every job has state in both tables and none completes), let one coordinator worker (exactly-once)
consume all of it, note its memory, SIGKILL it and start it again at once. Right after the kill a
probe job (0 images: completes as soon as it is processed) is produced; "processing again" is the
time from the kill until the probe's completions are visible to a read_committed consumer. Worker
start-up ("Worker: Ready") is reported too. With ``--static`` the worker uses a consumer group
instance id (static membership), so the restarted worker does not wait for the dead member's session
to time out.

With ``--workers 2`` (failover): two coordinator workers share the partitions, each keeping a standby
copy of the other's tables (``table_standby_replicas=1``); one is SIGKILLed and *not* restarted, and
"processing again" is the time until the survivor has completed probes on every partition (one probe
job per partition, so the dead worker's partitions are among them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from visionjobs.admin import create_topics, delete_topics
from visionjobs.broker import ensure_broker
from visionjobs.codec import get_codec
from visionjobs.product_finder import make_producer, produce_waiting
from visionjobs.records import ImageEmbeddingResult, ImageKeypointsResult, ProductsImagesReadyBatch, utcnow
from visionjobs.settings import Settings
from visionjobs.testing.workers import WorkerProcess, isolated_env, settings_from_env
from visionjobs.topics import (CONTRACT, EMBEDDING_RESULT, EMBEDDINGS_COMPLETED, IMAGES_READY_BATCH,
                               KEYPOINTS_COMPLETED, KEYPOINTS_RESULT, topic_name)

INPUTS = (IMAGES_READY_BATCH, EMBEDDING_RESULT, KEYPOINTS_RESULT)


def prefill(settings: Settings, jobs: int, run: str) -> int:
    codec, producer, now = get_codec(), make_producer(settings), utcnow()
    n = 0
    for i in range(jobs):
        job = f"inflight-{run}-{i:07d}"
        key = job.encode()
        values = [
            (IMAGES_READY_BATCH, ProductsImagesReadyBatch(job, f"b-{job}", 3)),
            (EMBEDDING_RESULT, ImageEmbeddingResult(f"e-{job}", job, "img-0", "p", "OK", None, "m", [], now)),
            (KEYPOINTS_RESULT, ImageKeypointsResult(f"k-{job}", job, "img-0", "p", "OK", None, "orb", [], b"", 0,
                                                    now)),
        ]
        for name, record in values:
            produce_waiting(producer, topic_name(settings, name), key=key, value=codec.encode(record))
            n += 1
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    return n


def lag(settings: Settings, group: str) -> int:
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group,
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        md = c.list_topics(timeout=10).topics
        tps = [TopicPartition(topic_name(settings, t), p) for t in INPUTS for p in md[topic_name(settings, t)].partitions]
        committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
        total = 0
        for tp in tps:
            _, high = c.get_watermark_offsets(tp, timeout=10)
            total += max(0, high - max(0, committed[(tp.topic, tp.partition)]))
        return total
    finally:
        c.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def produce_probes(settings: Settings, run: str, partitions: int) -> list[str]:
    """Probe jobs (0 images) until every partition of the batch topic has one; returns their ids."""
    producer, codec = make_producer(settings), get_codec()
    hit: dict[int, str] = {}
    reports: list[tuple[str, int]] = []
    i = 0
    while len(hit) < partitions and i < 50 * partitions:
        job = f"probe-{run}-{i}"
        producer.produce(topic_name(settings, IMAGES_READY_BATCH), key=job.encode(),
                         value=codec.encode(ProductsImagesReadyBatch(job, f"b-{job}", 0)),
                         on_delivery=lambda err, msg, job=job: reports.append((job, msg.partition())))
        producer.flush(30)
        for job_id, partition in reports:
            hit.setdefault(partition, job_id)
        i += 1
    if len(hit) < partitions:
        raise RuntimeError(f"probes reached partitions {sorted(hit)} only")
    return sorted(hit.values())


def wait_probe(settings: Settings, job_id: "str | list[str]", timeout: float) -> float:
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": f"probe-{uuid.uuid4().hex[:6]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False, "auto.offset.reset": "latest"})
    topics = [topic_name(settings, EMBEDDINGS_COMPLETED), topic_name(settings, KEYPOINTS_COMPLETED)]
    md = c.list_topics(timeout=10).topics
    tps = [TopicPartition(t, p) for t in topics for p in md[t].partitions]
    c.assign([TopicPartition(tp.topic, tp.partition, c.get_watermark_offsets(tp, timeout=10)[0]) for tp in tps])
    wanted = {j.encode() for j in ([job_id] if isinstance(job_id, str) else job_id)}
    seen: set[tuple[bytes, str]] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.05):
                if not m.error() and m.key() in wanted:
                    seen.add((m.key(), m.topic()))
            if len(seen) == 2 * len(wanted):
                return time.monotonic()
        raise TimeoutError(f"probe {job_id} not completed after {timeout}s")
    finally:
        c.close()


def run_once(args, bootstrap: str, store: str) -> dict:
    run = uuid.uuid4().hex[:8]
    env = isolated_env(bootstrap, f"rec{run}", tempfile.mkdtemp(prefix="bench-rec-"), partitions=args.partitions,
                       store=store, group_instance_id=f"rec{run}-0" if args.static else None)
    settings = settings_from_env(env)
    create_topics(settings)
    events = prefill(settings, args.jobs, run)
    logs = Path(tempfile.mkdtemp(prefix="bench-rec-logs-"))
    worker = WorkerProcess("coordinator", env, logs, name="coordinator-0", log_level="info")
    others = [WorkerProcess("coordinator", env, logs, name=f"coordinator-{i}", log_level="info")
              for i in range(1, args.workers)]
    group = f"rec{run}-coordinator"
    try:
        t0 = time.monotonic()
        worker.start()
        for other in others:
            other.start()
        for w in [worker, *others]:
            w.wait_ready(timeout=300)
        while lag(settings, group) > 0:
            if time.monotonic() - t0 > args.timeout:
                raise TimeoutError("the coordinator did not catch up")
            time.sleep(1.0)
        fill_s = time.monotonic() - t0
        time.sleep(2.0)  # let a commit or two pass: the kill lands on a worker at rest
        rss = rss_mb(worker.proc.pid)
        worker.kill(signal.SIGKILL)
        t_kill = time.monotonic()
        if not others:  # one worker: restart it; several: the survivors take over, no restart
            worker.start()
        probes = produce_probes(settings, run, args.partitions)
        if not others:
            worker.wait_ready(timeout=300)
        t_ready = time.monotonic()
        t_probe = wait_probe(settings, probes, args.timeout)
    finally:
        for w in [worker, *others]:
            w.stop()
    row = {"store": store, "static_membership": args.static, "workers": args.workers,
           "jobs_in_flight": args.jobs, "events": events,
           "fill_s": round(fill_s, 1), "rss_mb_before_kill": round(rss, 1),
           "rss_bytes_per_job": round(rss * 1024 * 1024 / args.jobs),
           "ready_after_kill_s": round(t_ready - t_kill, 2) if not others else None, "processing_again_s": round(t_probe - t_kill, 2)}
    if not args.keep:
        delete_topics(settings, [topic_name(settings, s.name) for s in CONTRACT])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--stores", default="memory://,rocksdb://")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--static", action="store_true", help="static group membership (group instance id)")
    ap.add_argument("--workers", type=int, default=1,
                    help="1: kill and restart the worker; 2+: kill one, the others (standbys) take over")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.static and args.workers > 1:
        ap.error("--static gives every worker the same group instance id: use it with --workers 1")
    bootstrap, _ = ensure_broker()
    rows = []
    for i in range(args.runs):
        for store in args.stores.split(","):
            row = run_once(args, bootstrap, store)
            row["run"] = i
            print(json.dumps(row), flush=True)
            rows.append(row)
    keys = ("processing_again_s", "ready_after_kill_s", "rss_bytes_per_job", "fill_s")
    summary = {store: {k: statistics.median(v) for k in keys
                       if (v := [r[k] for r in rows if r["store"] == store and r[k] is not None])}
               for store in args.stores.split(",")}
    print(json.dumps({"summary": summary, "machine": f"{os.cpu_count()} cores", "argv": sys.argv[1:]}))


if __name__ == "__main__":
    main()
