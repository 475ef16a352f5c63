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


def first_call_per_shape(settings, algo: str, images: list) -> dict:
    """A fresh CUDA session with ``cudnn_conv_algo_search=algo``: the time of the first run of each
    new batch size (cuDNN picks its algorithms then), of a repeat, and the steady rate at 16."""
    info = create_session(settings.model_path, cuda_options={"cudnn_conv_algo_search": algo})
    emb = Embedder.from_settings(settings, session_info=info)
    prepared = [emb.prepare(im) for im in images]
    prepared = (prepared * (64 // len(prepared) + 1))[:64]

    def ms(bs: int) -> float:
        t = time.perf_counter()
        emb.embed_prepared(prepared[:bs])
        return round(1000 * (time.perf_counter() - t), 1)

    first = {str(bs): ms(bs) for bs in (16, 1, 7, 12)}
    first["16_again"] = ms(16)
    t = time.perf_counter()
    for _ in range(20):
        emb.embed_prepared(prepared[:16])
    rate = 20 * 16 / (time.perf_counter() - t)
    return {"algo": algo, "provider": emb.provider, "first_call_ms": first,
            "steady_infer_images_per_s_16": round(rate, 1)}


def agent_throughput(images_dir: Path, n: int, batch_size: int, load_threads: int = 4,
                     algo: str = "EXHAUSTIVE") -> dict:
    """``EmbeddingAgent.handle`` over ``n`` events in batches of ``batch_size``; the staged results are
    counted instead of sent (the stage that a transaction would send)."""
    from visionjobs.agents.embedding import EmbeddingAgent
    from visionjobs.app import create_app
    from visionjobs.codec import get_codec
    from visionjobs.records import ProductImageReady, utcnow
    from visionjobs.settings import Settings

    settings = Settings(bootstrap_servers="127.0.0.1:1", web_enabled=False, data_dir=Path(tempfile.mkdtemp()),
                        image_roots=(images_dir,), app_id_prefix=f"gpu{uuid.uuid4().hex[:6]}",
                        batch_size=batch_size, load_threads=load_threads, ort_cudnn_conv_algo_search=algo)
    agent = EmbeddingAgent(create_app("gpucheck", settings), settings)
    staged = []
    agent.output.stage = lambda event, key, value: staged.append(value)
    names = sorted(p.name for p in images_dir.glob("*.jpg"))
    codec = get_codec()
    events = [Event(Message("images", 0, i, b"job", codec.encode(ProductImageReady(
        f"e{i}", "job", "p", f"img{i}", names[i % len(names)], utcnow())))) for i in range(n)]

    async def run() -> float:
        await agent.start()
        for i in range(2):  # warm-up, with the timed batches' shape (cuDNN tunes per input shape)
            await agent.handle(events[i * batch_size: (i + 1) * batch_size])
        staged.clear()
        started = time.perf_counter()
        for i in range(0, n, batch_size):
            await agent.handle(events[i: i + batch_size])
        return time.perf_counter() - started

    seconds = asyncio.run(run())
    statuses = [codec.decode(v).status for v in staged]
    agent.close()
    return {"provider": agent.embedder.provider, "batch_size": batch_size, "load_threads": load_threads,
            "algo": algo, "images": n,
            "ok": statuses.count("OK"), "images_per_s": round(n / seconds, 1), "seconds": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--batch-sizes", default="1,8,16,32,64")
    ap.add_argument("--cpu-batch-size", type=int, default=16)
    ap.add_argument("--agent", default="16x4,16x8,32x8,16x8:HEURISTIC",
                    help="agent runs: BATCHxLOAD_THREADS[:CUDNN_ALGO_SEARCH],...")
    ap.add_argument("--profile", action="store_true", help="cProfile the first agent run (top 25 by own time)")
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
    report["shapes"] = [first_call_per_shape(settings, algo, images)
                        for algo in ("EXHAUSTIVE", "HEURISTIC")]
    for row in report["shapes"]:
        print(json.dumps(row), flush=True)
    report["agent"] = []
    for i, spec in enumerate(args.agent.split(",")):
        shape, _, algo = spec.partition(":")
        batch, threads = (int(x) for x in shape.split("x"))
        profile = None
        if args.profile and i == 0:
            import cProfile
            profile = cProfile.Profile()
            profile.enable()
        row = agent_throughput(images_dir, args.n_images, batch, threads, algo or "EXHAUSTIVE")
        if profile is not None:
            import pstats
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        print(json.dumps(row), flush=True)
        report["agent"].append(row)
        if row["ok"] != args.n_images:
            failures.append(f"agent {spec}: {row['ok']} of {args.n_images} results OK")
    report["failures"] = failures
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
