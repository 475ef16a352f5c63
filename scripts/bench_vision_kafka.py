#!/usr/bin/env python3
"""Throughput of the embedding and keypoint agents through Kafka vs the library called directly.

    .venv/bin/python scripts/bench_vision_kafka.py --n-images 300

Measured in one run, on the same images (the sample set repeated to ``--n-images``):

* **direct**: :func:`visionjobs.vision.bench.bench_direct` - decode + embed in micro-batches of the
  worker's batch size, and decode + ORB/SIFT per image - in this process, nothing else running; for
  keypoints also with a pool of ``keypoints_concurrency`` threads, as the agent runs it;
* **kafka**: for each agent alone, one worker process (``faust -A visionjobs.workers.<role>``) on
  its own topics; after a warm-up job, the N ``ProductImageReady`` events are produced (jobs of
  ``--job-size`` images) and the clock stops when the N-th result is visible to a read_committed
  consumer. The time includes loading the files, Kafka, the transaction commits (every
  ``VISIONJOBS_COMMIT_INTERVAL_S``) and the broker sharing the machine's cores.

Prints one JSON object: images/s of each, and kafka/direct ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from visionjobs.settings import REPO_DIR, get_settings


def direct_numbers(images_dir: Path, n: int, batch_size: int, threads: int) -> dict:
    from visionjobs.vision.bench import bench_direct, load_image_bytes
    from visionjobs.vision.embedder import Embedder
    from visionjobs.vision.keypoints import KeypointExtractor
    from visionjobs.vision.loader import decode_image

    settings = get_settings()
    result = bench_direct(images_dir, n, batch_size, embedder=Embedder.from_settings(settings),
                          extractor=KeypointExtractor.from_settings(settings))
    # the keypoint agent extracts on a pool of `threads` threads, one extractor each
    blobs = load_image_bytes(images_dir, n)
    local = threading.local()

    def one(blob: bytes) -> int:
        extractor = getattr(local, "extractor", None)
        if extractor is None:
            extractor = local.extractor = KeypointExtractor.from_settings(settings)
        return len(extractor.extract(decode_image(blob, settings.max_image_pixels)))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, blobs[: 2 * threads]))  # warm-up
        started = time.perf_counter()
        list(pool.map(one, blobs))
        seconds = time.perf_counter() - started
    result["keypoints_threads"] = threads
    result["keypoints_threaded_images_per_s"] = round(n / seconds, 2)
    return result


def kafka_numbers(role: str, images_dir: Path, n: int, job_size: int, timeout_s: float) -> dict:
    """One worker of ``role`` alone on fresh topics: images/s from first produce to last result."""
    from confluent_kafka import TopicPartition

    from visionjobs.codec import get_codec
    from visionjobs.demo import LocalStack
    from visionjobs.product_finder import ImageRef, collect_images, committed_consumer, make_producer, publish_job
    from visionjobs.topics import EMBEDDING_RESULT, KEYPOINTS_RESULT, topic_name

    result_topic = {"embedding": EMBEDDING_RESULT, "keypoints": KEYPOINTS_RESULT}[role]
    samples = collect_images([images_dir])
    images = [ImageRef(samples[i % len(samples)].uri, f"{i:05d}-{samples[i % len(samples)].image_id}",
                       samples[i % len(samples)].product_id) for i in range(n)]
    run = uuid.uuid4().hex[:6]
    started_stack = time.monotonic()
    with LocalStack(roles=(role,), say=lambda m: print(m, file=sys.stderr, flush=True)) as stack:
        settings = stack.settings
        assert settings is not None
        worker_start_s = time.monotonic() - started_stack
        consumer = committed_consumer(settings)
        name = topic_name(settings, result_topic)
        md = consumer.list_topics(name, timeout=15).topics[name]
        consumer.assign([TopicPartition(name, p, 0) for p in md.partitions])
        codec = get_codec()

        def wait_for(job_ids: set[str], count: int, deadline: float) -> tuple[int, float, int]:
            seen: set[tuple[str, str]] = set()
            failed = 0
            last = time.perf_counter()
            while len(seen) < count and time.monotonic() < deadline:
                for msg in consumer.consume(1000, timeout=0.2):
                    if msg.error() or msg.key() is None or msg.key().decode() not in job_ids:
                        continue
                    record = codec.decode(msg.value())
                    key = (record.job_id, record.image_id)
                    if key not in seen:
                        seen.add(key)
                        failed += record.status != "OK"
                        last = time.perf_counter()
            return len(seen), last, failed

        # warm-up: model load, first batches, transactional producers of every partition
        warm = {f"warm-{run}-{p}" for p in range(4)}
        for job_id in warm:
            publish_job(settings, job_id, samples)
        got, _, _ = wait_for(warm, 4 * len(samples), time.monotonic() + timeout_s)
        if got < 4 * len(samples):
            raise RuntimeError(f"{role}: warm-up incomplete ({got}/{4 * len(samples)})\n{stack.log_tails()}")

        jobs = {f"bench-{run}-{j:04d}": images[j * job_size:(j + 1) * job_size]
                for j in range((n + job_size - 1) // job_size)}
        producer = make_producer(settings)
        started = time.perf_counter()
        for job_id, job_images in jobs.items():
            publish_job(settings, job_id, job_images, producer=producer)
        produced_s = time.perf_counter() - started
        got, last, failed = wait_for(set(jobs), n, time.monotonic() + timeout_s)
        consumer.close()
        if got < n:
            raise RuntimeError(f"{role}: only {got}/{n} results within {timeout_s:g}s\n{stack.log_tails()}")
        seconds = last - started
    return {"images_per_s": round(n / seconds, 2), "seconds": round(seconds, 3), "failed": failed,
            "produce_s": round(produced_s, 3), "jobs": len(jobs), "worker_start_s": round(worker_start_s, 1)}


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-dir", type=Path, default=REPO_DIR / "images")
    parser.add_argument("--n-images", type=int, default=300)
    parser.add_argument("--job-size", type=int, default=20, help="images per job (jobs spread over partitions)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--agents", default="embedding,keypoints")
    args = parser.parse_args(argv)

    from visionjobs.broker import LocalKafka, ensure_broker

    bootstrap, started_broker = ensure_broker()
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap  # the stacks below use it, and never stop it
    load_before = os.getloadavg()
    try:
        # direct before and after the Kafka runs: on a shared machine the drift shows in the spread
        direct = direct_numbers(args.images_dir, args.n_images, settings.batch_size, settings.keypoints_concurrency)
        kafka = {role: kafka_numbers(role, args.images_dir, args.n_images, args.job_size, args.timeout)
                 for role in args.agents.split(",") if role}
        direct_after = direct_numbers(args.images_dir, args.n_images, settings.batch_size,
                                      settings.keypoints_concurrency)
    finally:
        if started_broker:
            LocalKafka().down()

    def mean(key: str) -> float:
        return (direct[key] + direct_after[key]) / 2

    ratio = {}
    if "embedding" in kafka:
        ratio["embedding"] = round(kafka["embedding"]["images_per_s"] / mean("embed_images_per_s"), 3)
    if "keypoints" in kafka:
        ratio["keypoints"] = round(kafka["keypoints"]["images_per_s"] / mean("keypoints_images_per_s"), 3)
        ratio["keypoints_vs_threaded"] = round(
            kafka["keypoints"]["images_per_s"] / mean("keypoints_threaded_images_per_s"), 3)
    summary = {k: [direct[k], direct_after[k]] for k in
               ("embed_images_per_s", "keypoints_images_per_s", "keypoints_threaded_images_per_s")}
    print(json.dumps({"n_images": args.n_images, "batch_size": settings.batch_size,
                      "commit_interval_s": settings.commit_interval_s, "cpu_count": os.cpu_count(),
                      "loadavg_before": [round(x, 2) for x in load_before],
                      "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                      "direct_before_after": summary, "kafka": kafka, "kafka_over_direct": ratio,
                      "direct": direct}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
