"""The coordinator's tables: one changelog-backed table per phase, keyed by job_id.

Why one table per phase rather than one value holding both phases: a result rewrites only its own
phase's state (half the changelog bytes of a combined value), and each phase's state stays small.
One agent feeds both tables, so the batch event (which concerns both phases) is consumed, decoded
and dead-lettered once, by one stream: with two agents sharing the batch topic we once saw a batch
event skipped under kill -9 (Faust fans a message out to several agents with a reference count),
and one consumer per event is the simpler guarantee.
Both tables are co-partitioned with the batch and result topics (same partition count, keyed by
job_id), so a job's batch event, its results and its state live on one worker.
"""

from __future__ import annotations

from typing import Any

import faust

from ..settings import Settings

PHASES = ("EMBEDDINGS", "KEYPOINTS")


def table_name(phase: str) -> str:
    return phase.lower()


class PhaseStateTable(faust.Table):
    """A table of PhaseState values: raw UTF-8 job_id keys, compact binary values.

    Faust derives a table's changelog serializers from key_type/value_type and falls back to JSON;
    they must be right before the changelog topic is first built (recovery decodes with it).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_serializer = "raw"
        self.value_serializer = "phase-state"


def phase_table(app: Any, settings: Settings, phase: str) -> Any:
    table = PhaseStateTable(
        app,
        name=table_name(phase),
        default=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="phase-state"),
        help=f"PhaseState of the {phase} phase, by job_id",
    )
    return app.tables.add(table)
