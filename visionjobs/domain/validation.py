"""Validation of input events beyond what the Avro schema can say. Pure; no Faust."""

from __future__ import annotations

from typing import Optional

from ..records import (AvroRecord, ImageEmbeddingResult, ImageKeypointsResult, ProductImageReady,
                       ProductsImagesReadyBatch)

MAX_ID_LEN = 256


class InvalidEvent(ValueError):
    """An event that decodes but cannot be processed. ``reason`` is a short code for metrics/DLQ."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


def _check_id(name: str, value: str) -> None:
    if not value or not value.strip():
        raise InvalidEvent(f"empty_{name}", f"{name} is empty")
    if len(value) > MAX_ID_LEN:
        raise InvalidEvent(f"long_{name}", f"{name} is longer than {MAX_ID_LEN} characters")


def validate(record: AvroRecord, key: Optional[bytes] = None) -> None:
    """Raise :class:`InvalidEvent` if the record cannot be processed; return None when valid.

    ``key`` is the Kafka message key: every topic of the contract is keyed by job_id, and a message
    whose key differs would sit on another partition than the rest of its job (a broken join).
    """
    job_id = getattr(record, "job_id", None)
    if job_id is not None:
        _check_id("job_id", job_id)
        if key is not None and key != job_id.encode("utf-8"):
            raise InvalidEvent("key_mismatch", f"message key {key[:64]!r} is not the job_id {job_id!r}")
    if isinstance(record, ProductsImagesReadyBatch):
        if record.total_images < 0:
            raise InvalidEvent("negative_total", f"total_images={record.total_images} for job {record.job_id}")
    elif isinstance(record, (ImageEmbeddingResult, ImageKeypointsResult, ProductImageReady)):
        _check_id("image_id", record.image_id)
