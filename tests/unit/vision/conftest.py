"""Shared fixtures of the vision unit tests: the real shipped model and the real sample images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from visionjobs.settings import PACKAGE_DIR, REPO_DIR
from visionjobs.vision.embedder import Embedder
from visionjobs.vision.keypoints import KeypointExtractor
from visionjobs.vision.loader import decode_image
from visionjobs.vision.session import SessionInfo, create_session

IMAGES_DIR = REPO_DIR / "images"
MODEL_PATH = PACKAGE_DIR / "models" / "efficientnet_lite0_embed.onnx"
ORIGINALS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "retina", "rocket")


@pytest.fixture(autouse=True)
def _default_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that build ``Settings()`` check the defaults: no VISIONJOBS_* variable may leak in."""
    for name in list(os.environ):
        if name.startswith("VISIONJOBS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return IMAGES_DIR


@pytest.fixture(scope="session")
def sample_images() -> dict[str, np.ndarray]:
    """Every sample image, decoded, by file stem (``chelsea``, ``chelsea__crop``, ...)."""
    images = {p.stem: decode_image(p.read_bytes()) for p in sorted(IMAGES_DIR.glob("*.jpg"))}
    assert set(ORIGINALS) <= set(images), "run images/make_samples.py"
    return images


@pytest.fixture(scope="session")
def session_info() -> SessionInfo:
    return create_session(MODEL_PATH)


@pytest.fixture(scope="session")
def embedder(session_info: SessionInfo) -> Embedder:
    return Embedder(session_info)


@pytest.fixture()
def orb() -> KeypointExtractor:
    return KeypointExtractor("orb", 500)
