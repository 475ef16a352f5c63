"""The product-finder side of the contract: publish a job's images, then wait for its completions.

A job is a set of image files (or URIs). :func:`publish_job` sends, all keyed by ``job_id``:

1. one ``ProductImageReady`` per image to ``products.images.ready``;
2. one ``ProductsCollectionsCompleted`` to ``products.collections.completed``;
3. one ``ProductsImagesReadyBatch(total_images)`` to ``products.images.ready.batch``.

The producer partitions like the Java client and aiokafka (murmur2 of the key), so every event of a
job lands on the same partition number of every topic, as the coordinator's join requires.

:class:`CompletionWatcher` reads both completion topics with ``isolation.level=read_committed``
from offsets taken *before* the job is published, so it sees exactly what the coordinator committed
for the job, and nothing of an earlier run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from .codec import CodecError, get_codec
from .records import (VISIONJOBS_NAMESPACE, JobPhaseCompleted, ProductImageReady, ProductsCollectionsCompleted,
                      ProductsImagesReadyBatch, utcnow)
from .settings import Settings
from .topics import (COLLECTIONS_COMPLETED, EMBEDDINGS_COMPLETED, IMAGES_READY, IMAGES_READY_BATCH,
                     KEYPOINTS_COMPLETED, topic_name)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
PHASES = ("EMBEDDINGS", "KEYPOINTS")
PHASE_TOPICS = {"EMBEDDINGS": EMBEDDINGS_COMPLETED, "KEYPOINTS": KEYPOINTS_COMPLETED}
#: separates the product id from the variant in a file name: ``chelsea__crop.jpg`` -> ``chelsea``
PRODUCT_SEPARATOR = "__"


class SubmitError(ValueError):
    """The job cannot be submitted (no images, unreadable list, images outside the roots...)."""


# --------------------------------------------------------------------------- producer
def produce_waiting(producer: Any, topic: str, poll_s: float = 0.05, **kwargs: Any) -> None:
    """``producer.produce`` that waits (serving delivery callbacks) while the local queue is full."""
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(poll_s)


def make_producer(settings: Settings, **extra: Any) -> Producer:
    """confluent-kafka producer that partitions like Java and aiokafka (murmur2), idempotent."""
    conf = {"bootstrap.servers": settings.bootstrap_servers, "partitioner": "murmur2_random",
            "enable.idempotence": True, "linger.ms": 5, "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000}
    conf.update(extra)
    return Producer(conf)


# --------------------------------------------------------------------------- collecting images
@dataclass(frozen=True)
class ImageRef:
    """One image of a job: its URI (as the workers will read it) and its ids."""

    uri: str
    image_id: str
    product_id: str
    path: Optional[Path] = None  # the local file, when it is one


def has_scheme(text: str) -> bool:
    head, sep, _ = text.partition("://")
    return bool(sep) and head.isalpha() and len(head) > 1


def product_id_for(name: str) -> str:
    """``chelsea__crop.jpg`` -> ``chelsea``; ``coffee.jpg`` -> ``coffee``."""
    stem = name.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    product = stem.split(PRODUCT_SEPARATOR, 1)[0]
    return product or stem or "unknown"


def _uri_name(uri: str) -> str:
    path = uri.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] or uri


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _as_uri(path: Path, uri_style: str) -> str:
    if uri_style == "file":
        return path.as_uri()
    if uri_style == "path":
        return str(path)
    raise ValueError(f"uri_style must be 'path' or 'file', not {uri_style!r}")


def _expand(source: str | os.PathLike[str], base: Optional[Path] = None, *,
            from_list: bool = False) -> list[tuple[str, Optional[Path]]]:
    """(raw uri, local path) pairs for one command-line source or list line."""
    text = os.fspath(source).strip()
    if not text:
        return []
    if has_scheme(text) and not text.startswith("file://"):
        return [(text, None)]  # http(s):// and others: the workers decide
    if text.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        path = Path(unquote(urlsplit(text).path))
    else:
        path = Path(text).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
    path = Path(os.path.abspath(path))
    if path.is_dir():
        if from_list:
            raise SubmitError(f"{path} is a directory (list files name images, one per line)")
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [(str(p), p) for p in files]
    if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES and not from_list:
        # a text file listing images (paths relative to the list file, or URIs), one per line
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SubmitError(f"cannot read the image list {path}: {exc}") from exc
        out: list[tuple[str, Optional[Path]]] = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                out.extend(_expand(line, base=path.parent, from_list=True))
        return out
    if not path.exists() and not from_list:
        raise SubmitError(f"no such file or directory: {text}")
    return [(str(path), path)]  # an image file (from a list: perhaps one only the workers can see)


def collect_images(sources: Iterable[str | os.PathLike[str]], uri_style: str = "path") -> list[ImageRef]:
    """The images of a job, from directories, list files, image paths and URIs, in order.

    * a directory: its image files (by suffix), sorted by name, not recursive;
    * a file with an image suffix: that image;
    * any other file: a list of images, one path or URI per line (``#`` comments; relative paths are
      relative to the list file);
    * a URI with a scheme (``http://``...): taken as is.

    ``image_id`` is the file name, made unique within the job by a short hash of the URI when two
    images share a name; ``product_id`` is the name's stem before ``__``. The same URI twice counts
    once.
    """
    raw: list[tuple[str, Optional[Path]]] = []
    for source in sources:
        raw.extend(_expand(source))
    seen: set[str] = set()
    entries: list[tuple[str, Optional[Path], str]] = []
    for uri, path in raw:
        final = _as_uri(path, uri_style) if path is not None else uri
        if final in seen:
            continue
        seen.add(final)
        entries.append((final, path, path.name if path is not None else _uri_name(uri)))
    counts: dict[str, int] = defaultdict(int)
    for _, _, name in entries:
        counts[name] += 1
    return [ImageRef(uri=uri, image_id=name if counts[name] == 1 else f"{name}~{_short_hash(uri)}",
                     product_id=product_id_for(name), path=path)
            for uri, path, name in entries]


def outside_roots(images: Sequence[ImageRef], settings: Settings) -> list[ImageRef]:
    """Local images whose real path is not under one of ``settings.image_roots`` (the workers
    refuse those: their results would be FAILED with ``outside_roots``)."""
    roots = [Path(os.path.realpath(r)) for r in settings.image_roots]
    bad = []
    for image in images:
        if image.path is None:
            continue
        real = Path(os.path.realpath(image.path))
        if not any(real == root or real.is_relative_to(root) for root in roots):
            bad.append(image)
    return bad


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:12]}"


def image_event_id(job_id: str, image_id: str) -> str:
    """Deterministic: publishing the same job again repeats the same event ids."""
    return str(uuid.uuid5(VISIONJOBS_NAMESPACE, f"{job_id}/{image_id}/ready"))


def job_events(job_id: str, images: Sequence[ImageRef]) -> list[tuple[str, Any]]:
    """``(topic, record)`` of a job, in publishing order (images, collections completed, total)."""
    now = utcnow()
    events: list[tuple[str, Any]] = [
        (IMAGES_READY, ProductImageReady(event_id=image_event_id(job_id, im.image_id), job_id=job_id,
                                         product_id=im.product_id, image_id=im.image_id, image_uri=im.uri,
                                         created_at=now))
        for im in images]
    events.append((COLLECTIONS_COMPLETED, ProductsCollectionsCompleted(
        event_id=str(uuid.uuid5(VISIONJOBS_NAMESPACE, f"{job_id}/collections-completed")), job_id=job_id,
        created_at=now)))
    events.append((IMAGES_READY_BATCH, ProductsImagesReadyBatch(
        job_id=job_id, event_id=str(uuid.uuid5(VISIONJOBS_NAMESPACE, f"{job_id}/batch")),
        total_images=len(images))))
    return events


@dataclass
class Submitted:
    job_id: str
    images: int
    partition: Optional[int] = None  # where the job's events landed (same number on every topic)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "images": self.images, "partition": self.partition,
                "seconds": round(self.seconds, 3)}


def publish_job(settings: Settings, job_id: str, images: Sequence[ImageRef], *,
                producer: Optional[Producer] = None, progress: bool | Any = False,
                timeout_s: float = 60.0) -> Submitted:
    """Publish every event of the job and wait until the broker has them all (or raise).

    ``progress``: True for a tqdm bar on stderr (or a tqdm-like object with ``update``).
    """
    started = time.monotonic()
    codec = get_codec()
    producer = producer or make_producer(settings)
    key = job_id.encode()
    errors: list[str] = []
    partitions: set[int] = set()
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(images) + 2, desc=f"submit {job_id}", unit="event", file=sys.stderr,
                   leave=False, disable=None)
    elif progress:
        bar = progress

    def delivered(err: Optional[KafkaError], msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}: {err}")
        else:
            partitions.add(msg.partition())
        if bar is not None:
            bar.update(1)

    try:
        for topic, record in job_events(job_id, images):
            value = codec.encode(record)
            produce_waiting(producer, topic_name(settings, topic), key=key, value=value, on_delivery=delivered)
            producer.poll(0)
        remaining = producer.flush(timeout_s)
    finally:
        if bar is not None and progress is True:
            bar.close()
    if remaining:
        raise RuntimeError(f"{remaining} events of job {job_id} were not delivered within {timeout_s:g}s")
    if errors:
        raise RuntimeError(f"job {job_id}: {len(errors)} events failed: {errors[:3]}")
    if len(partitions) > 1:  # murmur2 on the same key: cannot happen unless the partition counts differ
        log.warning("job %s landed on partitions %s: are the topics co-partitioned?", job_id, sorted(partitions))
    return Submitted(job_id, len(images), min(partitions) if partitions else None, time.monotonic() - started)


# --------------------------------------------------------------------------- completions
def committed_consumer(settings: Settings) -> Consumer:
    return Consumer({
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": f"visionjobs-finder-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": False,
    })


@dataclass
class Completions:
    """Completion events seen per job and phase (a list: more than one is a bug to report)."""

    by_job: dict[str, dict[str, list[JobPhaseCompleted]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def add(self, record: JobPhaseCompleted) -> None:
        self.by_job[record.job_id][record.phase].append(record)

    def complete(self, job_id: str, phases: Sequence[str] = PHASES) -> bool:
        job = self.by_job.get(job_id, {})
        return all(job.get(phase) for phase in phases)

    def get(self, job_id: str, phase: str) -> list[JobPhaseCompleted]:
        return list(self.by_job.get(job_id, {}).get(phase, []))


class CompletionWatcher:
    """Reads both completion topics (read_committed) from the offsets they had at :meth:`mark`.

    Use it as: ``watcher = CompletionWatcher(settings); watcher.mark(); publish...; watcher.wait(ids)``.
    """

    def __init__(self, settings: Settings, phases: Sequence[str] = PHASES) -> None:
        self.settings = settings
        self.phases = tuple(phases)
        self.topics = {topic_name(settings, PHASE_TOPICS[p]): p for p in self.phases}
        self.consumer = committed_consumer(settings)
        self.completions = Completions()
        self.decode_errors = 0
        self._assigned = False

    def mark(self, timeout_s: float = 30.0) -> None:
        """Remember where each partition of the completion topics ends now (the last stable offset,
        as this is a read_committed consumer) and start reading there."""
        md = self.consumer.list_topics(timeout=timeout_s).topics
        tps = []
        for topic in self.topics:
            if topic not in md or md[topic].error is not None:
                raise RuntimeError(f"completion topic {topic} does not exist (create the topics first)")
            for p in md[topic].partitions:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                tps.append(TopicPartition(topic, p, high))
        self.consumer.assign(tps)
        self._assigned = True

    def from_beginning(self, timeout_s: float = 30.0) -> None:
        md = self.consumer.list_topics(timeout=timeout_s).topics
        self.consumer.assign([TopicPartition(t, p, 0) for t in self.topics if t in md for p in md[t].partitions])
        self._assigned = True

    def poll(self, timeout_s: float = 0.5) -> int:
        """Read what is there; returns the number of completion events read."""
        if not self._assigned:
            raise RuntimeError("call mark() or from_beginning() first")
        codec = get_codec()
        n = 0
        for msg in self.consumer.consume(1000, timeout=timeout_s):
            if msg.error():
                continue
            try:
                record = codec.decode(msg.value(), topic=msg.topic())
            except CodecError:
                self.decode_errors += 1
                continue
            if isinstance(record, JobPhaseCompleted):
                self.completions.add(record)
                n += 1
        return n

    def wait(self, job_ids: Iterable[str], timeout_s: float = 300.0, linger_s: float = 0.0,
             on_progress: Optional[Callable[[int, int], None]] = None) -> bool:
        """Until every job has a completion per phase (True) or ``timeout_s`` passes (False); then
        keep reading ``linger_s`` more seconds, so that a duplicate completion would show up."""
        wanted = list(dict.fromkeys(job_ids))
        deadline = time.monotonic() + timeout_s
        done = 0
        while True:
            self.poll(0.5)
            now_done = sum(1 for j in wanted if self.completions.complete(j, self.phases))
            if on_progress is not None and now_done != done:
                on_progress(now_done, len(wanted))
            done = now_done
            if done == len(wanted) or time.monotonic() > deadline:
                break
        end = time.monotonic() + linger_s
        while time.monotonic() < end:
            self.poll(0.5)
        return done == len(wanted)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> "CompletionWatcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def completion_dict(record: JobPhaseCompleted) -> dict:
    from .codec import to_jsonable

    return to_jsonable(record.to_avro())


def submit(settings: Settings, sources: Sequence[str | os.PathLike[str]], *, job_id: Optional[str] = None,
           uri_style: str = "path", allow_outside_roots: bool = False, progress: bool = False,
           create_topics: bool = True) -> tuple[Submitted, list[ImageRef]]:
    """Collect the images and publish the job (no waiting). Raises :class:`SubmitError`."""
    images = collect_images(sources, uri_style=uri_style)
    bad = outside_roots(images, settings)
    if bad and not allow_outside_roots:
        roots = os.pathsep.join(str(r) for r in settings.image_roots)
        raise SubmitError(f"{len(bad)} of {len(images)} images are outside the image roots ({roots}), e.g. "
                          f"{bad[0].uri}; the workers would fail them. Set VISIONJOBS_IMAGE_ROOTS or pass "
                          "--allow-outside-roots to send them anyway")
    if create_topics:
        from .admin import create_topics as _create

        _create(settings)
    return publish_job(settings, job_id or new_job_id(), images, progress=progress), images
