"""The phase table's write-behind changelog: values change in memory at once, the changelog gets the
latest value per key (or a tombstone) once per flush, on the partition of the write."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from visionjobs.domain.completion import PhaseState, apply_result, apply_total, image_key
from visionjobs.eos import run_before_commit
from visionjobs.settings import Settings
from visionjobs.tables.jobs import PhaseStateTable, phase_table


@pytest.fixture
def app(tmp_path):
    from visionjobs.app import create_app

    settings = Settings(bootstrap_servers="127.0.0.1:1", web_enabled=False, data_dir=tmp_path / "data",
                        app_id_prefix=f"unit{uuid.uuid4().hex[:6]}", topic_prefix="unit.")
    return create_app("unit", settings)


@pytest.fixture
def table(app) -> PhaseStateTable:
    table = phase_table(app, app.visionjobs_settings, "EMBEDDINGS")
    table.sent = []  # type: ignore[attr-defined]

    def send_changelog(partition: int, key: Any, value: Any, key_serializer=None, value_serializer=None):
        table.sent.append((partition, key, value, value_serializer))  # type: ignore[attr-defined]

    table.send_changelog = send_changelog  # instead of Kafka
    return table


def results(state: PhaseState | None, n: int, ts: int = 1_000) -> list[PhaseState]:
    out = []
    for i in range(n):
        state = apply_result(state, image_key(f"img-{i}"), True, ts + i).state
        out.append(state)
    return out


def test_put_is_visible_at_once_and_the_changelog_waits_for_the_flush(table):
    states = results(None, 20)
    for s in states:
        table.put(3, "job-1", s)
    assert table.get("job-1") is states[-1] and table.get("job-1").done == 20
    assert table.sent == [] and table.dirty == 1
    assert table.flush_changelog() == 1
    assert table.sent == [(3, "job-1", states[-1], None)]  # one record: the latest value
    assert table.flush_changelog() == 0 and len(table.sent) == 1  # nothing new, nothing sent


def test_flush_keeps_each_keys_partition_and_tombstones_deleted_keys(table):
    a, b = results(None, 1)[0], apply_total(None, 0, 5).state
    table.put(1, "job-a", a)
    table.put(6, "job-b", b)
    table.flush_changelog()
    table.put(6, "job-b", None)  # retention over: delete
    assert "job-b" not in table.data and table.get("job-b") is None
    table.flush_changelog()
    assert table.sent == [(1, "job-a", a, None), (6, "job-b", b, None), (6, "job-b", None, "raw")]


def test_the_commit_hook_flushes_every_phase_table(app):
    tables = [phase_table(app, app.visionjobs_settings, p) for p in ("EMBEDDINGS", "KEYPOINTS")]
    sent: list[tuple[str, str]] = []
    for t in tables:
        t.send_changelog = lambda p, k, v, ks=None, vs=None, name=t.name: sent.append((name, k))
        t.put(0, "job-1", results(None, 1)[0])
    run_before_commit(app)
    assert sorted(sent) == [("embeddings", "job-1"), ("keypoints", "job-1")]
    assert all(t.dirty == 0 for t in tables)
