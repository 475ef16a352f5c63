"""The coordinator against a real broker: exactly one completion per job and phase, also under
SIGKILL, rebalances, timeouts and bad input. Completions are read with read_committed."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Producer

from visionjobs.codec import get_codec
from visionjobs.records import DeadLetter, ImageEmbeddingResult, ProductsImagesReadyBatch, utcnow
from visionjobs.testing.loadgen import LoadSpec, make_producer, plan_jobs, produce
from visionjobs.testing.verify import collect, read_all, wait_for_completions
from visionjobs.testing.workers import WorkerProcess
from visionjobs.topics import DEAD_LETTER, EMBEDDING_RESULT, IMAGES_READY_BATCH, topic_name

pytestmark = pytest.mark.integration


def coordinator(vj_env, logs, name="coordinator", **extra) -> WorkerProcess:
    return WorkerProcess("coordinator", {**vj_env, **extra}, logs, name=name)


def assert_exactly_once(report):
    assert report.ok, json.dumps({
        "summary": report.summary(),
        "duplicates": {k: v[:5] for k, v in report.duplicates.items()},
        "missing": {k: v[:5] for k, v in report.missing.items()},
        "wrong_counts": {k: v[:3] for k, v in report.wrong_counts.items()},
    }, indent=1, default=str)
    assert report.completions == 2 * report.jobs


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def http_get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_500_jobs_exactly_one_completion_each(vj_env, vj_settings, worker_logs):
    spec = LoadSpec(jobs=500, seed=11)
    plans = plan_jobs(spec)
    with coordinator(vj_env, worker_logs).start() as worker:
        worker.wait_ready()
        produce(vj_settings, plans, spec)
        report = wait_for_completions(vj_settings, plans, timeout_s=180)
        assert_exactly_once(report)
        # job progress over HTTP, from the worker that owns the job
        job = next(p for p in plans if p.total > 0)
        status, body = http_get(f"{worker.url}/jobs/{job.job_id}")
        assert status == 200
        emb = body["phases"]["EMBEDDINGS"]
        assert (emb["total"], emb["done"], emb["completed"], emb["status"]) == (job.total, job.total, True, "COMPLETED")
        assert emb["succeeded"] == len(job.ok["EMBEDDINGS"])
        status, body = http_get(f"{worker.url}/jobs/no-such-job")
        assert status == 404
        # Prometheus metrics of the running worker
        with urllib.request.urlopen(f"{worker.url}/metrics", timeout=10) as resp:
            metrics = parse_metrics(resp.read().decode())
        for phase in ("EMBEDDINGS", "KEYPOINTS"):
            assert metrics[f'visionjobs_completions_total{{phase="{phase}",status="COMPLETED"}}'] == 500
        consumed = sum(v for k, v in metrics.items() if k.startswith("visionjobs_events_consumed_total{"))
        assert consumed >= sum(2 * p.total + 2 for p in plans)  # results (incl. duplicates) + batch per phase
        assert any(k.startswith("visionjobs_events_ignored_total{") and v > 0 for k, v in metrics.items())
        assert metrics['visionjobs_completion_latency_seconds_count{phase="EMBEDDINGS"}'] == 500
    # a brand-new app id: the worker created its changelog topics before joining the group, so the first
    # assignment had them and no agent or buffer crashed on a table write (Faust acks a crashed event)
    log = worker.log_text()
    assert "internal topics ready" in log and "-coordinator-keypoints-changelog" in log
    assert "Crashed reason" not in log


def _produce_in_background(settings, plans, spec, rate):
    errors = []

    def run():
        try:
            produce(settings, plans, spec, rate=rate)
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_sigkill_three_times_still_exactly_once(vj_env, vj_settings, worker_logs):
    """kill -9 the coordinator at random moments while it processes; state comes back from the
    changelog and the transactions hold: no duplicate, no missing completion, right counts."""
    spec = LoadSpec(jobs=500, seed=12, duplicate_fraction=0.3)
    plans = plan_jobs(spec)
    rnd = random.Random(12)
    worker = coordinator(vj_env, worker_logs).start().wait_ready()
    thread, errors = _produce_in_background(vj_settings, plans, spec, rate=400)
    try:
        for _ in range(3):
            time.sleep(rnd.uniform(2.0, 6.0))
            worker.kill(signal.SIGKILL)
            worker.start().wait_ready()
        thread.join(timeout=120)
        assert not errors, errors
        report = wait_for_completions(vj_settings, plans, timeout_s=240)
        assert worker.starts == 4
    finally:
        worker.stop()
    assert_exactly_once(report)


def test_rebalance_worker_joins_and_leaves(vj_env, vj_settings, worker_logs):
    spec = LoadSpec(jobs=400, seed=13)
    plans = plan_jobs(spec)
    first = coordinator(vj_env, worker_logs, name="first").start().wait_ready()
    second = coordinator(vj_env, worker_logs, name="second")
    thread, errors = _produce_in_background(vj_settings, plans, spec, rate=400)
    try:
        time.sleep(4)
        second.start().wait_ready()  # joins mid-run: partitions move to it
        time.sleep(4)
        assert first.stop(), "SIGTERM: the worker should commit and leave on its own"  # leaves mid-run
        thread.join(timeout=120)
        assert not errors, errors
        report = wait_for_completions(vj_settings, plans, timeout_s=240)
    finally:
        first.stop()
        second.stop()
    assert_exactly_once(report)


def test_failover_the_survivor_takes_over_a_sigkilled_peer(vj_env, vj_settings, worker_logs):
    """Two replicas; one is SIGKILLed mid-run and never comes back. The survivor gets back the
    partitions it kept as standbys and finishes every job exactly once, and stays up. (Before
    eos.py item 10 it reused the producers its peer had fenced: ProducerFenced, crash, no
    completions for half of the jobs.)"""
    spec = LoadSpec(jobs=400, seed=17)
    plans = plan_jobs(spec)
    survivor = coordinator(vj_env, worker_logs, name="survivor").start().wait_ready()
    peer = coordinator(vj_env, worker_logs, name="peer")
    thread, errors = _produce_in_background(vj_settings, plans, spec, rate=400)
    try:
        time.sleep(2)
        peer.start().wait_ready()  # joins: half of the partitions move to it, the survivor keeps standbys
        time.sleep(4)
        peer.kill(signal.SIGKILL)  # a failover: the survivor takes everything back after the session timeout
        thread.join(timeout=120)
        assert not errors, errors
        report = wait_for_completions(vj_settings, plans, timeout_s=240)
        assert survivor.alive(), survivor.log_text()[-3000:]
        assert "ProducerFenced" not in survivor.log_text()
    finally:
        survivor.stop()
        peer.stop()
    assert_exactly_once(report)


def test_stale_job_times_out_exactly_once_and_state_is_retained_then_deleted(vj_env, vj_settings, worker_logs):
    codec = get_codec()
    producer = make_producer(vj_settings)
    job_id = f"stale-{vj_env['VISIONJOBS_TOPIC_PREFIX']}"
    env = {"VISIONJOBS_JOB_TIMEOUT_S": "4", "VISIONJOBS_TICK_INTERVAL_S": "1",
           "VISIONJOBS_COMPLETED_RETENTION_S": "6"}
    with coordinator(vj_env, worker_logs, **env).start() as worker:
        worker.wait_ready()
        producer.produce(topic_name(vj_settings, IMAGES_READY_BATCH), key=job_id.encode(),
                         value=codec.encode(ProductsImagesReadyBatch(job_id, "e1", 5)))
        for n, status in enumerate(["OK", "FAILED"]):
            producer.produce(topic_name(vj_settings, EMBEDDING_RESULT), key=job_id.encode(),
                             value=codec.encode(ImageEmbeddingResult(f"r{n}", job_id, f"img-{n}", "p", status,
                                                                     None, "m", [], utcnow())))
        producer.flush(30)
        deadline = time.monotonic() + 60
        found = {}
        while time.monotonic() < deadline:
            found = collect(vj_settings, idle_s=1.0)
            if found["EMBEDDINGS"].get(job_id) and found["KEYPOINTS"].get(job_id):
                break
            time.sleep(1)
        emb = found["EMBEDDINGS"][job_id]
        kp = found["KEYPOINTS"][job_id]
        assert len(emb) == 1 and len(kp) == 1
        assert (emb[0].status, emb[0].total, emb[0].done, emb[0].succeeded, emb[0].failed) == ("TIMED_OUT", 5, 2, 1, 1)
        assert (kp[0].status, kp[0].total, kp[0].done) == ("TIMED_OUT", 5, 0)
        status, body = http_get(f"{worker.url}/jobs/{job_id}")
        assert status == 200 and body["phases"]["EMBEDDINGS"]["status"] == "TIMED_OUT"
        # more ticks keep coming; none may complete the job again, and after the retention the
        # state is deleted (tombstone), so the job is unknown
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and http_get(f"{worker.url}/jobs/{job_id}")[0] != 404:
            time.sleep(1)
        assert http_get(f"{worker.url}/jobs/{job_id}")[0] == 404
    found = collect(vj_settings, idle_s=1.0)
    assert len(found["EMBEDDINGS"][job_id]) == 1 and len(found["KEYPOINTS"][job_id]) == 1


def test_bad_input_is_dead_lettered_and_good_jobs_complete(vj_env, vj_settings, worker_logs):
    codec = get_codec()
    spec = LoadSpec(jobs=30, seed=14)
    plans = plan_jobs(spec)
    raw = Producer({"bootstrap.servers": vj_settings.bootstrap_servers, "partitioner": "murmur2_random"})
    batch_topic = topic_name(vj_settings, IMAGES_READY_BATCH)
    with coordinator(vj_env, worker_logs).start() as worker:
        worker.wait_ready()
        raw.produce(batch_topic, key=b"bad-1", value=b"\x00\x01garbage that is not avro")
        raw.produce(topic_name(vj_settings, EMBEDDING_RESULT), key=b"bad-2", value=b'{"json": true}')
        raw.produce(batch_topic, key=b"bad-3", value=codec.encode(ProductsImagesReadyBatch("bad-3", "e", -4)))
        raw.flush(30)
        produce(vj_settings, plans, spec)
        report = wait_for_completions(vj_settings, plans, timeout_s=120)
        assert worker.alive()
    assert_exactly_once(report)
    letters = [codec.decode(m.value()) for m in read_all(vj_settings, [topic_name(vj_settings, DEAD_LETTER)])]
    assert all(isinstance(d, DeadLetter) for d in letters)
    by_key = {}
    for d in letters:
        by_key.setdefault(d.key, []).append(d)
    # one coordinator agent consumes the batch topic for both phases: one dead letter per bad event
    assert [d.error.split(":")[0] for d in by_key[b"bad-1"]] == ["bad_magic"]
    assert by_key[b"bad-1"][0].value == b"\x00\x01garbage that is not avro"
    assert by_key[b"bad-1"][0].source_topic == batch_topic
    assert [d.error.split(":")[0] for d in by_key[b"bad-2"]] == ["bad_magic"]
    assert [d.error.split(":")[0] for d in by_key[b"bad-3"]] == ["negative_total"]
    assert all("[consumer=coordinator]" in d.error for d in letters)
    assert set(by_key) == {b"bad-1", b"bad-2", b"bad-3"}
