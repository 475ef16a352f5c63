"""The coordinator's tables: one changelog-backed table per phase, keyed by job_id.

Why one table per phase rather than one keyed by (job, phase): each phase has its own result topic
and its own agent, so either phase's coordinator can run, scale and recover on its own, and a
result rewrites only its own phase's state (half the changelog bytes of a combined value).
Both tables are co-partitioned with the batch and result topics (same partition count, keyed by
job_id), so a job's batch event, its results and its state live on one worker.
"""

from __future__ import annotations

from typing import Any

import faust

from ..settings import Settings

PHASES = ("EMBEDDINGS", "KEYPOINTS")


def table_name(phase: str) -> str:
    return f"coordinator-{phase.lower()}"


def phase_table(app: Any, settings: Settings, phase: str) -> Any:
    table = app.Table(
        table_name(phase),
        default=None,
        partitions=settings.partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="phase-state"),
        help=f"PhaseState of the {phase} phase, by job_id",
    )
    # Faust derives the changelog serializers from key_type/value_type (falling back to JSON);
    # ours are a raw UTF-8 key and the compact binary state (tables/state_codec.py).
    table.key_serializer = "raw"
    table.value_serializer = "phase-state"
    return table
