#!/usr/bin/env python
"""State size: bytes per in-flight job and per seen image id, in memory and in the changelog.

    .venv/bin/python scripts/bench_state_size.py --jobs 20000 --images 50

Builds the states the coordinator keeps (through the same pure functions) and measures:
- memory: tracemalloc growth of a dict job_id -> PhaseState, as the memory store holds it;
- changelog: the encoded value (+ key) of the latest state per job (what a compacted changelog
  keeps) and the bytes written over a job's life (every result rewrites the job's state).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tracemalloc

from visionjobs.domain.completion import apply_result, apply_total, image_key
from visionjobs.tables.state_codec import HEADER_SIZE, encode_state


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--images", type=int, default=50, help="image ids seen per in-flight job")
    args = ap.parse_args()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    table = {}
    written = 0
    for j in range(args.jobs):
        job_id = f"job-{j:08d}-5f1c0e2a"
        s = apply_total(None, args.images + 1, 1).state  # in flight: one image still missing
        for i in range(args.images):
            s = apply_result(s, image_key(f"img-{i:05d}"), i % 10 != 0, 2).state
            written += len(encode_state(s)) + len(job_id)
        table[job_id] = s
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    ids = args.jobs * args.images
    latest = sum(len(encode_state(s)) + len(k) for k, s in table.items())
    out = {
        "jobs": args.jobs, "image_ids_per_job": args.images,
        "memory_bytes_per_job": round(used / args.jobs, 1),
        "memory_bytes_per_image_id": round(used / ids, 1),
        "changelog_bytes_per_job_latest": round(latest / args.jobs, 1),
        "changelog_bytes_per_image_id_latest": round(latest / ids, 2),
        "changelog_state_header_bytes": HEADER_SIZE,
        "changelog_bytes_written_per_job_lifetime": round(written / args.jobs, 1),
        "changelog_bytes_written_per_image_result": round(written / ids, 1),
        "cores": os.cpu_count(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
