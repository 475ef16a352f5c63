from datetime import datetime, timezone

import pytest

from visionjobs.domain.validation import InvalidEvent, validate
from visionjobs.records import ImageEmbeddingResult, ProductsImagesReadyBatch

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_negative_total_is_rejected():
    with pytest.raises(InvalidEvent) as err:
        validate(ProductsImagesReadyBatch("job-1", "e", -1), key=b"job-1")
    assert err.value.reason == "negative_total"


@pytest.mark.parametrize("total", [0, 1, 10_000])
def test_non_negative_total_is_valid(total):
    assert validate(ProductsImagesReadyBatch("job-1", "e", total), key=b"job-1") is None


def test_key_must_be_the_job_id():
    with pytest.raises(InvalidEvent) as err:
        validate(ProductsImagesReadyBatch("job-1", "e", 1), key=b"job-2")
    assert err.value.reason == "key_mismatch"


@pytest.mark.parametrize("job_id, image_id, reason", [
    ("", "img", "empty_job_id"), ("   ", "img", "empty_job_id"), ("j", "", "empty_image_id"),
    ("j" * 300, "img", "long_job_id")])
def test_ids_must_be_present(job_id, image_id, reason):
    with pytest.raises(InvalidEvent) as err:
        validate(ImageEmbeddingResult("e", job_id, image_id, "p", "OK", None, "m", [], T0))
    assert err.value.reason == reason
