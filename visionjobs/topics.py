"""Topic names of the contract and how each topic is created.

Every topic is keyed by ``job_id`` (UTF-8 string key) and has the same partition count, so the
coordinator's join is co-partitioned: the batch event and every result of one job land on the same
partition number of their topics, and therefore on the same coordinator worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import Settings

IMAGES_READY = "products.images.ready"
COLLECTIONS_COMPLETED = "products.collections.completed"
IMAGES_READY_BATCH = "products.images.ready.batch"
EMBEDDING_RESULT = "image.embedding.result"
KEYPOINTS_RESULT = "image.keypoints.result"
EMBEDDINGS_COMPLETED = "image.embeddings.completed"
KEYPOINTS_COMPLETED = "image.keypoints.completed"
DEAD_LETTER = "visionjobs.dead-letter"
COORDINATOR_TICKS = "visionjobs.coordinator.ticks"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    schema: str  # full Avro name of the value record
    compacted: bool = False
    retention_ms: int | None = None
    doc: str = ""


# Ordered as data flows through the system.
CONTRACT: tuple[TopicSpec, ...] = (
    TopicSpec(IMAGES_READY, "visionjobs.products.ProductImageReady", doc="one event per image of a job"),
    TopicSpec(COLLECTIONS_COMPLETED, "visionjobs.products.ProductsCollectionsCompleted",
              doc="main API phase event; published by the product finder, not interpreted here"),
    TopicSpec(IMAGES_READY_BATCH, "visionjobs.products.ProductsImagesReadyBatch",
              doc="how many images the job has; the coordinator's total"),
    TopicSpec(EMBEDDING_RESULT, "visionjobs.vision.ImageEmbeddingResult", doc="one per image, OK or FAILED"),
    TopicSpec(KEYPOINTS_RESULT, "visionjobs.vision.ImageKeypointsResult", doc="one per image, OK or FAILED"),
    # Completions are keyed by job_id and at most one per job: compaction keeps the latest.
    TopicSpec(EMBEDDINGS_COMPLETED, "visionjobs.jobs.JobPhaseCompleted", compacted=True,
              doc="exactly one per job: the embedding phase is done"),
    TopicSpec(KEYPOINTS_COMPLETED, "visionjobs.jobs.JobPhaseCompleted", compacted=True,
              doc="exactly one per job: the keypoints phase is done"),
    TopicSpec(DEAD_LETTER, "visionjobs.ops.DeadLetter", retention_ms=14 * 24 * 3600 * 1000,
              doc="input that could not be processed, with the reason"),
    TopicSpec(COORDINATOR_TICKS, "visionjobs.jobs.CoordinatorTick", retention_ms=24 * 3600 * 1000,
              doc="internal: expiry checks keyed by job_id, decided inside the coordinator agent"),
)

BY_NAME = {spec.name: spec for spec in CONTRACT}


def topic_name(settings: Settings, name: str) -> str:
    """The physical topic name (tests isolate runs with ``VISIONJOBS_TOPIC_PREFIX``)."""
    return f"{settings.topic_prefix}{name}"


def topic_config(spec: TopicSpec) -> dict[str, str]:
    config: dict[str, str] = {}
    if spec.compacted:
        config["cleanup.policy"] = "compact"
    if spec.retention_ms is not None:
        config["retention.ms"] = str(spec.retention_ms)
    return config
