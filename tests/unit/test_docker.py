"""The Docker path: compose file with pinned Redpanda (transactions on) and the worker image."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from visionjobs.settings import REPO_DIR

COMPOSE = REPO_DIR / "docker" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_redpanda_and_console_are_pinned(compose):
    for name in ("redpanda", "console"):
        image = compose["services"][name]["image"]
        tag = image.rsplit(":", 1)[-1]
        assert tag not in ("latest", "") and tag[0] == "v", image


def test_transactions_enabled(compose):
    text = COMPOSE.read_text()
    assert "enable_transactions" in text and "enable_idempotence" in text


def test_each_role_is_its_own_service(compose):
    commands = {name: " ".join(svc.get("command", [])) if isinstance(svc.get("command"), list) else svc.get("command", "")
                for name, svc in compose["services"].items()}
    for role in ("coordinator", "embedding", "keypoints"):
        assert f"visionjobs.workers.{role}" in commands[role]


def test_ports_bound_to_loopback(compose):
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_docker_compose_config_parses():
    """``docker compose config`` needs only the client, not an engine."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed on this machine")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
