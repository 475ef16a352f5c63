"""Direct (in-process, no Kafka) throughput of the vision library.

:func:`bench_direct` times what a worker does per image - decode, preprocess, infer for the
embedder in micro-batches; decode, detect and describe for the keypoint extractor - on the sample
images, so that the throughput through Kafka can be compared with the library's own ceiling.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionjobs.vision.embedder import Embedder
from visionjobs.vision.keypoints import KeypointExtractor
from visionjobs.vision.loader import decode_image

__all__ = ["bench_direct", "load_image_bytes", "time_embedder", "time_keypoints"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load_image_bytes(images_dir: str | os.PathLike[str], n_images: int) -> list[bytes]:
    """``n_images`` encoded images from ``images_dir`` (sorted by name, repeated cyclically)."""
    if n_images < 1:
        raise ValueError("n_images must be >= 1")
    paths = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no images in {images_dir}")
    blobs = [p.read_bytes() for p in paths]
    return [blobs[i % len(blobs)] for i in range(n_images)]


def time_embedder(
    embedder: Embedder, blobs: Sequence[bytes], batch_size: int, max_pixels: int = 40_000_000
) -> dict[str, float]:
    """Decode + preprocess + infer ``blobs`` in micro-batches of ``batch_size``; seconds per stage."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    decode_s = preprocess_s = infer_s = 0.0
    start = time.perf_counter()
    for i in range(0, len(blobs), batch_size):
        t0 = time.perf_counter()
        images = [decode_image(b, max_pixels) for b in blobs[i : i + batch_size]]
        t1 = time.perf_counter()
        batch = embedder.preprocess(images)
        t2 = time.perf_counter()
        emb = embedder.embed_preprocessed(batch)
        t3 = time.perf_counter()
        if emb.shape != (len(images), embedder.dim):  # pragma: no cover - a broken model
            raise RuntimeError(f"unexpected embedding shape {emb.shape}")
        decode_s += t1 - t0
        preprocess_s += t2 - t1
        infer_s += t3 - t2
    total = time.perf_counter() - start
    return {"seconds": total, "decode_s": decode_s, "preprocess_s": preprocess_s, "infer_s": infer_s}


def time_keypoints(
    extractor: KeypointExtractor, blobs: Sequence[bytes], max_pixels: int = 40_000_000
) -> dict[str, float]:
    """Decode + extract keypoints for each blob; seconds per stage and the mean keypoint count."""
    decode_s = extract_s = 0.0
    counts = 0
    start = time.perf_counter()
    for blob in blobs:
        t0 = time.perf_counter()
        img = decode_image(blob, max_pixels)
        t1 = time.perf_counter()
        counts += len(extractor.extract(img))
        decode_s += t1 - t0
        extract_s += time.perf_counter() - t1
    total = time.perf_counter() - start
    mean = counts / max(1, len(blobs))
    return {"seconds": total, "decode_s": decode_s, "extract_s": extract_s, "mean_keypoints": mean}


def bench_direct(
    images_dir: str | os.PathLike[str],
    n_images: int = 64,
    batch_size: int = 16,
    *,
    embedder: Embedder | None = None,
    extractor: KeypointExtractor | None = None,
    warmup: bool = True,
    max_pixels: int = 40_000_000,
) -> dict:
    """Images per second of the embedder (in micro-batches of ``batch_size``) and the keypoint extractor.

    ``embedder`` / ``extractor`` default to the ones the settings describe. With ``warmup`` one
    untimed micro-batch runs first (session and allocator warm-up). Returns a JSON-ready dict.
    """
    if embedder is None:
        embedder = Embedder.from_settings()
    if extractor is None:
        extractor = KeypointExtractor.from_settings()
    blobs = load_image_bytes(images_dir, n_images)
    if warmup:
        time_embedder(embedder, blobs[:batch_size], batch_size, max_pixels)
        time_keypoints(extractor, blobs[:2], max_pixels)
    emb = time_embedder(embedder, blobs, batch_size, max_pixels)
    kps = time_keypoints(extractor, blobs, max_pixels)
    n = len(blobs)
    return {
        "n_images": n,
        "batch_size": batch_size,
        "provider": embedder.provider,
        "model": embedder.session_info.model_path.name,
        "embed_images_per_s": round(n / emb["seconds"], 2),
        "embed_seconds": round(emb["seconds"], 4),
        "embed_decode_s": round(emb["decode_s"], 4),
        "embed_preprocess_s": round(emb["preprocess_s"], 4),
        "embed_infer_s": round(emb["infer_s"], 4),
        "detector": extractor.detector,
        "max_keypoints": extractor.max_keypoints,
        "keypoints_images_per_s": round(n / kps["seconds"], 2),
        "keypoints_seconds": round(kps["seconds"], 4),
        "keypoints_decode_s": round(kps["decode_s"], 4),
        "keypoints_extract_s": round(kps["extract_s"], 4),
        "keypoints_mean_count": round(kps["mean_keypoints"], 1),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
