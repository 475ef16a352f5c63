"""bench_direct: the in-process throughput measurement runs and reports sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from visionjobs.settings import REPO_DIR
from visionjobs.vision.bench import bench_direct, load_image_bytes
from visionjobs.vision.keypoints import KeypointExtractor


def test_bench_direct_small_run(embedder, images_dir) -> None:
    result = bench_direct(images_dir, n_images=6, batch_size=4, embedder=embedder,
                          extractor=KeypointExtractor("orb", 100), warmup=False)
    assert result["n_images"] == 6 and result["batch_size"] == 4
    assert result["embed_images_per_s"] > 0 and result["keypoints_images_per_s"] > 0
    assert result["provider"] == embedder.provider and result["detector"] == "orb"
    assert 0 < result["keypoints_mean_count"] <= 100
    json.dumps(result)


def test_load_image_bytes_cycles(images_dir, tmp_path) -> None:
    blobs = load_image_bytes(images_dir, 40)
    assert len(blobs) == 40 and blobs[0] == blobs[15]  # 15 sample images, repeated
    with pytest.raises(FileNotFoundError):
        load_image_bytes(tmp_path, 3)
    with pytest.raises(ValueError):
        load_image_bytes(images_dir, 0)


def test_cli_prints_json() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO_DIR / "scripts" / "bench_vision_direct.py"), "--n-images", "4",
         "--batch-size", "2", "--threads", "1", "--max-keypoints", "50"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0]["batch_size"] == 2 and lines[0]["n_images"] == 4
