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

from .. import eos

from ..settings import Settings

PHASES = ("EMBEDDINGS", "KEYPOINTS")


def table_name(phase: str) -> str:
    return phase.lower()


class PhaseStateTable(faust.Table):
    """A table of PhaseState values: raw UTF-8 job_id keys, compact binary values, written behind.

    Faust derives a table's changelog serializers from key_type/value_type and falls back to JSON;
    they must be right before the changelog topic is first built (recovery decodes with it).

    **Write-behind changelog** (what Kafka Streams calls the record cache): ``table[key] = value``
    would publish one changelog message per write, i.e. one per result, each carrying the job's
    whole state. :meth:`put` changes the in-memory value at once (reads see it) and marks the key
    dirty; :meth:`flush_changelog` publishes the latest value of each dirty key once. The exactly-once
    commit calls it at the instant it splits the producer buffer (``eos.CommitGate``), so a
    transaction holds the state of every event processed before that instant together with those
    events' completions, and nothing of the events after it. A crash loses only state whose input
    offsets were not committed either: the events are read again and rebuild it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_serializer = "raw"
        self.value_serializer = "phase-state"
        self._dirty: dict[Any, int] = {}  # key -> changelog partition, in write order

    def put(self, partition: int, key: Any, value: Any) -> None:
        """Set (``None``: delete) the value of ``key`` now; its changelog record goes at the next flush."""
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        self._dirty[key] = partition

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    def flush_changelog(self) -> int:
        """Publish (buffered, ``send_soon``) the latest value of every key written since the last
        flush, a tombstone for a deleted one. Synchronous. Returns how many records were staged."""
        dirty, self._dirty = self._dirty, {}
        for key, partition in dirty.items():
            value = self.data.get(key)
            if value is None:
                self.send_changelog(partition, key, None, value_serializer="raw")
            else:
                self.send_changelog(partition, key, value)
        return len(dirty)


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
    app.tables.add(table)
    eos.before_commit(app, table.flush_changelog)
    return table
