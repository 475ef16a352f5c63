"""Embedding agent: one :class:`ImageEmbeddingResult` per ``ProductImageReady``, OK or FAILED.

The agent consumes ``products.images.ready`` in micro-batches (``stream.take_events``, so that every
event's message is at hand: its partition for the output and its bytes for the dead-letter topic).
Per micro-batch:

1. decode every event (undecodable / invalid input goes to the dead-letter topic, never an
   exception);
2. load and decode the images on a small thread pool (:class:`ImageSource`: the URIs are untrusted,
   the :class:`~visionjobs.vision.loader.ImageLoader` enforces the roots, sizes and timeouts);
3. run the model once on the batch of decoded images, on the agent's own single inference thread
   (one onnxruntime session per worker, created when the agent starts), under
   ``settings.inference_timeout_s``;
4. stage one result per image with :class:`~visionjobs.eos.CoPartitionedOutput`, synchronously, on
   the partition number of the image's input event.

Exactly-once: ``take_events`` acks the events of a batch only when the loop asks for the next batch,
so the results staged in step 4 are in the producer buffer before the offsets of their inputs can be
committed, and the commit drains the buffer into the same transaction (see :mod:`visionjobs.eos`).
Every event of a batch therefore gets its outputs staged (a result, or a dead letter) before it is
acked; :meth:`ImageBatchAgent.handle` never raises: an unexpected error turns into FAILED results
(``internal: ...``) for the images of that batch.

Image failures are part of the result, not of the process: a missing file, an image outside the
roots, garbage bytes or an inference error give a FAILED result with ``error = "<reason>: <message>"``
and the coordinator counts it like any other result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional, Union

import numpy as np

from .. import metrics
from ..codec import get_codec
from ..eos import CoPartitionedOutput
from ..records import AvroRecord, ImageEmbeddingResult, ProductImageReady, result_event_id, utcnow
from ..settings import Settings
from ..topics import EMBEDDING_RESULT, IMAGES_READY, topic_name
from ..vision.errors import ImageError, ModelLoadError
from ..vision.loader import ImageLoader, decode_image
from .common import DeadLetters, decode_or_dead_letter, declare_topic

log = logging.getLogger(__name__)

PHASE = "EMBEDDINGS"
ROLE = "embedding"
AGENT_NAME = "visionjobs.embed_images"
#: threads that read and decode images (I/O and OpenCV both release the GIL)
#: longest error text put into a result record
MAX_ERROR_LEN = 1000
#: ``take_events(within=0)`` would wait forever for a full batch; this is the shortest wait we use
MIN_BATCH_WAIT_S = 0.001


# --------------------------------------------------------------------------- pure helpers
@dataclass(frozen=True)
class Failure:
    """Why one image has no result value; ``error`` is ``"<reason>: <message>"``."""

    error: str


def clip(text: str, limit: int = MAX_ERROR_LEN) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(exc: BaseException) -> str:
    """``"<reason>: <message>"`` for an exception raised while processing one image.

    Input errors (:class:`ImageError`) keep their own reason code (``outside_roots``,
    ``unsupported_format``, ...); timeouts read ``timeout: ...``; anything else is ``internal``.
    """
    if isinstance(exc, ImageError):
        return clip(str(exc))
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError on 3.11+
        return clip(f"timeout: {exc}" if str(exc) else "timeout")
    return clip(f"internal: {type(exc).__name__}: {exc}")


def embedding_result(request: ProductImageReady, model: str, vector: Optional[Sequence[float]] = None,
                     error: Optional[str] = None, now: Optional[datetime] = None) -> ImageEmbeddingResult:
    """The result record of one image: OK with ``vector``, or FAILED with ``error`` (exactly one given)."""
    if (vector is None) == (error is None):
        raise ValueError("give either a vector or an error")
    ok = vector is not None
    return ImageEmbeddingResult(
        event_id=result_event_id(request.job_id, request.image_id, PHASE),
        job_id=request.job_id, image_id=request.image_id, product_id=request.product_id,
        status="OK" if ok else "FAILED", error=None if ok else clip(str(error)), model=model,
        # tolist(): Python floats in one C call (a per-element float() was 0.3 ms per 1280-d vector)
        embedding=np.asarray(vector, dtype=np.float32).tolist() if ok else [],
        created_at=now or utcnow())


def check_vector(vector: np.ndarray) -> Union[np.ndarray, Failure]:
    """A model output row, or a Failure when it holds NaN/inf (never publish those)."""
    if vector.ndim != 1 or vector.size == 0:
        return Failure(f"inference_failed: unexpected embedding shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        return Failure("inference_failed: non-finite values in the embedding")
    return vector


def describe_offsets(events: Sequence[Any]) -> str:
    """``"p3:[10..17] p5:[4]"``: the partitions and offsets of a batch's events (for DEBUG logs)."""
    by_partition: dict[int, list[int]] = {}
    for event in events:
        by_partition.setdefault(event.message.partition, []).append(event.message.offset)
    parts = []
    for partition, offsets in sorted(by_partition.items()):
        lo, hi = min(offsets), max(offsets)
        span = f"{lo}" if lo == hi else f"{lo}..{hi}"
        gap = "" if hi - lo + 1 == len(offsets) else f" ({len(offsets)} events)"
        parts.append(f"p{partition}:[{span}]{gap}")
    return " ".join(parts)


# --------------------------------------------------------------------------- image loading
class ImageSource:
    """Loads and decodes untrusted image URIs off the event loop, within the loader's limits."""

    def __init__(self, settings: Settings, threads: Optional[int] = None,
                 loader: Optional[ImageLoader] = None) -> None:
        self.loader = loader or ImageLoader.from_settings(settings)
        self.max_pixels = settings.max_image_pixels
        self.threads = max(1, threads if threads is not None else settings.load_threads)
        # The loader enforces load_timeout_s itself (HTTP); this is the safety net for a load that
        # hangs anyway (a stuck file system): per image, plus the time spent queued for a thread.
        self.timeout_s = settings.load_timeout_s + 5.0
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vj-load")

    def load_sync(self, uri: str) -> np.ndarray:
        return decode_image(self.loader.load(uri), self.max_pixels)

    def _attempt(self, uri: str, prepare: Optional[Callable[[np.ndarray], Any]] = None) -> Any:
        try:
            image = self.load_sync(uri)
        except Exception as exc:  # noqa: BLE001 - any failure is this image's failure
            return Failure(error_text(exc))
        if prepare is None:
            return image
        try:
            return prepare(image)
        except Exception as exc:  # noqa: BLE001 - the model's preprocessing of this image failed
            return Failure(clip(f"inference_failed: {type(exc).__name__}: {exc}"))

    async def load_many(self, uris: Sequence[str],
                        prepare: Optional[Callable[[np.ndarray], Any]] = None) -> list[Union[np.ndarray, Failure]]:
        """One decoded BGR image (or ``prepare(image)``, computed on the loading thread too) or
        :class:`Failure` per URI, in order. Never raises."""
        if not uris:
            return []
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self.pool, self._attempt, uri, prepare) for uri in uris]
        rounds = math.ceil(len(uris) / self.threads)
        budget = self.timeout_s * rounds
        done, pending = await asyncio.wait(futures, timeout=budget)
        for fut in pending:
            fut.cancel()
        if pending:
            log.warning("%d image loads still running after %.1fs; failing them", len(pending), budget)
        out: list[Union[np.ndarray, Failure]] = []
        for fut in futures:
            if fut in done and not fut.cancelled():
                out.append(fut.result())
            else:
                out.append(Failure(f"timeout: loading the image took longer than {budget:g}s"))
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the batch agent
@dataclass
class Item:
    """One input event of a micro-batch and what becomes of it."""

    event: Any
    request: Optional[ProductImageReady] = None  # None: dead-lettered
    output: Optional[AvroRecord] = None  # the result to stage
    encoded: Optional[bytes] = None  # ``output`` already encoded (e.g. on a worker thread)


class ImageBatchAgent:
    """What the embedding and keypoint agents share: decode, dead-letter, stage, metrics.

    Subclasses implement :meth:`compute` (images -> result records) and :meth:`failed`
    (request, error -> FAILED record).
    """

    phase: str
    role: str
    result_topic: str

    def __init__(self, app: Any, settings: Settings, images: Optional[ImageSource] = None) -> None:
        self.app = app
        self.settings = settings
        self.source = declare_topic(app, settings, IMAGES_READY)
        self.source_name = topic_name(settings, IMAGES_READY)
        self.output = CoPartitionedOutput(app, declare_topic(app, settings, self.result_topic), self.source_name)
        self.dead_letters = DeadLetters(app, settings, self.role, self.source_name)
        self.images = images or ImageSource(settings)
        self.agent: Any = None  # the Faust agent, set by register_*
        self._consumed = metrics.EVENTS_CONSUMED.labels(self.source_name, self.role)
        self._results = {s: metrics.RESULTS.labels(self.phase, s) for s in ("OK", "FAILED")}
        self._batch_size = metrics.INFERENCE_BATCH.labels(self.phase)
        self._batch_seconds = metrics.INFERENCE_SECONDS.labels(self.phase)
        self.batches = 0
        self._last_done = 0.0

    # -- to implement ---------------------------------------------------------------------
    async def start(self) -> None:
        """Called once by the agent before it consumes (load models here)."""

    async def compute(self, items: list[Item]) -> None:
        """Set ``item.output`` of every item (each has a ``request``). May raise: the whole batch
        then fails with ``internal``."""
        raise NotImplementedError

    def failed(self, request: ProductImageReady, error: str) -> AvroRecord:
        raise NotImplementedError

    # -- the batch --------------------------------------------------------------------------

    async def load_images(self, items: list[Item],
                          prepare: Optional[Callable[[np.ndarray], Any]] = None) -> list[tuple[Item, np.ndarray]]:
        """Load the items' images (and ``prepare`` each on its loading thread); a failure becomes the
        item's FAILED result right away."""
        uris = [item.request.image_uri for item in items]  # type: ignore[union-attr]
        loaded = await self.images.load_many(uris, prepare)
        ready: list[tuple[Item, np.ndarray]] = []
        for item, image in zip(items, loaded):
            if isinstance(image, Failure):
                item.output = self.failed(item.request, image.error)  # type: ignore[arg-type]
            else:
                ready.append((item, image))
        return ready
    def decode(self, event: Any) -> Optional[ProductImageReady]:
        """The event's request, or None after dead-lettering it (synchronous staging)."""
        self._consumed.inc()
        record = decode_or_dead_letter(event, self.dead_letters, expect=ProductImageReady.AVRO_NAME)
        if record is None:
            return None
        if event.message.key is None:
            # Outputs go to the input's partition number: an unkeyed input sits on a random
            # partition, and its result would miss the job's partition of the result topic.
            self.dead_letters.send(event, "missing_key", f"job {record.job_id}: message has no key (job_id)")
            return None
        return record  # type: ignore[return-value]

    async def process(self, events: Sequence[Any]) -> list[Item]:
        """Decode, compute; every item that has a request ends with an output. Never raises
        (except cancellation)."""
        items = [Item(event) for event in events]
        for item in items:
            try:
                item.request = self.decode(item.event)
            except Exception as exc:  # noqa: BLE001 - a bug in validation must not lose the event
                log.exception("decoding an event failed unexpectedly")
                self.dead_letters.send(item.event, "internal", f"{type(exc).__name__}: {exc}")
        work = [item for item in items if item.request is not None]
        if work:
            try:
                await self.compute(work)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.exception("%s batch of %d images failed; every image of it is FAILED", self.role, len(work))
                reason = clip(f"internal: {type(exc).__name__}: {exc}")
                for item in work:
                    if item.output is None:
                        item.output = self.failed(item.request, reason)  # type: ignore[arg-type]
            for item in work:  # a compute() that forgot an item must not lose it either
                if item.output is None:
                    item.output = self.failed(item.request, "internal: no result computed")  # type: ignore[arg-type]
        return items

    def observe_inference(self, n: int, seconds: float) -> None:
        self._batch_size.observe(n)
        self._batch_seconds.observe(seconds)

    def stage(self, items: Sequence[Item]) -> None:
        """Stage the outputs, in input order, synchronously (no ``await``)."""
        codec = get_codec()
        for item in items:
            if item.output is None:
                continue
            try:
                value = item.encoded if item.encoded is not None else codec.encode(item.output)
            except Exception as exc:  # noqa: BLE001 - never ack an event without its output
                log.exception("%s: cannot encode a result; publishing it as FAILED", self.role)
                reason = clip(f"internal: cannot encode the result: {exc}")
                item.output = self.failed(item.request, reason)  # type: ignore[arg-type]
                value = codec.encode(item.output)
            self.output.stage(item.event, item.event.message.key, value)
            status = getattr(item.output, "status", "OK")
            self._results[status].inc()
            if status != "OK":
                out: Any = item.output
                log.debug("%s FAILED for job %s image %s: %s", self.role, out.job_id, out.image_id, out.error)

    async def handle(self, events: Sequence[Any]) -> list[Item]:
        """Process one micro-batch and stage its outputs before the caller acks the events."""
        started = time.perf_counter()
        waited = started - self._last_done if self._last_done else 0.0
        try:
            items = await self.process(events)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - process() should not raise; belt and braces
            log.exception("%s: unexpected error processing a batch", self.role)
            items = [Item(e) for e in events]
            for item in items:
                self.dead_letters.send(item.event, "internal", "the batch could not be processed")
        self.stage(items)
        self.batches += 1
        self._last_done = time.perf_counter()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s batch %d staged: %s (%.3fs processing, %.3fs waiting before)", self.role, self.batches,
                      describe_offsets(events), self._last_done - started, waited)
        return items

    def batch_wait(self) -> float:
        return max(self.settings.batch_wait_s, MIN_BATCH_WAIT_S)


# --------------------------------------------------------------------------- embeddings
class EmbeddingAgent(ImageBatchAgent):
    phase = PHASE
    role = ROLE
    result_topic = EMBEDDING_RESULT

    def __init__(self, app: Any, settings: Settings, embedder_factory: Optional[Callable[[], Any]] = None,
                 images: Optional[ImageSource] = None) -> None:
        super().__init__(app, settings, images)
        self.model = settings.model_name
        self.timeout_s = settings.inference_timeout_s
        self._factory = embedder_factory or self._default_factory
        self.embedder: Any = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self._start_lock = asyncio.Lock()

    def _default_factory(self) -> Any:
        from ..vision.embedder import Embedder

        return Embedder.from_settings(self.settings)

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(1, thread_name_prefix="vj-embed")

    async def start(self) -> None:
        """Create the worker's one onnxruntime session, on the inference thread (lazily, once)."""
        async with self._start_lock:
            if self.embedder is not None:
                return
            if self._executor is None:
                self._executor = self._new_executor()
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            self.embedder = await loop.run_in_executor(self._executor, self._factory)
            loaded = time.perf_counter() - started
            # one run of the batch shape before the first event (on CUDA the first run takes ~1.5 s)
            warm_up = getattr(self.embedder, "warm_up", None)
            warmed = await loop.run_in_executor(self._executor, warm_up) if warm_up is not None else 0.0
            log.info("embedding agent: model %s runs on %s (dim %s, batch %d%s, wait %.3fs); loaded in %.2fs, "
                     "warm-up run %.2fs", self.model, getattr(self.embedder, "provider", "?"),
                     getattr(self.embedder, "dim", "?"), self.settings.batch_size,
                     " padded" if getattr(self.embedder, "pad_to", None) else "", self.batch_wait(), loaded, warmed)

    def failed(self, request: ProductImageReady, error: str) -> ImageEmbeddingResult:
        return embedding_result(request, self.model, error=error)

    def embed_sync(self, images: list[np.ndarray], prepared: bool = False) -> list[Union[np.ndarray, Failure]]:
        """One model run for the batch (inference thread). If the batch run fails, each image is
        retried alone, so that one bad image does not fail the others. ``prepared``: the images were
        made by the embedder's ``prepare`` (on the loading threads), not decoded originals."""
        embed = self.embedder.embed_prepared if prepared else self.embedder.embed
        try:
            vectors = np.asarray(embed(images))
            if vectors.shape[0] != len(images):
                raise RuntimeError(f"model returned {vectors.shape[0]} rows for {len(images)} images")
            return [check_vector(v) for v in vectors]
        except Exception as exc:  # noqa: BLE001
            if len(images) == 1:
                return [Failure(clip(f"inference_failed: {type(exc).__name__}: {exc}"))]
            log.warning("inference of a batch of %d failed (%s: %s); retrying image by image",
                        len(images), type(exc).__name__, exc)
        out: list[Union[np.ndarray, Failure]] = []
        for image in images:
            try:
                out.append(check_vector(np.asarray(embed([image]))[0]))
            except Exception as exc:  # noqa: BLE001
                out.append(Failure(clip(f"inference_failed: {type(exc).__name__}: {exc}")))
        return out

    async def embed(self, images: list[np.ndarray], prepared: bool = False) -> list[Union[np.ndarray, Failure]]:
        """:meth:`embed_sync` on the inference thread, under the inference timeout."""
        if not images:
            return []
        if self.embedder is None:
            await self.start()
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        future = loop.run_in_executor(self._executor, self.embed_sync, images, prepared)
        try:
            vectors = await asyncio.wait_for(future, self.timeout_s)
            self.observe_inference(len(images), time.perf_counter() - started)
            return vectors
        except asyncio.TimeoutError:
            # The stuck run keeps its thread; the next batch gets a fresh one instead of queueing
            # behind it (onnxruntime sessions may be run from several threads).
            log.error("inference of a batch of %d images took longer than %.1fs; failing the batch",
                      len(images), self.timeout_s)
            old, self._executor = self._executor, self._new_executor()
            old.shutdown(wait=False)
            return [Failure(f"timeout: inference took longer than {self.timeout_s:g}s")] * len(images)

    async def compute(self, items: list[Item]) -> None:
        if self.embedder is None:
            await self.start()
        # The model's per-image preprocessing (trim, resize: the costly part for large images) runs on
        # the loading threads, in parallel; the inference thread gets small arrays and runs the model.
        # (An embedder without ``prepare``, e.g. a test fake, gets the decoded images.)
        prepare = getattr(self.embedder, "prepare", None)
        ready = await self.load_images(items, prepare)
        if not ready:
            return
        vectors = await self.embed([image for _, image in ready], prepared=prepare is not None)
        for (item, _), vector in zip(ready, vectors):
            if isinstance(vector, Failure):
                item.output = self.failed(item.request, vector.error)  # type: ignore[arg-type]
            else:
                item.output = embedding_result(item.request, self.model, vector=vector)  # type: ignore[arg-type]

    def close(self) -> None:
        self.images.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)


def register_embedding(app: Any, settings: Settings, **kwargs: Any) -> EmbeddingAgent:
    """Register the embedding agent on ``app``; returns its state (``.agent`` is the Faust agent)."""
    state = EmbeddingAgent(app, settings, **kwargs)
    batch_size = settings.batch_size
    within = state.batch_wait()

    async def embed_images(stream: Any) -> None:
        try:
            await state.start()
        except ModelLoadError as exc:
            # Without a model every image would be FAILED and every job "completed": stop instead.
            log.critical("embedding agent cannot load its model, stopping the worker: %s", exc)
            await app.crash(exc)
            return
        async for events in stream.take_events(batch_size, within=within):
            # handle() stages every output before this loop asks for the next batch, which is
            # when take_events acks these events.
            await state.handle(events)

    state.agent = app.agent(state.source, name=AGENT_NAME)(embed_images)
    return state
