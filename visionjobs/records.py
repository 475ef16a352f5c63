"""The event records used in code, one per Avro schema in ``avro_schemas/``.

The ``.avsc`` files are the contract; ``tests/unit/test_records.py`` fails when a field exists on one
side only or its type differs. Records are frozen dataclasses (no Faust import), so pure logic and
tests can build them freely; the codec (``visionjobs.codec``) turns them into Avro and back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, Optional

ResultStatus = Literal["OK", "FAILED"]
JobPhase = Literal["EMBEDDINGS", "KEYPOINTS"]
CompletionStatus = Literal["COMPLETED", "TIMED_OUT"]

# Namespace for deterministic ids (uuid5). Fixed forever: changing it changes every event_id.
VISIONJOBS_NAMESPACE = uuid.UUID("6f1f5a2e-3c1b-5d8e-9a51-7a4f2c9b0e11")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def from_millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def to_millis(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def completion_event_id(job_id: str, phase: str) -> str:
    """The one event_id a job's phase completion can ever have."""
    return str(uuid.uuid5(VISIONJOBS_NAMESPACE, f"{job_id}/{phase}/completed"))


def result_event_id(job_id: str, image_id: str, phase: str) -> str:
    """Deterministic id of one image's result in one phase (a reprocessed image keeps its id)."""
    return str(uuid.uuid5(VISIONJOBS_NAMESPACE, f"{job_id}/{image_id}/{phase}/result"))


class AvroRecord:
    """Mixin: the Avro full name and a cheap conversion to the dict fastavro writes."""

    AVRO_NAME: ClassVar[str]
    _FIELD_NAMES: ClassVar[tuple[str, ...]] = ()


    def to_avro(self) -> dict[str, Any]:
        names = type(self)._FIELD_NAMES
        return {n: getattr(self, n) for n in names}

    @classmethod
    def from_avro(cls, data: dict[str, Any]):
        return cls(**data)


def _finalize(cls):
    cls._FIELD_NAMES = tuple(f.name for f in fields(cls))
    return cls


@_finalize
@dataclass(frozen=True, slots=True)
class ProductImageReady(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.products.ProductImageReady"
    event_id: str
    job_id: str
    product_id: str
    image_id: str
    image_uri: str
    created_at: datetime


@_finalize
@dataclass(frozen=True, slots=True)
class ProductsCollectionsCompleted(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.products.ProductsCollectionsCompleted"
    event_id: str
    job_id: str
    created_at: datetime


@_finalize
@dataclass(frozen=True, slots=True)
class ProductsImagesReadyBatch(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.products.ProductsImagesReadyBatch"
    job_id: str
    event_id: str
    total_images: int


@_finalize
@dataclass(frozen=True, slots=True)
class ImageEmbeddingResult(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.vision.ImageEmbeddingResult"
    event_id: str
    job_id: str
    image_id: str
    product_id: str
    status: ResultStatus
    error: Optional[str]
    model: str
    embedding: list[float]
    created_at: datetime


@_finalize
@dataclass(frozen=True, slots=True)
class Keypoint(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.vision.Keypoint"
    x: float
    y: float
    size: float
    angle: float
    response: float


@_finalize
@dataclass(frozen=True, slots=True)
class ImageKeypointsResult(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.vision.ImageKeypointsResult"
    event_id: str
    job_id: str
    image_id: str
    product_id: str
    status: ResultStatus
    error: Optional[str]
    detector: str
    keypoints: list[Keypoint]
    descriptors: bytes
    descriptor_size: int
    created_at: datetime

    def to_avro(self) -> dict[str, Any]:
        data = AvroRecord.to_avro(self)
        data["keypoints"] = [kp.to_avro() for kp in self.keypoints]
        return data

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> "ImageKeypointsResult":
        data = dict(data)
        data["keypoints"] = [Keypoint(**kp) for kp in data["keypoints"]]
        return cls(**data)


@_finalize
@dataclass(frozen=True, slots=True)
class JobPhaseCompleted(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.jobs.JobPhaseCompleted"
    event_id: str
    job_id: str
    phase: JobPhase
    status: CompletionStatus
    total: Optional[int]
    done: int
    succeeded: int
    failed: int
    first_seen_at: datetime
    completed_at: datetime


@_finalize
@dataclass(frozen=True, slots=True)
class DeadLetter(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.ops.DeadLetter"
    source_topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: bytes
    error: str
    failed_at: datetime


@_finalize
@dataclass(frozen=True, slots=True)
class CoordinatorTick(AvroRecord):
    AVRO_NAME: ClassVar[str] = "visionjobs.jobs.CoordinatorTick"
    job_id: str
    issued_at: datetime


#: Every top-level record of the contract, by Avro full name.
RECORDS: dict[str, type[AvroRecord]] = {
    cls.AVRO_NAME: cls
    for cls in (
        ProductImageReady,
        ProductsCollectionsCompleted,
        ProductsImagesReadyBatch,
        ImageEmbeddingResult,
        ImageKeypointsResult,
        JobPhaseCompleted,
        DeadLetter,
        CoordinatorTick,
    )
}
