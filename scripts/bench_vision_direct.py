#!/usr/bin/env python3
"""Throughput of the vision library called directly (no Faust, no Kafka), printed as JSON.

    .venv/bin/python scripts/bench_vision_direct.py --n-images 64 --batch-size 1 --batch-size 16

Each ``--batch-size`` gives one JSON object (one line). The timing itself lives in
:mod:`visionjobs.vision.bench` so that the Kafka benchmark can reuse it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from visionjobs.settings import REPO_DIR, get_settings
from visionjobs.vision.bench import bench_direct
from visionjobs.vision.embedder import Embedder
from visionjobs.vision.keypoints import KeypointExtractor
from visionjobs.vision.session import create_session

__all__ = ["bench_direct", "main"]


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-dir", type=Path, default=REPO_DIR / "images")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, action="append",
                        help=f"micro-batch size, repeatable (default {settings.batch_size})")
    parser.add_argument("--threads", type=int, default=settings.ort_intra_op_threads,
                        help="onnxruntime intra-op threads (0: one per core)")
    parser.add_argument("--detector", choices=("orb", "sift"), default=settings.detector)
    parser.add_argument("--max-keypoints", type=int, default=settings.max_keypoints)
    args = parser.parse_args(argv)

    info = create_session(settings.model_path, providers=settings.ort_providers, intra_op_threads=args.threads)
    embedder = Embedder.from_settings(settings, session_info=info)
    extractor = KeypointExtractor(args.detector, args.max_keypoints)
    for batch_size in args.batch_size or [settings.batch_size]:
        result = bench_direct(args.images_dir, args.n_images, batch_size, embedder=embedder, extractor=extractor)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
