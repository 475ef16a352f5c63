"""One sample of every record of the contract (codec tests, broker tests, docs)."""

from __future__ import annotations

from datetime import datetime, timezone

from ..records import (
    CoordinatorTick, DeadLetter, ImageEmbeddingResult, ImageKeypointsResult, JobPhaseCompleted,
    Keypoint, ProductImageReady, ProductsCollectionsCompleted, ProductsImagesReadyBatch,
    completion_event_id)

T0 = datetime(2026, 11, 28, 12, 0, 0, 123000, tzinfo=timezone.utc)


SAMPLES = [
    ProductImageReady("e1", "job-1", "p1", "img-1", "file:///images/cat.jpg", T0),
    ProductsCollectionsCompleted("e2", "job-1", T0),
    ProductsImagesReadyBatch("job-1", "e3", 3),
    ImageEmbeddingResult("e4", "job-1", "img-1", "p1", "OK", None, "efficientnet-lite0", [0.5, -0.25, 1.0], T0),
    ImageEmbeddingResult("e5", "job-1", "img-2", "p1", "FAILED", "not_found: no such file", "m", [], T0),
    ImageKeypointsResult("e6", "job-1", "img-1", "p1", "OK", None, "orb",
                         [Keypoint(1.5, 2.5, 31.0, 90.0, 0.5)], bytes(range(32)), 32, T0),
    JobPhaseCompleted(completion_event_id("job-1", "EMBEDDINGS"), "job-1", "EMBEDDINGS", "COMPLETED",
                      3, 3, 2, 1, T0, T0),
    JobPhaseCompleted(completion_event_id("job-2", "KEYPOINTS"), "job-2", "KEYPOINTS", "TIMED_OUT",
                      None, 0, 0, 0, T0, T0),
    DeadLetter("products.images.ready.batch", 3, 42, b"job-1", b"\x00garbage", "bad_magic: x", T0),
    CoordinatorTick("job-1", T0),
]
