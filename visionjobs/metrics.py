"""Prometheus metrics of every worker, served at ``GET /metrics`` on the worker's web port."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

EVENTS_CONSUMED = Counter("visionjobs_events_consumed_total", "Events consumed, by topic and role",
                          ["topic", "role"])
COMPLETIONS = Counter("visionjobs_completions_total", "Phase completions published", ["phase", "status"])
IGNORED = Counter("visionjobs_events_ignored_total",
                  "Events that changed nothing: duplicates, late events after completion",
                  ["phase", "kind"])
DEAD_LETTERS = Counter("visionjobs_dead_letters_total", "Events sent to the dead-letter topic",
                       ["role", "reason"])
IN_FLIGHT = Gauge("visionjobs_jobs_in_flight", "Jobs with state but no completion yet (local partitions)",
                  ["phase"])
COMPLETION_LATENCY = Histogram(
    "visionjobs_completion_latency_seconds",
    "From the job's first event to its completion (event timestamps)", ["phase"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
RESULTS = Counter("visionjobs_image_results_total", "Per-image results published", ["phase", "status"])
INFERENCE_BATCH = Histogram("visionjobs_inference_batch_size", "Images per inference micro-batch",
                            ["phase"], buckets=(1, 2, 4, 8, 16, 32, 64, 128))
INFERENCE_SECONDS = Histogram("visionjobs_inference_seconds", "Time per inference micro-batch",
                              ["phase"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
TICKS_SENT = Counter("visionjobs_expiry_ticks_sent_total", "Expiry checks published by the ticker")


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
