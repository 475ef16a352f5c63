#!/usr/bin/env python3
"""The embedding model on onnxruntime's CUDA provider vs its CPU provider, on the sample images.

Run on a machine with an NVIDIA GPU and ``onnxruntime-gpu`` (``pip install -e .[gpu]``)::

    python scripts/device/cuda_check.py --n-images 512 --out cuda_check.json

Checks (exit status 1 if one fails) and prints as JSON:

* ``create_session()`` with no provider asked for picks ``CUDAExecutionProvider`` and the session runs
  on it (onnxruntime drops a provider silently when its libraries do not load);
* the embeddings of every sample image on CUDA agree with the CPU ones (cosine similarity);
* throughput of decode + preprocess + infer (:func:`visionjobs.vision.bench.time_embedder`) on CUDA for
  several micro-batch sizes, and on the CPU provider for comparison;
* throughput of the embedding agent's own batch path (``EmbeddingAgent.handle``: decode the event,
  load the file from an image root, embed on the worker's session, encode and stage the result) in
  this process, without Kafka (no broker on such a machine), at the worker's batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort

from visionjobs.settings import REPO_DIR, get_settings
from visionjobs.vision.bench import load_image_bytes, time_embedder
from visionjobs.vision.embedder import Embedder
from visionjobs.vision.loader import decode_image
from visionjobs.vision.session import CPU, CUDA, create_session


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: bytes


@dataclass
class Event:
    message: Message


def agent_throughput(images_dir: Path, n: int, batch_size: int) -> dict:
    """``EmbeddingAgent.handle`` over ``n`` events in batches of ``batch_size``; the staged results are
    counted instead of sent (the stage that a transaction would send)."""
    from visionjobs.agents.embedding import EmbeddingAgent
    from visionjobs.app import create_app
    from visionjobs.codec import get_codec
    from visionjobs.records import ProductImageReady, utcnow
    from visionjobs.settings import Settings

    settings = Settings(bootstrap_servers="127.0.0.1:1", web_enabled=False, data_dir=Path(tempfile.mkdtemp()),
                        image_roots=(images_dir,), app_id_prefix=f"gpu{uuid.uuid4().hex[:6]}",
                        batch_size=batch_size)
    agent = EmbeddingAgent(create_app("gpucheck", settings), settings)
    staged = []
    agent.output.stage = lambda event, key, value: staged.append(value)
    names = sorted(p.name for p in images_dir.glob("*.jpg"))
    codec = get_codec()
    events = [Event(Message("images", 0, i, b"job", codec.encode(ProductImageReady(
        f"e{i}", "job", "p", f"img{i}", names[i % len(names)], utcnow())))) for i in range(n)]

    async def run() -> float:
        await agent.start()
        await agent.handle(events[: 2 * batch_size])  # warm-up
        staged.clear()
        started = time.perf_counter()
        for i in range(0, n, batch_size):
            await agent.handle(events[i: i + batch_size])
        return time.perf_counter() - started

    seconds = asyncio.run(run())
    statuses = [codec.decode(v).status for v in staged]
    agent.close()
    return {"provider": agent.embedder.provider, "batch_size": batch_size, "images": n,
            "ok": statuses.count("OK"), "images_per_s": round(n / seconds, 1), "seconds": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--batch-sizes", default="1,8,16,32,64")
    ap.add_argument("--cpu-batch-size", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    settings = get_settings()
    report: dict = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(),
                    "python": platform.python_version(), "cpus": os.cpu_count()}
    failures = []

    cuda_info = create_session(settings.model_path)  # nothing asked for: the best available
    report["default_provider"] = cuda_info.provider
    report["session_providers"] = list(cuda_info.providers)
    if cuda_info.provider != CUDA:
        failures.append(f"default provider is {cuda_info.provider}, not {CUDA}")
    cpu_info = create_session(settings.model_path, providers=(CPU,))
    gpu = Embedder.from_settings(settings, session_info=cuda_info)
    cpu = Embedder.from_settings(settings, session_info=cpu_info)

    images_dir = REPO_DIR / "images"
    paths = sorted(images_dir.glob("*.jpg"))
    images = [decode_image(p.read_bytes()) for p in paths]
    a, b = gpu.embed(images), cpu.embed(images)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    report["agreement"] = {"images": len(images), "min_cosine": float(cos.min()),
                           "max_abs_diff": float(np.abs(a - b).max())}
    if cos.min() < 0.999:
        failures.append(f"CUDA and CPU embeddings differ: min cosine {cos.min():.5f}")
    # nearest neighbour of each crop is its original, on both providers
    names = [p.stem for p in paths]
    for emb, label in ((a, "default"), (b, "cpu")):
        sims = emb @ emb.T
        np.fill_diagonal(sims, -1)
        nearest = [names[int(row.argmax())].split("__")[0] for row in sims]
        wrong = [n for n, near in zip(names, nearest) if "__" in n and near != n.split("__")[0]]
        report[f"{label}_crops_nearest_not_original"] = wrong

    blobs = load_image_bytes(images_dir, args.n_images)
    rows = []
    for emb, sizes in ((gpu, [int(x) for x in args.batch_sizes.split(",")]), (cpu, [args.cpu_batch_size])):
        for bs in sizes:
            time_embedder(emb, blobs[: 2 * bs], bs)  # warm-up (CUDA kernels, cuDNN autotuning)
            t = time_embedder(emb, blobs, bs)
            rows.append({"provider": emb.provider, "batch_size": bs, "images": len(blobs),
                         "images_per_s": round(len(blobs) / t["seconds"], 1),
                         "infer_images_per_s": round(len(blobs) / t["infer_s"], 1),
                         **{k: round(v, 3) for k, v in t.items()}})
            print(json.dumps(rows[-1]), flush=True)
    report["throughput"] = rows
    report["agent"] = agent_throughput(images_dir, args.n_images, settings.batch_size)
    print(json.dumps(report["agent"]), flush=True)
    if report["agent"]["ok"] != args.n_images:
        failures.append(f"agent: {report['agent']['ok']} of {args.n_images} results OK")
    report["failures"] = failures
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
