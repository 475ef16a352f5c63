"""Fixtures of the vision agents' unit tests: an app that never connects, fake events, the real
sample images, and a recorder in place of the Kafka outputs."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from visionjobs.codec import get_codec
from visionjobs.records import ProductImageReady, utcnow
from visionjobs.settings import REPO_DIR, Settings

IMAGES_DIR = REPO_DIR / "images"


@pytest.fixture(autouse=True)
def _no_visionjobs_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VISIONJOBS_"):
            monkeypatch.delenv(name)


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    timestamp: Optional[float] = None


@dataclass
class FakeEvent:
    message: FakeMessage


class Recorder:
    """Stands in for ``CoPartitionedOutput.stage``: remembers (output, partition, key, record)."""

    def __init__(self) -> None:
        self.staged: list[tuple[str, int, Optional[bytes], Any]] = []

    def hook(self, name: str, output: Any) -> None:
        def stage(event: Any, key: Optional[bytes], value: bytes) -> None:
            self.staged.append((name, event.message.partition, key, get_codec().decode(value)))

        output.stage = stage

    def of(self, name: str) -> list[tuple[int, Optional[bytes], Any]]:
        return [(p, k, r) for n, p, k, r in self.staged if n == name]


@pytest.fixture
def images_dir() -> Path:
    return IMAGES_DIR


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    extra = tmp_path / "root"
    extra.mkdir()
    return Settings(bootstrap_servers="127.0.0.1:1", web_enabled=False, data_dir=tmp_path / "data",
                    image_roots=(IMAGES_DIR, extra), app_id_prefix=f"unit{uuid.uuid4().hex[:6]}",
                    topic_prefix="unit.", batch_size=4, batch_wait_s=0.01, keypoints_concurrency=2,
                    max_keypoints=100)


@pytest.fixture
def app(settings: Settings) -> Any:
    from visionjobs.app import create_app

    return create_app("unit", settings)


@pytest.fixture
def make_event(settings: Settings):
    """``make_event(job_id, image_id, uri, partition=..., offset=...)`` or ``make_event(raw=b"...")``."""
    from visionjobs.topics import IMAGES_READY, topic_name

    counter = {"offset": 0}

    def make(job_id: str = "job-1", image_id: str = "img", uri: str = "chelsea.jpg", *, partition: int = 3,
             raw: Optional[bytes] = None, key: Any = "job", product_id: str = "prod") -> FakeEvent:
        value = raw if raw is not None else get_codec().encode(
            ProductImageReady(f"e-{image_id}", job_id, product_id, image_id, uri, utcnow()))
        counter["offset"] += 1
        msg_key = job_id.encode() if key == "job" else key
        return FakeEvent(FakeMessage(topic_name(settings, IMAGES_READY), partition, counter["offset"],
                                     msg_key, value))

    return make


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
