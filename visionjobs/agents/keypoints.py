"""Keypoint agent: one :class:`ImageKeypointsResult` per ``ProductImageReady``, OK or FAILED.

Same shape as the embedding agent (:mod:`visionjobs.agents.embedding`): micro-batches from
``stream.take_events``, images loaded by :class:`~visionjobs.agents.embedding.ImageSource`, one
result per image staged with :class:`~visionjobs.eos.CoPartitionedOutput` on the input's partition
before the batch is acked. Keypoints and descriptors come from OpenCV (ORB by default, SIFT by
setting, at most ``settings.max_keypoints``), computed off the event loop on a pool of
``settings.keypoints_concurrency`` threads, each with its own
:class:`~visionjobs.vision.keypoints.KeypointExtractor` (OpenCV detectors are not thread-safe).

Why a thread pool inside one actor rather than Faust's ``concurrency=N``: with N actors the events
of a partition finish out of order, and Faust commits only the contiguous prefix of acked offsets.
The transaction that carries the result of event ``n+1`` can then commit while the offset of ``n+1``
waits for event ``n``; a crash in between re-delivers ``n+1`` and publishes its result twice. One
actor that stages each batch in input order keeps results exactly-once, and the pool gives the same
parallelism (OpenCV releases the GIL while it detects).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Optional, Union

import numpy as np

from ..codec import get_codec
from ..records import ImageKeypointsResult, Keypoint, ProductImageReady, result_event_id, utcnow
from ..settings import Settings
from ..topics import KEYPOINTS_RESULT
from ..vision.keypoints import KeypointExtractor, KeypointSet
from .embedding import Failure, ImageBatchAgent, ImageSource, Item, clip, error_text

log = logging.getLogger(__name__)

PHASE = "KEYPOINTS"
ROLE = "keypoints"
AGENT_NAME = "visionjobs.extract_keypoints"
#: bytes per descriptor row of each detector (ORB: 32 x uint8, SIFT: 128 x float32)
DESCRIPTOR_BYTES = {"orb": 32, "sift": 512}


def keypoints_result(request: ProductImageReady, detector: str, keypoints: Optional[KeypointSet] = None,
                     error: Optional[str] = None, now: Optional[datetime] = None) -> ImageKeypointsResult:
    """The result record of one image: OK with ``keypoints``, or FAILED with ``error`` (exactly one)."""
    if (keypoints is None) == (error is None):
        raise ValueError("give either keypoints or an error")
    event_id = result_event_id(request.job_id, request.image_id, PHASE)
    common = dict(event_id=event_id, job_id=request.job_id, image_id=request.image_id,
                  product_id=request.product_id, created_at=now or utcnow())
    if keypoints is None:
        return ImageKeypointsResult(**common, status="FAILED", error=clip(str(error)), detector=detector,
                                    keypoints=[], descriptors=b"",
                                    descriptor_size=DESCRIPTOR_BYTES.get(detector, 0))
    if len(keypoints.descriptors) != len(keypoints) * keypoints.descriptor_bytes:
        raise ValueError(f"{len(keypoints.descriptors)} descriptor bytes for {len(keypoints)} keypoints "
                         f"of {keypoints.descriptor_bytes} bytes")
    return ImageKeypointsResult(
        **common, status="OK", error=None, detector=keypoints.detector,
        keypoints=[Keypoint(float(x), float(y), float(size), float(angle), float(response))
                   for x, y, size, angle, response in keypoints.keypoints],
        descriptors=bytes(keypoints.descriptors), descriptor_size=keypoints.descriptor_bytes)


class KeypointsAgent(ImageBatchAgent):
    phase = PHASE
    role = ROLE
    result_topic = KEYPOINTS_RESULT

    def __init__(self, app: Any, settings: Settings,
                 extractor_factory: Optional[Callable[[], KeypointExtractor]] = None,
                 images: Optional[ImageSource] = None) -> None:
        super().__init__(app, settings, images)
        self.detector = settings.detector
        self.threads = settings.keypoints_concurrency
        self.timeout_s = settings.inference_timeout_s
        self._factory = extractor_factory or (lambda: KeypointExtractor(settings.detector, settings.max_keypoints))
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vj-keypoints")
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        probe = self._factory()  # fail fast on a bad detector setting, before consuming
        log.info("keypoints agent: %s, at most %d keypoints, %d threads, batch %d", probe.detector,
                 probe.max_keypoints, self.threads, self.batch_size())

    def batch_size(self) -> int:
        return max(self.settings.batch_size, self.threads)

    def extractor(self) -> KeypointExtractor:
        """This thread's own extractor."""
        extractor = getattr(self._local, "extractor", None)
        if extractor is None:
            extractor = self._local.extractor = self._factory()
        return extractor

    def extract_sync(self, image: np.ndarray) -> Union[KeypointSet, Failure]:
        try:
            return self.extractor().extract(image)
        except Exception as exc:  # noqa: BLE001
            return Failure(clip(f"extract_failed: {type(exc).__name__}: {exc}"))

    def result_sync(self, request: ProductImageReady,
                    image: np.ndarray) -> Union[tuple[ImageKeypointsResult, bytes], Failure]:
        """Extract, build the record and encode it, all on the pool thread: a record of 500
        keypoints costs a few ms of Python to build and encode, which must not block the loop."""
        found = self.extract_sync(image)
        if isinstance(found, Failure):
            return found
        try:
            record = keypoints_result(request, self.detector, keypoints=found)
            return record, get_codec().encode(record)
        except Exception as exc:  # noqa: BLE001
            return Failure(error_text(exc))

    def failed(self, request: ProductImageReady, error: str) -> ImageKeypointsResult:
        return keypoints_result(request, self.detector, error=error)

    async def extract_many(self, work: list[tuple[ProductImageReady, np.ndarray]]
                           ) -> list[Union[tuple[ImageKeypointsResult, bytes], Failure]]:
        """:meth:`result_sync` of each (request, image) on the pool, under the inference timeout."""
        if not work:
            return []
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        futures = [loop.run_in_executor(self._pool, self.result_sync, request, image) for request, image in work]
        done, pending = await asyncio.wait(futures, timeout=self.timeout_s)
        self.observe_inference(len(work), time.perf_counter() - started)
        for fut in pending:
            fut.cancel()
        if pending:
            log.error("%d keypoint extractions still running after %.1fs; failing them", len(pending), self.timeout_s)
        return [fut.result() if fut in done and not fut.cancelled()
                else Failure(f"timeout: keypoint extraction took longer than {self.timeout_s:g}s")
                for fut in futures]

    async def compute(self, items: list[Item]) -> None:
        ready = await self.load_images(items)
        outcomes = await self.extract_many([(item.request, image) for item, image in ready])  # type: ignore[misc]
        for (item, _), outcome in zip(ready, outcomes):
            if isinstance(outcome, Failure):
                item.output = self.failed(item.request, outcome.error)  # type: ignore[arg-type]
            else:
                item.output, item.encoded = outcome

    def close(self) -> None:
        self.images.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def register_keypoints(app: Any, settings: Settings, **kwargs: Any) -> KeypointsAgent:
    """Register the keypoint agent on ``app``; returns its state (``.agent`` is the Faust agent)."""
    state = KeypointsAgent(app, settings, **kwargs)
    batch_size = state.batch_size()
    within = state.batch_wait()

    async def extract_keypoints(stream: Any) -> None:
        await state.start()
        async for events in stream.take_events(batch_size, within=within):
            await state.handle(events)  # stages every output before take_events acks the batch

    state.agent = app.agent(state.source, name=AGENT_NAME)(extract_keypoints)
    return state


__all__ = ["KeypointsAgent", "keypoints_result", "register_keypoints"]
