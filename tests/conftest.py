"""Shared fixtures. Integration tests get a real broker, in this order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (``make test`` starts the local Kafka and sets it);
2. a Redpanda testcontainer when a Docker engine answers and ``testcontainers`` is installed;
3. the local Apache Kafka started with ``visionjobs broker up`` (and stopped again if we started it).

Every test gets its own topic prefix and app id, so tests never see each other's data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from visionjobs.settings import Settings


def _docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap():
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if _docker_engine_answers():
        try:
            from testcontainers.kafka import RedpandaContainer  # type: ignore
        except ImportError:
            RedpandaContainer = None
        if RedpandaContainer is not None:
            with RedpandaContainer("docker.redpanda.com/redpandadata/redpanda:v25.3.9") as rp:
                yield rp.get_bootstrap_server()
            return
    from visionjobs.broker import LocalKafka, ensure_broker

    bootstrap, started = ensure_broker()
    try:
        yield bootstrap
    finally:
        if started:
            LocalKafka().down()


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def vj_env(kafka_bootstrap, run_id, tmp_path) -> dict[str, str]:
    """Environment for worker processes and tools of one test: isolated topics, groups and state."""
    from visionjobs.testing.workers import isolated_env

    return isolated_env(kafka_bootstrap, f"vj{run_id}", tmp_path / "data", partitions=8)


@pytest.fixture
def vj_settings(vj_env) -> Settings:
    from visionjobs.admin import create_topics

    from visionjobs.testing.workers import settings_from_env

    settings = settings_from_env(vj_env)
    create_topics(settings)
    return settings


@pytest.fixture
def worker_logs(tmp_path) -> Path:
    return tmp_path / "logs"
