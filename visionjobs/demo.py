"""The whole pipeline on one machine: ``visionjobs demo`` and ``visionjobs smoke``.

:class:`LocalStack` brings up what a run needs and takes down exactly what it brought up:

* a broker: the one ``KAFKA_BOOTSTRAP_SERVERS`` names, else the local Kafka, started if none answers
  (and stopped again at the end only if this run started it);
* the contract's topics, under a topic prefix and app id unique to the run (so reruns, and runs next
  to other users of the same broker, never see each other's data); deleted again at the end;
* one worker process per role (embedding, keypoints, coordinator), started in parallel, each with
  its own web port and log file.

:func:`run_demo` submits the sample images as one job, waits for both phase completions and shows,
for each image, its nearest other image by embedding cosine similarity (read back from
``image.embedding.result``), with the ORB near-duplicate score of that pair.

:func:`run_smoke` pushes several jobs through (the sample images, a job with one image outside the
image roots, an empty job, ...) and checks that each job has exactly one completion per phase, with
the right counts.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .product_finder import (CompletionWatcher, ImageRef, collect_images, completion_dict, make_producer,
                             new_job_id, publish_job)
from .settings import REPO_DIR, Settings
from .testing.workers import settings_from_env
from .topics import EMBEDDING_RESULT, KEYPOINTS_RESULT, topic_name

ROLES = ("embedding", "keypoints", "coordinator")
SAMPLE_IMAGES = REPO_DIR / "images"
PHASES = ("EMBEDDINGS", "KEYPOINTS")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LocalStack:
    """Broker (if needed), topics and worker processes for one run; a context manager.

    Args:
        env: the environment of the workers (``VISIONJOBS_*``, ``KAFKA_BOOTSTRAP_SERVERS``). When
            given, the broker and the isolation are the caller's (tests pass their fixtures' env);
            when None, a broker is ensured and a unique topic prefix / app id is made for the run,
            and its topics are deleted at the end (unless ``keep_topics``).
        roles: the worker roles to start (none: use workers that already run).
    """

    def __init__(self, env: Optional[dict[str, str]] = None, *, roles: Sequence[str] = ROLES,
                 log_dir: Optional[Path] = None, say: Callable[[str], None] = _stderr,
                 keep_topics: bool = False, ready_timeout_s: float = 180.0, log_level: str = "info") -> None:
        self.own_env = env is None
        self.env: dict[str, str] = dict(env or {})
        self.roles = tuple(roles)
        self.say = say
        self.keep_topics = keep_topics
        self.ready_timeout_s = ready_timeout_s
        self.log_level = log_level
        self.workdir: Optional[Path] = None
        self.log_dir = Path(log_dir) if log_dir else None
        self.workers: list[Any] = []
        self.broker_started = False
        self.settings: Optional[Settings] = None
        self.failed = False

    # ---------------------------------------------------------------- up
    def start(self) -> "LocalStack":
        try:
            self._start()
        except BaseException as exc:
            self.failed = not isinstance(exc, KeyboardInterrupt)
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from .admin import create_topics
        from .testing.workers import WorkerProcess, isolated_env

        if self.own_env:
            from .broker import ensure_broker

            bootstrap, self.broker_started = ensure_broker()
            run = uuid.uuid4().hex[:8]
            self.workdir = Path(tempfile.mkdtemp(prefix=f"visionjobs-{run}-"))
            self.env = isolated_env(bootstrap, f"vj-{run}", self.workdir / "data")
        self.settings = settings_from_env(self.env)
        if self.log_dir is None:
            if self.workdir is None:
                self.workdir = Path(tempfile.mkdtemp(prefix="visionjobs-"))
            self.log_dir = self.workdir / "logs"
        create_topics(self.settings)
        if not self.roles:
            return
        started = time.monotonic()
        self.say(f"starting workers {', '.join(self.roles)} (topic prefix {self.settings.topic_prefix!r}, "
                 f"logs in {self.log_dir}) ...")
        self.workers = [WorkerProcess(role, self.env, self.log_dir, log_level=self.log_level).start()
                        for role in self.roles]
        for worker in self.workers:  # they start in parallel; wait for each in turn
            worker.wait_ready(self.ready_timeout_s)
        self.say(f"workers ready after {time.monotonic() - started:.1f}s")

    def worker(self, role: str) -> Any:
        return next(w for w in self.workers if w.role == role)

    def check_alive(self) -> list[str]:
        """Roles whose worker process has exited."""
        return [w.role for w in self.workers if not w.alive()]

    def log_tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {w.name} ({w.log_path}) ---\n{w.log_text()[-chars:]}" for w in self.workers)

    # ---------------------------------------------------------------- down
    def stop(self) -> None:
        """Stop what this stack started (never anything else); safe to call twice."""
        workers, self.workers = self.workers, []
        if workers:
            with ThreadPoolExecutor(len(workers)) as pool:
                list(pool.map(lambda w: w.stop(timeout=30), workers))
        if self.own_env and self.settings is not None and not self.keep_topics:
            try:
                self._delete_topics()
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real outcome
                self.say(f"could not delete the run's topics: {exc}")
        if self.broker_started:
            from .broker import LocalKafka

            LocalKafka(say=self.say).down()
            self.broker_started = False
        if self.workdir is not None and self.workdir.exists():
            if self.failed or self.keep_topics:
                self.say(f"kept {self.workdir} (worker logs)")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _delete_topics(self) -> None:
        from .admin import delete_environment

        assert self.settings is not None
        delete_environment(self.settings)

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.failed = True  # keep the worker logs for a post-mortem
        self.stop()


# --------------------------------------------------------------------------- reading results
def read_committed(settings: Settings, topic: str, keys: Optional[set[str]] = None, expected: int = 0,
                   timeout_s: float = 30.0, idle_s: float = 1.0) -> list[tuple[int, Any]]:
    """``(partition, record)`` of every committed message on the topic (read_committed, from the
    start) whose key is one of ``keys`` (all when None), waiting up to ``timeout_s`` until at least
    ``expected`` are there and then until nothing new came for ``idle_s``."""
    from confluent_kafka import TopicPartition

    from .codec import CodecError, get_codec
    from .product_finder import committed_consumer

    consumer = committed_consumer(settings)
    codec = get_codec()
    name = topic_name(settings, topic)
    out: list[tuple[int, Any]] = []
    try:
        md = consumer.list_topics(name, timeout=15).topics[name]
        consumer.assign([TopicPartition(name, p, 0) for p in md.partitions])
        deadline = time.monotonic() + timeout_s
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.3)
            for msg in batch:
                if msg.error():
                    continue
                if keys is not None and (msg.key() is None or msg.key().decode(errors="replace") not in keys):
                    continue
                try:
                    out.append((msg.partition(), codec.decode(msg.value(), topic=name)))
                except CodecError:
                    continue
            if batch:
                idle_since = time.monotonic()
            elif len(out) >= expected and time.monotonic() - idle_since > idle_s:
                break
    finally:
        consumer.close()
    return out


def read_results(settings: Settings, topic: str, job_ids: set[str], expected: int = 0,
                 timeout_s: float = 30.0) -> list[Any]:
    """The committed result records of ``job_ids`` on a result topic (see :func:`read_committed`)."""
    return [record for _, record in read_committed(settings, topic, job_ids, expected, timeout_s)]


# --------------------------------------------------------------------------- demo
@dataclass
class Neighbour:
    image_id: str
    nearest: Optional[str]
    cosine: Optional[float]
    same_product: bool
    orb: Optional[float] = None
    keypoints: Optional[int] = None
    status: str = "OK"


def nearest_neighbours(vectors: dict[str, Sequence[float]]) -> dict[str, tuple[Optional[str], Optional[float]]]:
    """For each image id, its most cosine-similar other image (vectors need not be normalised)."""
    import numpy as np

    ids = sorted(vectors)
    if len(ids) < 2:
        return {i: (None, None) for i in ids}
    m = np.asarray([vectors[i] for i in ids], dtype=np.float64)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    sim = m @ m.T
    np.fill_diagonal(sim, -np.inf)
    best = sim.argmax(axis=1)
    return {ids[k]: (ids[int(j)], float(sim[k, j])) for k, j in enumerate(best)}


def orb_scores(pairs: Sequence[tuple[Path, Path]]) -> list[Optional[float]]:
    from .vision.keypoints import KeypointExtractor
    from .vision.loader import decode_image

    extractor = KeypointExtractor("orb", 500)
    cache: dict[Path, Any] = {}

    def image(path: Path) -> Any:
        if path not in cache:
            cache[path] = decode_image(path.read_bytes())
        return cache[path]

    out: list[Optional[float]] = []
    for a, b in pairs:
        try:
            out.append(extractor.near_duplicate_score(image(a), image(b)))
        except Exception:  # noqa: BLE001 - optional column
            out.append(None)
    return out


def job_progress(url: str, job_id: str) -> Optional[dict]:
    try:
        with urllib.request.urlopen(f"{url}/jobs/{job_id}", timeout=5) as resp:
            return json.loads(resp.read())
    except Exception:  # noqa: BLE001 - informative only
        return None


def run_demo(images_dir: Path = SAMPLE_IMAGES, *, timeout_s: float = 180.0, keep: bool = False,
             out: Callable[[str], None] = print, say: Callable[[str], None] = _stderr) -> dict:
    """Broker, topics, workers; the sample job; its completions and nearest neighbours. Returns a
    summary dict (``ok``, ``matched``, ...); prints the human-readable report with ``out``."""
    started = time.monotonic()
    with LocalStack(say=say, keep_topics=keep) as stack:
        settings = stack.settings
        assert settings is not None
        images = collect_images([images_dir])
        if not images:
            raise RuntimeError(f"no images in {images_dir}")
        job_id = new_job_id()
        with CompletionWatcher(settings) as watcher:
            watcher.mark()
            submitted = publish_job(settings, job_id, images, progress=True)
            say(f"submitted job {job_id}: {len(images)} images (partition {submitted.partition}); waiting ...")
            done = watcher.wait([job_id], timeout_s=timeout_s, linger_s=1.0)
            completions = {p: watcher.completions.get(job_id, p) for p in PHASES}
        if not done:
            dead = stack.check_alive()
            raise RuntimeError(f"job {job_id} did not complete within {timeout_s:g}s"
                               + (f"; workers exited: {dead}" if dead else "") + "\n" + stack.log_tails())
        out(f"\n== job {job_id}: {len(images)} images from {images_dir}")
        for phase in PHASES:
            for record in completions[phase]:
                out(f"-- {phase} completion --")
                out(json.dumps(completion_dict(record), indent=2))
        progress = job_progress(stack.worker("coordinator").url, job_id)
        if progress is not None:
            out("-- GET /jobs/{job_id} on the coordinator --")
            out(json.dumps(progress, indent=2))

        embeddings = read_results(settings, EMBEDDING_RESULT, {job_id}, expected=len(images))
        keypoints = read_results(settings, KEYPOINTS_RESULT, {job_id}, expected=len(images))
        rows = neighbour_rows(images, embeddings, keypoints)
        out("\n== nearest other image by embedding cosine similarity "
            f"(model {embeddings[0].model if embeddings else '?'}), ORB near-duplicate score of the pair")
        out(format_rows(rows))
        variants = [r for r in rows if "__" in r.image_id]
        matched = [r for r in variants if r.same_product]
        out(f"\naltered copies whose nearest image is of the same product: {len(matched)}/{len(variants)}")
        ok = (len(completions["EMBEDDINGS"]) == 1 and len(completions["KEYPOINTS"]) == 1
              and len(matched) == len(variants))
        summary = {"ok": ok, "job_id": job_id, "images": len(images),
                   "completions": {p: [completion_dict(r) for r in completions[p]] for p in PHASES},
                   "variants": len(variants), "matched": len(matched),
                   "seconds": round(time.monotonic() - started, 1)}
    say(f"demo finished in {time.monotonic() - started:.1f}s")
    return summary


def neighbour_rows(images: Sequence[ImageRef], embeddings: Sequence[Any], keypoints: Sequence[Any]) -> list[Neighbour]:
    by_id = {im.image_id: im for im in images}
    latest = {r.image_id: r for r in embeddings}  # duplicates (same event_id) are identical
    vectors = {i: r.embedding for i, r in latest.items() if r.status == "OK"}
    nearest = nearest_neighbours(vectors)
    kp_count = {r.image_id: len(r.keypoints) if r.status == "OK" else None for r in keypoints}
    rows: list[Neighbour] = []
    pairs: list[tuple[Path, Path]] = []
    pair_rows: list[Neighbour] = []
    for im in images:
        rec = latest.get(im.image_id)
        if rec is None or rec.status != "OK":
            rows.append(Neighbour(im.image_id, None, None, False, keypoints=kp_count.get(im.image_id),
                                  status="missing" if rec is None else f"FAILED ({rec.error})"))
            continue
        other, cos = nearest.get(im.image_id, (None, None))
        same = other is not None and by_id[other].product_id == im.product_id
        row = Neighbour(im.image_id, other, cos, same, keypoints=kp_count.get(im.image_id))
        rows.append(row)
        if other is not None and im.path is not None and by_id[other].path is not None:
            pairs.append((im.path, by_id[other].path))  # type: ignore[arg-type]
            pair_rows.append(row)
    for row, score in zip(pair_rows, orb_scores(pairs)):
        row.orb = score
    return rows


def format_rows(rows: Sequence[Neighbour]) -> str:
    width = max([len(r.image_id) for r in rows] + [len(r.nearest or "") for r in rows] + [5])
    lines = [f"{'image':<{width}}  {'nearest':<{width}}  cosine   orb  kps  same product"]
    for r in rows:
        if r.nearest is None:
            lines.append(f"{r.image_id:<{width}}  {r.status}")
            continue
        orb = f"{r.orb:.2f}" if r.orb is not None else "  - "
        kps = f"{r.keypoints:>4}" if r.keypoints is not None else "   -"
        lines.append(f"{r.image_id:<{width}}  {r.nearest:<{width}}  {r.cosine:6.3f}  {orb}  {kps}  "
                     f"{'yes' if r.same_product else 'no'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- smoke
@dataclass
class SmokeJob:
    name: str
    job_id: str
    images: int
    expect_failed: int
    completions: dict[str, list[dict]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"name": self.name, "job_id": self.job_id, "images": self.images,
                "expect_failed": self.expect_failed, "ok": self.ok, "problems": self.problems,
                "completions": {p: [{k: c[k] for k in ("status", "total", "done", "succeeded", "failed")}
                                    for c in cs] for p, cs in self.completions.items()}}


@dataclass
class SmokeReport:
    jobs: list[SmokeJob]
    seconds: float = 0.0
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(j.ok for j in self.jobs)

    def failures(self) -> list[SmokeJob]:
        return [j for j in self.jobs if not j.ok]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "seconds": round(self.seconds, 1), "error": self.error,
                "jobs": [j.to_dict() for j in self.jobs]}


def smoke_plan(n_jobs: int, images_dir: Path, scratch: Path, settings: Settings) -> list[tuple[str, list[ImageRef], int]]:
    """``(name, images, expected failures per phase)`` of each smoke job."""
    from .product_finder import outside_roots

    samples = collect_images([images_dir])
    if not samples:
        raise RuntimeError(f"no sample images in {images_dir}")
    # an image that is perfectly fine, but outside the image roots: the workers must refuse it
    outside = scratch / "outside-the-roots.jpg"
    shutil.copyfile(samples[0].path, outside)  # type: ignore[arg-type]
    bad = collect_images([outside])
    if not outside_roots(bad, settings):  # the roots include the scratch dir: use a path that cannot be read
        bad = [ImageRef(uri="/nonexistent/visionjobs-smoke/outside.jpg", image_id="outside.jpg", product_id="outside")]
    plan: list[tuple[str, list[ImageRef], int]] = [
        ("samples", samples, 0),
        ("outside-roots", samples[:3] + bad, 1),
        ("empty", [], 0),
    ]
    k = 0
    while len(plan) < n_jobs:
        size = 1 + k % len(samples)
        start = (k * 5) % len(samples)
        subset = (samples[start:] + samples[:start])[:size]
        plan.append((f"subset-{k}", subset, 0))
        k += 1
    return plan[:n_jobs]


def check_completions(job: SmokeJob, found: dict[str, list[Any]]) -> None:
    """Exactly one completion per phase, COMPLETED, with the expected counts."""
    for phase in PHASES:
        records = found.get(phase, [])
        job.completions[phase] = [completion_dict(r) for r in records]
        if not records:
            job.problems.append(f"no {phase} completion")
            continue
        if len(records) > 1:
            job.problems.append(f"MULTIPLE {phase} completions: {len(records)}")
        r = records[0]
        want = ("COMPLETED", job.images, job.images, job.images - job.expect_failed, job.expect_failed)
        got = (r.status, r.total, r.done, r.succeeded, r.failed)
        if got != want:
            job.problems.append(f"{phase} (status, total, done, succeeded, failed) = {got}, expected {want}")


def run_smoke(*, jobs: int = 3, env: Optional[dict[str, str]] = None, settings: Optional[Settings] = None,
              start: bool = True, log_dir: Optional[Path] = None, timeout_s: float = 180.0,
              linger_s: float = 3.0, images_dir: Path = SAMPLE_IMAGES, roles: Sequence[str] = ROLES,
              say: Callable[[str], None] = _stderr) -> SmokeReport:
    """Run ``jobs`` jobs end to end and check their completions (read_committed).

    ``start``: start the three workers (in an isolated run when ``env`` is None, else with ``env``);
    without it, use workers that already run with ``settings`` (default: the environment's).
    """
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    started = time.monotonic()
    stack = LocalStack(env, roles=roles if start else (), log_dir=log_dir, say=say) if (start or env) else None
    report = SmokeReport(jobs=[])
    scratch = Path(tempfile.mkdtemp(prefix="visionjobs-smoke-"))
    try:
        if stack is not None:
            stack.start()
            settings = stack.settings
        if settings is None:
            from .settings import get_settings

            settings = get_settings()
        assert settings is not None
        plan = smoke_plan(jobs, images_dir, scratch, settings)
        run = uuid.uuid4().hex[:6]
        producer = make_producer(settings)
        with CompletionWatcher(settings) as watcher:
            watcher.mark()
            for i, (name, images, failed) in enumerate(plan):
                job = SmokeJob(name, f"smoke-{run}-{i}-{name}", len(images), failed)
                publish_job(settings, job.job_id, images, producer=producer)
                report.jobs.append(job)
            say(f"submitted {len(plan)} jobs ({sum(j.images for j in report.jobs)} images); waiting ...")
            done = watcher.wait([j.job_id for j in report.jobs], timeout_s=timeout_s, linger_s=linger_s)
            for job in report.jobs:
                check_completions(job, {p: watcher.completions.get(job.job_id, p) for p in PHASES})
        if not done and stack is not None:
            dead = stack.check_alive()
            report.error = f"not every job completed within {timeout_s:g}s" + (f"; workers exited: {dead}" if dead else "")
        elif not done:
            report.error = f"not every job completed within {timeout_s:g}s (are the workers running?)"
        if stack is not None and not report.ok:
            stack.failed = True
    except BaseException as exc:
        if stack is not None:
            stack.failed = True
        if isinstance(exc, Exception):
            report.error = f"{type(exc).__name__}: {exc}"
        else:
            raise
    finally:
        if stack is not None:
            stack.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        report.seconds = time.monotonic() - started
    return report


__all__ = ["LocalStack", "run_demo", "run_smoke", "SmokeReport", "SmokeJob", "nearest_neighbours",
           "read_committed", "read_results", "settings_from_env"]
